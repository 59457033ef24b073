"""The forms of Hugging Face checkpoints users have, each written by PyTorch: float32, bfloat16 and float16
safetensors, sharded safetensors, PyTorch `pytorch_model.bin` and sharded .bin. Loaded with dtype "auto" (the
default) each keeps its dtype and computes what PyTorch computes on the same weights in that dtype."""

import json
import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import tljax
from conftest import padded_batch, save_word_tokenizer
from test_encoder import TINY, assert_rounds_like_pytorch, torch_model, torch_output
from tljax.models import BertForSequenceClassification, BertModel, CheckpointError, from_pretrained
from tljax.runs import RunInfo, build_model


def save_torch_state(model: torch.nn.Module, directory, dtype_key: str | None, shards: int = 1) -> None:
    """`model` as a `transformers` 4 checkpoint with safe_serialization=False wrote it: config.json (with its
    dtype under `dtype_key`, or none) and `torch.save`d state dicts, split into `shards` files by an index."""
    directory.mkdir(exist_ok=True)
    config = model.config.to_dict()
    config.pop("dtype", None)
    config.pop("torch_dtype", None)
    if dtype_key:
        config[dtype_key] = str(next(model.parameters()).dtype).removeprefix("torch.")
    (directory / "config.json").write_text(json.dumps(config))
    state = model.state_dict()
    if shards == 1:
        torch.save(state, directory / "pytorch_model.bin")
        return
    names = list(state)
    weight_map = {}
    for i, part in enumerate(np.array_split(np.arange(len(names)), shards)):
        file = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        torch.save({names[j]: state[names[j]] for j in part}, directory / file)
        weight_map |= {names[j]: file for j in part}
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
             "weight_map": weight_map}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index))


# form -> (the dtype PyTorch saves in, how it writes the directory, the weight files it must have written)
FORMS = {
    "float32": (torch.float32, lambda m, d: m.save_pretrained(d), ["model.safetensors"]),
    "bfloat16": (torch.bfloat16, lambda m, d: m.save_pretrained(d), ["model.safetensors"]),
    "float16": (torch.float16, lambda m, d: m.save_pretrained(d), ["model.safetensors"]),
    "sharded-safetensors": (torch.bfloat16, lambda m, d: m.save_pretrained(d, max_shard_size="8KB"),
                            ["model.safetensors.index.json", "model-00001-of-"]),
    "bin": (torch.float32, lambda m, d: save_torch_state(m, d, "torch_dtype"), ["pytorch_model.bin"]),
    # no dtype in config.json: "auto" reads it from the tensors
    "sharded-bin": (torch.bfloat16, lambda m, d: save_torch_state(m, d, None, shards=3),
                    ["pytorch_model.bin.index.json", "pytorch_model-00003-of-00003.bin"]),
}
JAX_DTYPES = {torch.float32: jnp.float32, torch.bfloat16: jnp.bfloat16, torch.float16: jnp.float16}


@pytest.mark.parametrize("form", FORMS)
def test_each_form_loads_in_its_own_dtype_with_pytorchs_outputs(tmp_path, rng, form):
    stored, save, files = FORMS[form]
    reference = torch_model(transformers.BertModel).to(stored)
    save(reference, tmp_path)
    names = [p.name for p in tmp_path.iterdir()]
    assert all(any(name.startswith(f) for name in names) for f in files), names
    ids, mask = padded_batch(rng, TINY["vocab_size"], [9, 4, 1])
    model = BertModel.from_pretrained(tmp_path)  # dtype "auto"
    assert model.encoder.layer[1].output.dense.kernel.dtype == JAX_DTYPES[stored]
    assert model.embeddings.word_embeddings.embedding.dtype == JAX_DTYPES[stored]
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    assert ours.dtype == JAX_DTYPES[stored]
    real = mask.astype(bool)
    expected = torch_output(reference, ids, mask)
    if stored == torch.float32:
        np.testing.assert_allclose(ours[real], expected[real], atol=1e-5, rtol=0)
    else:
        exact = torch_output(reference.float(), ids, mask)
        assert_rounds_like_pytorch(ours[real], expected[real], exact[real])


def test_an_explicit_dtype_casts_and_param_dtype_keeps_parameters_apart(tmp_path):
    torch_model(transformers.BertModel).to(torch.bfloat16).save_pretrained(tmp_path)
    for dtype in (jnp.float32, "float32"):
        model = from_pretrained(tmp_path, dtype=dtype)
        assert model.encoder.layer[0].attention.self.query.kernel.dtype == jnp.float32
    assert from_pretrained(tmp_path, dtype=None).encoder.layer[0].attention.self.query.kernel.dtype == jnp.bfloat16
    mixed = from_pretrained(tmp_path, dtype="auto", param_dtype=jnp.float32).encoder.layer[0].attention.self.query
    assert mixed.kernel.dtype == jnp.float32 and mixed.dtype == jnp.bfloat16  # parameters, computation


