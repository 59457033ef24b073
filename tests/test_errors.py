"""Bad input gets one clear error that names every problem and what would be right."""

import json

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from tljax.models import (
    BertForSequenceClassification,
    BertModel,
    CheckpointError,
    ConfigError,
    LlamaForCausalLM,
    from_pretrained,
    model_class,
)
from tljax.zoo import UnknownModelError, resolve

TINY_BERT = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=20)


@pytest.fixture
def bert_dir(tmp_path):
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(**TINY_BERT)).save_pretrained(tmp_path)
    return tmp_path


def test_every_missing_unexpected_or_misshaped_tensor_is_reported_at_once(bert_dir):
    tensors = load_file(bert_dir / "model.safetensors")
    del tensors["encoder.layer.0.attention.self.key.weight"]
    del tensors["embeddings.LayerNorm.bias"]
    tensors["encoder.layer.1.output.dense.weight"] = np.zeros((16, 7), np.float32)
    tensors["encoder.layer.9.extra.weight"] = np.zeros((3,), np.float32)
    save_file(tensors, bert_dir / "model.safetensors")
    with pytest.raises(CheckpointError) as error:
        BertModel.from_pretrained(bert_dir)
    message = str(error.value)
    assert "4 problems" in message
    assert "missing: encoder.layer.0.attention.self.key.weight (16, 16)" in message
    assert "missing: embeddings.LayerNorm.bias" in message
    assert "wrong shape: encoder.layer.1.output.dense.weight is (16, 7) in the checkpoint, the model needs (16, 20)" \
        in message
    assert "unexpected: encoder.layer.9.extra.weight" in message


def test_a_head_of_the_wrong_size_is_refused(tmp_path):
    torch.manual_seed(0)
    config = transformers.BertConfig(**TINY_BERT, num_labels=2)
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="wrong shape: classifier.weight is \\(2, 16\\)"):
        BertForSequenceClassification.from_pretrained(tmp_path, id2label={0: "a", 1: "b", 2: "c"})


def test_unsupported_config_attributes_are_refused(bert_dir):
    config = json.loads((bert_dir / "config.json").read_text())
    config |= {"position_embedding_type": "relative_key", "my_new_trick": 3}
    (bert_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError) as error:
        BertModel.from_pretrained(bert_dir)
    assert "position_embedding_type='relative_key' is not supported (supported: 'absolute')" in str(error.value)
    assert "my_new_trick=3 is not an attribute tljax implements" in str(error.value)


def test_rope_scaling_is_refused(tmp_path):
    config = transformers.LlamaConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=20)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["rope_parameters"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="rope_parameters"):
        LlamaForCausalLM.from_pretrained(tmp_path)


def test_a_path_that_does_not_exist_says_so(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        from_pretrained(tmp_path / "nowhere")
    with pytest.raises(UnknownModelError, match="model directory ./no/such/dir does not exist"):
        resolve("./no/such/dir")


def test_a_directory_without_weights_or_config(tmp_path):
    with pytest.raises(CheckpointError, match="has no config.json"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", **TINY_BERT}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match="PyTorch .bin checkpoints are not read"):
        from_pretrained(tmp_path)


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(UnknownModelError) as error:
        resolve("bert-base-klingon")
    for name in ("minilm-l6", "minilm-l3", "e5-small", "e5-small-enpt", "smollm2-135m-instruct"):
        assert name in str(error.value)


def test_unknown_task_or_family_lists_the_available_ones():
    with pytest.raises(ConfigError, match="available: base, sequence-classification, masked-lm"):
        model_class("bert", "causal-lm")
    with pytest.raises(ConfigError, match="supported: bert, llama"):
        model_class("t5", "base")
