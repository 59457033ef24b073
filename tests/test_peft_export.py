"""`save_peft` against PyTorch PEFT: each exported adapter, loaded by `PeftModel.from_pretrained` onto the
same base directory, computes what our adapted model computes on a padded batch."""

import json

import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file

from conftest import padded_batch
from tljax.methods import (
    Adapters,
    BitFit,
    FullFineTuning,
    LoRA,
    PartialFineTuning,
    PrefixTuning,
    PromptTuning,
    PTuning,
    adapt,
)
from tljax.methods import merge_and_unload
from tljax.methods.peft import save_peft
from tljax.models import (
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
)

BERT = dict(vocab_size=211, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
            max_position_embeddings=64, type_vocab_size=2)
LLAMA = dict(vocab_size=173, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=48, max_position_embeddings=128, rope_theta=500.0, initializer_range=0.1,
             bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
LABELS = {0: "neg", 1: "pos", 2: "mix"}
TAGS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}


@pytest.fixture
def bert_dir(tmp_path):
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(**BERT)).save_pretrained(tmp_path / "bert")
    return tmp_path / "bert"


@pytest.fixture
def llama_dir(tmp_path):
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA)).save_pretrained(tmp_path / "llama")
    return tmp_path / "llama"


def perturb(adaptation, seed: int = 0, scale: float = 0.2) -> None:
    """Adds noise to every trainable parameter (as training would), so none keeps its initial value."""
    rng = np.random.RandomState(seed)
    state = nnx.state(adaptation.model, adaptation.trainable())
    for _, variable in nnx.to_flat_state(state):
        value = variable.get_value()
        variable.set_value(value + jnp.asarray(scale * rng.randn(*value.shape), value.dtype))
    nnx.update(adaptation.model, state)


def bert_batch():
    ids, mask = padded_batch(np.random.RandomState(1), BERT["vocab_size"], [9, 4, 1])
    token_types = (np.arange(9)[None] >= 5).astype(np.int64).repeat(3, 0) * mask
    return ids, mask, token_types


def bert_classifier(bert_dir, methods):
    model = BertForSequenceClassification.from_pretrained(bert_dir, id2label=LABELS)
    adaptation = adapt(model, methods)
    perturb(adaptation)
    return adaptation


def export_and_load(adaptation, base_dir, tmp_path):
    """save_peft, then the adapter loaded by PEFT onto the PyTorch model of `base_dir`."""
    save_peft(adaptation, tmp_path / "adapter", base_model_name_or_path=str(base_dir))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    if config["task_type"] == "SEQ_CLS":
        base = transformers.AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=len(LABELS))
    elif config["task_type"] == "TOKEN_CLS":
        base = transformers.AutoModelForTokenClassification.from_pretrained(base_dir, num_labels=len(TAGS))
    else:
        base = transformers.AutoModelForCausalLM.from_pretrained(base_dir)
    return peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval(), config


forward = nnx.jit(lambda model, *args: model(*args))


def bert_outputs(adaptation, reference):
    ids, mask, token_types = bert_batch()
    ours = np.asarray(forward(adaptation.model, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(token_types)))
    with torch.no_grad():
        theirs = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                           token_type_ids=torch.tensor(token_types)).logits.numpy()
    return ours, theirs


def llama_outputs(adaptation, reference, virtual_tokens: int = 0):
    """Logits of the real tokens (PEFT's also score the P virtual tokens of a soft prompt: dropped)."""
    ids, mask = padded_batch(np.random.RandomState(1), LLAMA["vocab_size"], [9, 4, 1])
    ours = np.asarray(forward(adaptation.model, jnp.asarray(ids), jnp.asarray(mask)))
    with torch.no_grad():
        theirs = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    theirs = theirs[:, virtual_tokens:]
    if ours.ndim == 3:
        real = mask.astype(bool)
        return ours[real], theirs[real]
    return ours, theirs


