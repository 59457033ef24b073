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
    with pytest.raises(CheckpointError, match="pytorch_model.bin is damaged or incomplete .the file is empty"):
        from_pretrained(tmp_path)


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(UnknownModelError) as error:
        resolve("bert-base-klingon")
    for name in ("minilm-l6", "minilm-l3", "e5-small", "e5-small-enpt", "smollm2-135m-instruct"):
        assert name in str(error.value)


def test_unknown_task_or_family_lists_the_available_ones():
    with pytest.raises(ConfigError, match="available: base, sequence-classification, token-classification, question-answering, masked-lm"):
        model_class("bert", "causal-lm")
    with pytest.raises(ConfigError, match="supported: bert, llama"):
        model_class("bart", "base")


# -- data files ---------------------------------------------------------------------------------------------------
def _load_error(path, **options) -> str:
    from tljax.data import DataError, load_source

    with pytest.raises(DataError) as error:
        load_source(path, **options)
    return str(error.value)


@pytest.mark.parametrize("name, encoding", [("latin.csv", "latin-1"), ("latin.jsonl", "latin-1"),
                                            ("excel.tsv", "utf-16")])
def test_a_data_file_that_is_not_utf8_names_the_line_and_byte_and_says_to_save_it_as_utf8(tmp_path, name, encoding):
    rows = {".csv": ["text,label", "a fine film,pos", "caf\u00e9 food,neg"],
            ".tsv": ["text\tlabel", "a fine film\tpos", "caf\u00e9 food\tneg"],
            ".jsonl": ['{"text": "a fine film", "label": "pos"}', '{"text": "caf\u00e9 food", "label": "neg"}']}
    path = tmp_path / name
    path.write_bytes("\n".join(rows[path.suffix]).encode(encoding))
    message = _load_error(path)
    assert str(path) in message and "is not UTF-8" in message and "Save As, CSV UTF-8" in message
    if encoding == "utf-16":  # the byte-order mark is the first byte UTF-8 refuses
        assert "UTF-16" in message and "line 1, column 1 (byte offset 0)" in message
    else:
        line = len(rows[path.suffix])
        offset = len("\n".join(rows[path.suffix][:-1]).encode()) + 1 + rows[path.suffix][-1].index("\u00e9")
        assert f"line {line}, column {rows[path.suffix][-1].index(chr(0xe9)) + 1} (byte offset {offset})" in message
        assert "0xe9" in message


def test_utf8_with_a_byte_order_mark_and_windows_line_ends_reads_correctly(tmp_path):
    from tljax.data import load_source

    path = tmp_path / "excel.csv"
    path.write_bytes("text,label\r\ncaf\u00e9 au lait,pos\r\n\"two\r\nlines\",neg\r\n".encode("utf-8-sig"))
    dataset = load_source(path)
    assert dataset.texts == ("caf\u00e9 au lait", "two\nlines") and dataset.label_names == ("neg", "pos")


def test_a_repeated_column_name_is_refused_with_its_positions(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label,text\nfine,pos,other\nbad,neg,other\n")
    message = _load_error(path)
    assert str(path) in message and "'text' at columns 1 and 3" in message


def test_labels_that_mix_numbers_and_words_are_refused_unless_declared(tmp_path):
    from tljax.data import load_source

    path = tmp_path / "d.csv"
    path.write_text("text,label\na,1\nb,0\nc,positive\nd,1\ne,negative\n")
    message = _load_error(path)
    assert str(path) in message and "mix numbers and words" in message
    assert "3 numbers (line 2: '1', line 3: '0', line 5: '1')" in message  # the header is line 1
    assert "2 words (line 4: 'positive', line 6: 'negative')" in message and "labels=" in message
    declared = load_source(path, labels=["0", "1", "positive", "negative"])
    assert declared.labels == (1, 0, 2, 1, 3)
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "a", "label": 1}\n\n{"text": "b", "label": "good"}\n')
    assert "1 number (line 1: '1') and 1 word (line 3: 'good')" in _load_error(jsonl)


def test_a_field_longer_than_the_csv_modules_default_limit_is_read_whole(tmp_path):
    import csv

    from tljax.data import load_source

    long = "word " * 40_000  # 200,000 characters; the csv module refuses fields over 131,072 by default
    path = tmp_path / "long.csv"
    path.write_text(f'text,label\n"{long}",pos\nshort,neg\n')
    limit = csv.field_size_limit()
    assert load_source(path).texts == (long, "short")
    assert csv.field_size_limit() == limit  # the module's global limit is left as it was


def test_a_broken_jsonl_line_or_yaml_config_line_names_the_file_and_line(tmp_path):
    from tljax.train.config import ConfigKeyError, load_config

    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"text": "a", "label": "pos"}\n{"text": "b", "label": "neg"}\n{"text": "c", label: "neg"}\n')
    assert f"{jsonl} line 3 is not valid JSON" in _load_error(jsonl)
    config = tmp_path / "run.yaml"
    config.write_text("model: minilm-l6\ndata:\n  source: [a.csv\n  max_length: 32\n")
    with pytest.raises(ConfigKeyError) as error:
        load_config(config)
    assert str(config) in str(error.value) and "line 4" in str(error.value)
    data = tmp_path / "d.yaml"  # YAML is not a data format: the error names the formats that are
    data.write_text("- {text: a, label: pos}\n")
    assert f"cannot tell the format of {data}: name it .csv, .tsv or .jsonl" in _load_error(data)