def test_tljax_load_keeps_the_checkpoint_dtype_unless_told(tmp_path):
    torch_model(transformers.BertModel).to(torch.float16).save_pretrained(tmp_path)
    save_word_tokenizer(tmp_path, bert=True)
    model, _ = tljax.load(str(tmp_path))
    assert model.encoder.layer[0].output.dense.kernel.dtype == jnp.float16
    model, _ = tljax.load(str(tmp_path), dtype=jnp.bfloat16)
    assert model.encoder.layer[0].output.dense.kernel.dtype == jnp.bfloat16


def test_training_builds_float32_parameters_from_a_bfloat16_checkpoint(tmp_path):
    torch_model(transformers.BertModel).to(torch.bfloat16).save_pretrained(tmp_path)
    for dtype, computes in (("float32", jnp.float32), ("bfloat16", jnp.bfloat16)):
        info = RunInfo(model=str(tmp_path), labels=("neg", "pos"), dtype=dtype)
        model = build_model(info, tmp_path, tokenizer=None).model
        dense = model.bert.encoder.layer[0].output.dense
        assert isinstance(model, BertForSequenceClassification) and dense.dtype == computes
        assert dense.kernel.dtype == jnp.float32  # master weights
        assert model.classifier.kernel.dtype == jnp.float32


def test_without_torch_a_bin_checkpoint_gets_a_one_line_hint(tmp_path, monkeypatch):
    save_torch_state(torch_model(transformers.BertModel), tmp_path, "torch_dtype")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError, as in a plain install
    with pytest.raises(CheckpointError, match="PyTorch .bin checkpoints are not read without torch: install torch") \
            as error:
        from_pretrained(tmp_path)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("content, message", [
    (lambda path: path.write_bytes(path.read_bytes()[:-100]), "is damaged or incomplete .PytorchStreamReader failed"),
    (lambda path: torch.save(torch.nn.Linear(2, 2), path), "holds more than tensors"),
    (lambda path: torch.save([torch.ones(2)], path), "is not a state dict .it holds a list"),
], ids=["cut short", "a pickled module", "a list"])
def test_a_bin_that_is_not_a_state_dict_says_what_it_is(tmp_path, content, message):
    save_torch_state(torch_model(transformers.BertModel), tmp_path, "torch_dtype")
    content(tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=f"pytorch_model.bin {message}") as error:
        from_pretrained(tmp_path)
    assert "\n" not in str(error.value)


def test_a_dtype_the_models_do_not_compute_in_is_refused(tmp_path):
    torch_model(transformers.BertModel).save_pretrained(tmp_path)
    for dtype in ("float8", jnp.int32, "half-ish"):
        with pytest.raises(CheckpointError, match=r"is not a dtype the models compute in; valid: \"auto\""):
            from_pretrained(tmp_path, dtype=dtype)
    with pytest.raises(CheckpointError, match=r"param_dtype='int8' is not a dtype"):
        from_pretrained(tmp_path, param_dtype="int8")
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"dtype": "float64"}))
    with pytest.raises(CheckpointError, match=r"stored in float64, which the models do not compute in; "
                                              r"pass dtype=\"float32\" \(or another of float32, bfloat16, float16\)"):
        from_pretrained(tmp_path)
    assert from_pretrained(tmp_path, dtype="float32").embeddings.word_embeddings.embedding.dtype == jnp.float32


def test_a_saved_model_declares_the_dtype_of_its_tensors(tmp_path):
    # a float16 model saved by tljax says float16 in config.json, so that `dtype="auto"` loads it as it is, here
    # and in PyTorch; a float32 one says float32
    torch_model(transformers.BertModel).to(torch.float16).save_pretrained(tmp_path / "pt")
    save_word_tokenizer(tmp_path / "pt", bert=True)
    model, _ = tljax.load(str(tmp_path / "pt"))
    for dtype in ("float16", "float32"):
        if dtype == "float32":
            model, _ = tljax.load(str(tmp_path / "pt"), dtype=jnp.float32)
        model.save_pretrained(tmp_path / dtype, tokenizer_source=tmp_path / "pt")
        assert json.loads((tmp_path / dtype / "config.json").read_text())["dtype"] == dtype
        umask = os.umask(0)
        os.umask(umask)  # the umask's modes, as every file a user writes (safetensors writes its own 0600)
        assert {p.stat().st_mode & 0o777 for p in (tmp_path / dtype).iterdir()} == {0o666 & ~umask}
        assert tljax.load(str(tmp_path / dtype))[0].encoder.layer[0].output.dense.kernel.dtype == jnp.dtype(dtype)
        loaded = transformers.AutoModel.from_pretrained(tmp_path / dtype, dtype="auto")
        assert loaded.encoder.layer[0].output.dense.weight.dtype == getattr(torch, dtype)