@pytest.mark.parametrize("bitfit", [False, True], ids=["lora", "lora+bitfit"])
def test_lora_on_a_bert_classifier_matches_peft(bert_dir, tmp_path, bitfit):
    adaptation = bert_classifier(bert_dir, [LoRA(rank=4, alpha=8.0)] + ([BitFit()] if bitfit else []))
    reference, config = export_and_load(adaptation, bert_dir, tmp_path)
    assert config["peft_type"] == "LORA" and config["task_type"] == "SEQ_CLS"
    assert config["target_modules"] == ["query", "value"] and config["r"] == 4 and config["lora_alpha"] == 8.0
    # the pooler is part of the task head: PEFT keeps it beside the classifier
    assert config["bias"] == ("all" if bitfit else "none") and config["modules_to_save"] == ["classifier", "pooler"]
    tensors = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    pooler = tensors["base_model.model.bert.pooler.dense.weight"]
    base = transformers.BertModel.from_pretrained(bert_dir).pooler.dense.weight.detach().numpy()
    assert pooler.shape == (32, 32) and np.abs(pooler - base).max() > 0.1  # trained: the base's no longer
    assert tensors["base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight"].shape == (4, 32)
    assert tensors["base_model.model.bert.encoder.layer.0.attention.self.query.lora_B.weight"].shape == (32, 4)
    assert tensors["base_model.model.classifier.weight"].shape == (3, 32)
    assert all(t.dtype == np.float32 for t in tensors.values())
    if bitfit:
        assert "base_model.model.bert.encoder.layer.1.attention.self.value.base_layer.bias" in tensors
        assert "base_model.model.bert.encoder.layer.1.attention.self.key.bias" in tensors
        assert "base_model.model.bert.embeddings.LayerNorm.bias" in tensors
    else:
        assert not any(name.endswith("base_layer.bias") for name in tensors)
    ours, theirs = bert_outputs(adaptation, reference)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_lora_on_some_layers_names_the_full_module_paths(bert_dir, tmp_path):
    adaptation = bert_classifier(bert_dir, [LoRA(rank=2, target_pattern=r"layer/0/.*(query|output/dense)$")])
    reference, config = export_and_load(adaptation, bert_dir, tmp_path)
    assert config["target_modules"] == ["bert.encoder.layer.0.attention.output.dense",
                                        "bert.encoder.layer.0.attention.self.query",
                                        "bert.encoder.layer.0.output.dense"]
    ours, theirs = bert_outputs(adaptation, reference)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_lora_on_a_llama_language_model_matches_peft(llama_dir, tmp_path):
    adaptation = adapt(LlamaForCausalLM.from_pretrained(llama_dir),
                       [LoRA(rank=4, alpha=16.0, targets=("q_proj", "v_proj", "down_proj"))])
    perturb(adaptation)
    reference, config = export_and_load(adaptation, llama_dir, tmp_path)
    assert config["task_type"] == "CAUSAL_LM" and config["modules_to_save"] is None
    ours, theirs = llama_outputs(adaptation, reference)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_lora_with_bitfit_on_a_llama_is_refused_for_a_base_without_its_new_biases(llama_dir, tmp_path):
    # BitFit gives Llama's projections biases; PEFT would load the adapter onto llama_dir and drop them
    adaptation = adapt(LlamaForCausalLM.from_pretrained(llama_dir), [LoRA(rank=4), BitFit()])
    with pytest.raises(ValueError, match="BitFit trained biases that the base .* does not have "
                                         r"\(attention_bias, mlp_bias false there\)"):
        save_peft(adaptation, tmp_path / "adapter", str(llama_dir))
    assert not (tmp_path / "adapter").exists()