# -- splits of a classification run -------------------------------------------------------------------------------
def _prepare_error(tiny_model, *overrides) -> str:
    from tljax.data import DataError
    from tljax.train.config import load_config
    from tljax.train.run import prepare

    with pytest.raises(DataError) as error:
        prepare(load_config(None, [f"model={tiny_model}", "data.max_length=32", *overrides]))
    return str(error.value)


def test_a_training_split_with_one_class_is_refused(tmp_path, tiny_model):
    from tljax.data import load_source, split_dataset

    one_class = tmp_path / "one.csv"
    one_class.write_text("text,label\n" + "".join(f"film {i},pos\n" for i in range(20)))
    message = _prepare_error(tiny_model, f"data.source={one_class}")
    assert str(one_class) in message and "every example has the label 'pos'" in message
    assert "add examples of the other class" in message

    # one 'neg' among 30 'pos': with the first seed whose split holds it out of train
    rare = tmp_path / "rare.csv"
    rare.write_text("text,label\nbad film,neg\n" + "".join(f"film {i},pos\n" for i in range(30)))
    dataset = load_source(rare)
    seed = next(s for s in range(100) if not split_dataset(dataset, seed=s)["train"].class_counts()["neg"])
    message = _prepare_error(tiny_model, f"data.source={rare}", f"training.seed={seed}")
    assert "the training split holds only the class 'pos'" in message and "the data also has 1 of 'neg'" in message
    assert "split differently" in message and "training.seed" in message

    good = write_reviews_file(tmp_path)
    message = _prepare_error(tiny_model, f"data.source={good}",
                             f"tasks=[{{name: sentiment, source: {good}}}, {{name: topic, source: {one_class}}}]")
    assert f"task topic ({one_class})" in message and "every example has the label 'pos'" in message


def write_reviews_file(tmp_path):
    from conftest import write_reviews

    path = write_reviews(tmp_path / "reviews.csv", n=40)
    path.write_text(path.read_text().replace("review,sentiment", "text,label", 1))
    return path


# -- predicting ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("texts, said", [([""], "the text is empty"), (["fine", "  ", "\t"], "texts 2, 3 of 3 are")])
def test_predict_refuses_empty_texts_in_one_line(tmp_path, capsys, texts, said):
    from tljax.predict import main

    assert main([str(tmp_path), *texts]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {said}") and err.count("\n") == 1


# -- a damaged export ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_export_run(tmp_path_factory, tiny_model):
    """A finished two-step LoRA run of the tiny BERT, exported with trainable.safetensors, model/ and adapter/."""
    from conftest import shared_run, write_reviews

    data = write_reviews(tmp_path_factory.mktemp("export-data") / "reviews.csv", n=40)
    return shared_run(tmp_path_factory, "tiny-lora-export", {
        "model": str(tiny_model),
        "data": {"source": str(data), "text_column": "review", "label_column": "sentiment", "max_length": 32},
        "method": {"name": "lora", "rank": 4, "targets": ["query", "value"]},
        "training": {"learning_rate": 1e-2, "max_steps": 2, "per_device_train_batch_size": 8, "eval_steps": 2,
                     "early_stopping_patience": None}})


@pytest.fixture
def export_copy(tiny_export_run, tmp_path):
    """A copy of the tiny run (its export and config) to damage."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_export_run / "export", run / "export")
    shutil.copy(tiny_export_run / "config.yaml", run / "config.yaml")
    return run


def _cut_short(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _alter_header(path):
    raw = bytearray(path.read_bytes())
    raw[8:16] = b"#" * 8  # the JSON header starts after its 8-byte length
    path.write_bytes(bytes(raw))


DAMAGE = {
    "trainable cut short": ("trainable.safetensors", _cut_short, "is damaged or incomplete"),
    "trainable header altered": ("trainable.safetensors", _alter_header, "is damaged or incomplete (invalid JSON"),
    "trainable missing": ("trainable.safetensors", lambda p: p.unlink(), "is missing"),
    "run.json empty": ("run.json", lambda p: p.write_text(""), "is damaged: it is empty"),
    "run.json not JSON": ("run.json", lambda p: p.write_text("{model: tiny"), "is damaged: it is not valid JSON"),
    "run.json missing": ("", lambda p: (p / "run.json").unlink(), "is incomplete: its run.json is missing"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_predict_reports_a_damaged_export_in_one_line(export_copy, capsys, case):
    from tljax.predict import main

    name, damage, said = DAMAGE[case]
    damage(export_copy / "export" / name)
    assert main([str(export_copy), "a fine film"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {export_copy / 'export' / name}".rstrip("/")) and err.count("\n") == 1
    assert said in err and "copy the export again" in err and f"--config {export_copy / 'config.yaml'}" in err


@pytest.mark.parametrize("damage", [_cut_short, _alter_header])
def test_a_damaged_exported_model_or_adapter_is_reported(export_copy, tiny_model, capsys, caplog, damage):
    from tljax.models import CheckpointError
    from tljax.predict import main
    from tljax.train.config import load_config
    from tljax.train.run import prepare

    model = export_copy / "export" / "model" / "model.safetensors"
    damage(model)
    with pytest.raises(CheckpointError) as error:  # fine-tuning from the export's model
        prepare(load_config(None, [f"model={model.parent}", f"data.source={write_reviews_file(export_copy)}"]))
    assert f"{model} is damaged or incomplete" in str(error.value) and "copy" in str(error.value)

    damage(export_copy / "export" / "adapter" / "adapter_model.safetensors")
    assert main([str(export_copy), "a fine film"]) == 0  # predicting reads neither: it works, and warns
    assert capsys.readouterr().out.endswith("\ta fine film\n")
    warned = caplog.text
    assert "model.safetensors is damaged" in warned and "adapter_model.safetensors is damaged" in warned