def test_lora_on_a_llama_classifier_exports_the_score_head(llama_dir, tmp_path):
    adaptation = adapt(LlamaForSequenceClassification.from_pretrained(llama_dir, id2label=LABELS), [LoRA(rank=4)])
    perturb(adaptation)
    reference, config = export_and_load(adaptation, llama_dir, tmp_path)
    assert config["modules_to_save"] == ["score"]
    tensors = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert tensors["base_model.model.score.weight"].shape == (3, 32)
    ours, theirs = llama_outputs(adaptation, reference)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_prompt_tuning_on_a_bert_classifier_matches_peft(bert_dir, tmp_path):
    adaptation = bert_classifier(bert_dir, [PromptTuning(num_virtual_tokens=5)])
    reference, config = export_and_load(adaptation, bert_dir, tmp_path)
    assert config["peft_type"] == "PROMPT_TUNING" and config["num_virtual_tokens"] == 5
    assert config["token_dim"] == 32 and config["num_layers"] == 2 and config["num_attention_heads"] == 4
    tensors = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert sorted(tensors) == ["base_model.bert.pooler.dense.bias", "base_model.bert.pooler.dense.weight",
                               "base_model.classifier.bias", "base_model.classifier.weight", "prompt_embeddings"]
    assert tensors["prompt_embeddings"].shape == (5, 32)
    ours, theirs = bert_outputs(adaptation, reference)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_prompt_tuning_on_a_llama_language_model_matches_peft(llama_dir, tmp_path):
    adaptation = adapt(LlamaForCausalLM.from_pretrained(llama_dir), [PromptTuning(num_virtual_tokens=4)])
    perturb(adaptation)
    reference, config = export_and_load(adaptation, llama_dir, tmp_path)
    assert config["task_type"] == "CAUSAL_LM"
    ours, theirs = llama_outputs(adaptation, reference, virtual_tokens=4)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_p_tuning_exports_the_encoded_virtual_tokens(bert_dir, tmp_path):
    adaptation = bert_classifier(bert_dir, [PTuning(num_virtual_tokens=3, encoder="mlp", encoder_hidden_size=16)])
    reference, config = export_and_load(adaptation, bert_dir, tmp_path)
    assert config["peft_type"] == "P_TUNING" and config["encoder_reparameterization_type"] == "MLP"
    tensors = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    prompt = adaptation.model.bert.prompt
    np.testing.assert_allclose(tensors["prompt_embeddings"], np.asarray(prompt.encode()), atol=1e-6)
    assert not np.allclose(tensors["prompt_embeddings"], np.asarray(prompt.embedding[...]))
    ours, theirs = bert_outputs(adaptation, reference)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("projection", [None, 16], ids=["table", "projected"])
def test_prefix_tuning_on_a_bert_classifier_matches_peft(bert_dir, tmp_path, projection):
    adaptation = bert_classifier(bert_dir, [PrefixTuning(num_virtual_tokens=3, projection_size=projection)])
    reference, config = export_and_load(adaptation, bert_dir, tmp_path)
    assert config["peft_type"] == "PREFIX_TUNING" and config["prefix_projection"] is False
    assert config["token_dim"] == 32 and config["num_attention_heads"] == 4
    tensors = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert tensors["prompt_embeddings"].shape == (3, 2 * 2 * 32)
    ours, theirs = bert_outputs(adaptation, reference)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_a_bert_prefix_export_warns_when_the_installed_transformers_cannot_load_it(bert_dir, tmp_path, caplog,
                                                                                  monkeypatch):
    import transformers

    adaptation = bert_classifier(bert_dir, [PrefixTuning(num_virtual_tokens=3)])
    for version, warns in (("5.23.0", False), ("5.24.0", True), ("6.0.0.dev0", True)):
        monkeypatch.setattr(transformers, "__version__", version)
        caplog.clear()
        save_peft(adaptation, tmp_path / version, base_model_name_or_path=str(bert_dir))
        assert (tmp_path / version / "adapter_model.safetensors").is_file()  # written either way
        assert ("cannot load an encoder's prefix adapter" in caplog.text) is warns, version


@pytest.mark.parametrize("projection", [None, 16], ids=["table", "projected"])
def test_prefix_tuning_on_a_llama_language_model_matches_peft(llama_dir, tmp_path, projection):
    adaptation = adapt(LlamaForCausalLM.from_pretrained(llama_dir),
                       [PrefixTuning(num_virtual_tokens=3, projection_size=projection)])
    perturb(adaptation)
    reference, config = export_and_load(adaptation, llama_dir, tmp_path)
    # grouped-query attention: the table holds the 2 key/value heads of size 8
    assert config["token_dim"] == 16 and config["num_attention_heads"] == 2 and config["num_layers"] == 2
    ours, theirs = llama_outputs(adaptation, reference)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("methods", [
    [Adapters(kind="pfeiffer")], [FullFineTuning()], [PartialFineTuning(freeze_layers=1)], [BitFit()],
    [LoRA(rank=2), PrefixTuning(num_virtual_tokens=2)],
], ids=["adapters", "full", "partial", "bitfit-alone", "lora+prefix"])
def test_methods_without_a_peft_layout_are_refused(bert_dir, tmp_path, methods):
    adaptation = adapt(BertForSequenceClassification.from_pretrained(bert_dir, id2label=LABELS), methods)
    with pytest.raises(ValueError, match="PEFT has no layout.*lora, lora \\+ bitfit, prompt, p-tuning, prefix.*"
                                         "save_pretrained"):
        save_peft(adaptation, tmp_path / "adapter", "base")
    assert not (tmp_path / "adapter").exists()


@pytest.mark.parametrize("method", [LoRA(rank=4, alpha=8.0), PromptTuning(num_virtual_tokens=3),
                                    PrefixTuning(num_virtual_tokens=3)], ids=["lora", "prompt", "prefix"])
def test_a_bert_token_classifier_exports_as_a_token_cls_adapter(bert_dir, tmp_path, method):
    """The tags of every text token equal PEFT's (its logits of a soft prompt's virtual tokens dropped)."""
    adaptation = adapt(BertForTokenClassification.from_pretrained(bert_dir, id2label=TAGS), [method])
    perturb(adaptation)
    reference, config = export_and_load(adaptation, bert_dir, tmp_path)
    assert config["task_type"] == "TOKEN_CLS" and "classifier" in config["modules_to_save"]
    ids, mask, token_types = bert_batch()
    ours = np.asarray(forward(adaptation.model, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(token_types)))
    with torch.no_grad():
        theirs = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                           token_type_ids=torch.tensor(token_types)).logits.numpy()
    virtual = config.get("num_virtual_tokens", 0) if config["peft_type"] == "PROMPT_TUNING" else 0
    real = mask.astype(bool)
    np.testing.assert_allclose(ours[real], theirs[:, virtual:][real], atol=1e-4, rtol=0)


def test_a_model_class_without_a_peft_task_type_is_refused(bert_dir, tmp_path):
    adaptation = adapt(BertForMaskedLM.from_pretrained(bert_dir), [LoRA(rank=2)])
    with pytest.raises(ValueError, match="no PEFT task type for BertForMaskedLM \\(masked-lm\\).*sequence-classification"):
        save_peft(adaptation, tmp_path / "adapter", "base")


def test_export_replaces_an_existing_adapter_whole(bert_dir, tmp_path):
    adaptation = bert_classifier(bert_dir, [LoRA(rank=2)])
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "stale.txt").write_text("old")
    save_peft(adaptation, tmp_path / "adapter", "some/base")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter_config.json",
                                                                         "adapter_model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".adapter")]  # no staging left behind
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "some/base" and config["inference_mode"] is True


def test_a_mean_pooled_classifier_loads_in_pytorch_from_its_own_directory(bert_dir, tmp_path):
    """No pooler: the classifier reads the masked mean of the last hidden states, and the saved directory names
    the PyTorch class that computes it (its own modeling file, through config.json's auto_map)."""
    model = BertForSequenceClassification.from_pretrained(bert_dir, id2label=LABELS, classifier_pooling="mean")
    assert model.bert.pooler is None
    adaptation = adapt(model, [LoRA(rank=4)])
    perturb(adaptation)
    with pytest.raises(ValueError, match="no layout for a mean-pooled classifier.*trust_remote_code"):
        save_peft(adaptation, tmp_path / "adapter", str(bert_dir))
    ids, mask, token_types = bert_batch()
    ours = np.asarray(forward(adaptation.model, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(token_types)))
    merge_and_unload(adaptation.model)
    adaptation.model.save_pretrained(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["classifier_pooling"] == "mean" and "auto_map" in config
    reference = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "model",
                                                                                trust_remote_code=True).eval()
    assert not any("pooler" in name for name, _ in reference.named_parameters())
    with torch.no_grad():
        theirs = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                           token_type_ids=torch.tensor(token_types)).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    # and tljax reads the directory back as the same mean-pooled classifier
    first = BertForSequenceClassification.from_pretrained(tmp_path / "model")
    assert first.config.classifier_pooling == "mean" and first.bert.pooler is None
    again = np.asarray(forward(first, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(token_types)))
    np.testing.assert_allclose(again, ours, atol=1e-5, rtol=0)
