"""The GPT-2 family against the PyTorch reference (`transformers` GPT-2) on one tiny random model: outputs, heads,
generation, checkpoints both ways, config refusals, the PEFT LoRA export, and where the methods put their
parameters."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file

from conftest import padded_batch
from test_peft_export import perturb
from tljax.methods import METHODS, Adaptation, Adapters, BitFit, FeatureExtraction, LoRA, PrefixTuning, PromptTuning, adapt
from tljax.methods.__main__ import main as methods_main
from tljax.methods.peft import save_peft
from tljax.models import (
    ConfigError,
    GPT2Config,
    GPT2ForQuestionAnswering,
    GPT2ForSequenceClassification,
    GPT2ForTokenClassification,
    GPT2LMHeadModel,
    GPT2Model,
    from_pretrained,
    generate,
)
from tljax.models.checkpoint import path_str

# A wide initialisation makes greedy decoding of a random model vary from step to step.
TINY = dict(n_layer=2, n_embd=32, n_head=4, vocab_size=101, n_positions=64, initializer_range=0.2,
            bos_token_id=1, eos_token_id=2, pad_token_id=0)
LABELS = {0: "neg", 1: "pos", 2: "mix"}
forward = nnx.jit(lambda model, *args: model(*args))


def reference(cls=transformers.GPT2LMHeadModel, **changes):
    torch.manual_seed(0)
    return cls(transformers.GPT2Config(**(TINY | changes))).eval()


def positions(mask: np.ndarray) -> np.ndarray:
    """The position ids Hugging Face's `generate` gives GPT-2 (and our default): real tokens counted."""
    return np.maximum(np.cumsum(mask, -1) - 1, 0)


def batch(left: bool = False, lengths=(9, 5, 2)):
    """Token ids and mask, padded with id 0 (the config's pad_token_id; real tokens are >= 3)."""
    return padded_batch(np.random.RandomState(1), TINY["vocab_size"], list(lengths), left=left)


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    """The tiny GPT-2 language model saved by transformers."""
    directory = tmp_path_factory.mktemp("gpt2")
    reference().save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def lm(lm_dir):
    return GPT2LMHeadModel.from_pretrained(lm_dir)


@pytest.mark.parametrize("left", [False, True], ids=["right-padded", "left-padded"])
def test_hidden_states_and_logits_match_pytorch(lm_dir, lm, left):
    torch_lm = transformers.GPT2LMHeadModel.from_pretrained(lm_dir).eval()
    ids, mask = batch(left)
    inputs = dict(attention_mask=torch.tensor(mask), position_ids=torch.tensor(positions(mask)))
    with torch.no_grad():
        expected = torch_lm(torch.tensor(ids), **inputs).logits.numpy()
        hidden = torch_lm.transformer(torch.tensor(ids), **inputs).last_hidden_state.numpy()
    real = mask.astype(bool)
    ours = np.asarray(forward(lm, jnp.asarray(ids), jnp.asarray(mask)))
    np.testing.assert_allclose(ours[real], expected[real], atol=1e-5, rtol=0)
    states = np.asarray(nnx.jit(lambda m, i, a: m(i, a)[0])(GPT2Model.from_pretrained(lm_dir), jnp.asarray(ids),
                                                            jnp.asarray(mask)))
    np.testing.assert_allclose(states[real], hidden[real], atol=1e-5, rtol=0)


HEADS = [
    (transformers.GPT2ForSequenceClassification, GPT2ForSequenceClassification, "AutoModelForSequenceClassification"),
    (transformers.GPT2ForTokenClassification, GPT2ForTokenClassification, "AutoModelForTokenClassification"),
    (transformers.GPT2ForQuestionAnswering, GPT2ForQuestionAnswering, "AutoModelForQuestionAnswering"),
    (transformers.GPT2LMHeadModel, GPT2LMHeadModel, "AutoModelForCausalLM"),
]


def torch_outputs(model, ids, mask) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.tensor(ids), attention_mask=torch.tensor(mask))
    if hasattr(out, "start_logits"):
        return np.stack([out.start_logits.numpy(), out.end_logits.numpy()], -1)
    return out.logits.numpy()


@pytest.mark.parametrize("torch_cls, cls, auto", HEADS, ids=[c.__name__ for _, c, _ in HEADS])
def test_each_class_matches_pytorch_both_ways(tmp_path, torch_cls, cls, auto):
    """transformers' checkpoint loads into ours with equal outputs (right-padded: the sequence classifier reads
    each row's last real token), and ours saves a directory transformers loads as the same class."""
    torch_model = reference(torch_cls, num_labels=len(LABELS))
    torch_model.save_pretrained(tmp_path / "torch")
    ids, mask = batch()
    expected = torch_outputs(torch_model, ids, mask)
    model = cls.from_pretrained(tmp_path / "torch")
    ours = np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask)))
    real = mask.astype(bool) if expected.ndim == 3 else slice(None)
    np.testing.assert_allclose(ours[real], expected[real], atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path / "ours")
    tensors = load_file(tmp_path / "ours" / "model.safetensors")
    assert tensors["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)  # Conv1D: [in, out], as transformers'
    again = getattr(transformers, auto).from_pretrained(tmp_path / "ours").eval()
    assert type(again) is torch_cls
    np.testing.assert_allclose(torch_outputs(again, ids, mask)[real], expected[real], atol=1e-5, rtol=0)


def test_an_old_bare_checkpoint_with_mask_buffers_loads_into_every_head(lm_dir, lm, tmp_path):
    """The first GPT-2 checkpoints name the backbone's tensors without `transformer.` and carry the causal-mask
    buffers `h.N.attn.bias` / `masked_bias`: those are not parameters, and the LM head is tied."""
    saved = load_file(lm_dir / "model.safetensors")
    tensors = {name.removeprefix("transformer."): array for name, array in saved.items()}
    for i in range(TINY["n_layer"]):
        tensors[f"h.{i}.attn.bias"] = np.tril(np.ones((64, 64), np.float32))[None, None]
        tensors[f"h.{i}.attn.masked_bias"] = np.asarray(-1e4, np.float32)
    tensors.pop("lm_head.weight", None)
    save_file(tensors, tmp_path / "model.safetensors")
    config = json.loads((lm_dir / "config.json").read_text()) | {"n_ctx": 64, "summary_type": "cls_index"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    old = from_pretrained(tmp_path)
    assert isinstance(old, GPT2LMHeadModel)
    ids, mask = batch()
    np.testing.assert_array_equal(np.asarray(forward(old, jnp.asarray(ids), jnp.asarray(mask))),
                                  np.asarray(forward(lm, jnp.asarray(ids), jnp.asarray(mask))))
    classifier = from_pretrained(tmp_path, task="sequence-classification", id2label=LABELS)
    assert classifier.score.kernel.shape == (32, 3)


def with_shared_start(ids, mask, length: int):
    """Left-padded prompts [B, T] -> the same prompts after one start of `length` random tokens (as chat prompts
    start with one system prompt), left-padded [B, length + T]."""
    start = np.random.RandomState(2).randint(3, TINY["vocab_size"], length)
    rows = [np.concatenate([start, row[real == 1]]) for row, real in zip(ids, mask)]
    width = length + ids.shape[1]
    padded = np.stack([np.pad(row, (width - len(row), 0)) for row in rows])
    return padded, (np.arange(width)[None] >= np.asarray([width - len(row) for row in rows])[:, None]).astype(int)


@pytest.mark.parametrize("shared", [0, 20], ids=["own", "shared-start"])
def test_greedy_generation_equals_transformers_on_left_padded_prompts(lm_dir, lm, shared):
    """Also for prompts that share their first 20 tokens (run once for the batch)."""
    torch_lm = transformers.GPT2LMHeadModel.from_pretrained(lm_dir).eval()
    ids, mask = batch(left=True, lengths=(8, 5, 1))
    if shared:
        ids, mask = with_shared_start(ids, mask, shared)
    ours = np.asarray(generate(lm, ids, mask, max_new_tokens=12, eos_token_ids=()))
    assert len(set(ours[0].tolist())) > 3, "the tiny model should not repeat one token"
    with torch.no_grad():
        expected = torch_lm.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=12,
                                     do_sample=False, eos_token_id=None, pad_token_id=0)[:, ids.shape[1]:]
    np.testing.assert_array_equal(ours, expected.numpy())


@pytest.mark.parametrize("change, named", [
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True"),
    ({"reorder_and_upcast_attn": True}, "reorder_and_upcast_attn=True"),
    ({"add_cross_attention": True}, "add_cross_attention=True"),
    ({"scale_attn_weights": False}, "scale_attn_weights=False"),
    ({"activation_function": "quick_gelu"}, "activation_function 'quick_gelu'"),
    ({"n_head": 5}, "n_embd 32 is not a multiple of n_head 5"),
])
def test_the_config_refuses_what_changes_the_computation_in_one_line(change, named):
    raw = transformers.GPT2Config(**TINY).to_dict() | change
    with pytest.raises(ConfigError) as error:
        GPT2Config.from_hf(raw)
    assert named in str(error.value) and "\n" not in str(error.value)


def test_the_config_reads_transformers_and_writes_what_it_reads():
    config = GPT2Config.from_hf(transformers.GPT2Config(**TINY).to_dict())
    assert (config.hidden_size, config.num_hidden_layers, config.head_dim, config.intermediate_size,
            config.max_position_embeddings) == (32, 2, 8, 128, 64)
    written = config.to_hf("GPT2LMHeadModel")
    assert GPT2Config.from_hf(written) == config
    assert transformers.GPT2Config.from_dict(written).n_embd == 32
    with pytest.raises(ConfigError, match="is not an attribute tljax implements"):
        GPT2Config.from_hf(written | {"rotary_dim": 8})


def export_and_load(adaptation, base_dir, directory, auto):
    save_peft(adaptation, directory, base_model_name_or_path=str(base_dir))
    base = getattr(transformers, auto).from_pretrained(base_dir, **({"num_labels": len(LABELS)}
                                                                     if "Sequence" in auto else {}))
    config = json.loads((directory / "adapter_config.json").read_text())
    return peft.PeftModel.from_pretrained(base, directory).eval(), config


@pytest.mark.parametrize("task", ["causal-lm", "sequence-classification"])
def test_lora_on_the_fused_attention_exports_as_a_peft_adapter(lm_dir, tmp_path, task):
    """LoRA on c_attn (PEFT's default for GPT-2): PEFT loads the adapter (fan_in_fan_out: Conv1D stores its weight
    [in, out]) and computes the same logits."""
    cls = GPT2LMHeadModel if task == "causal-lm" else GPT2ForSequenceClassification
    model = cls.from_pretrained(lm_dir, **({} if task == "causal-lm" else {"id2label": LABELS}))
    adaptation = adapt(model, [LoRA(rank=4, alpha=8.0)])
    perturb(adaptation)
    auto = "AutoModelForCausalLM" if task == "causal-lm" else "AutoModelForSequenceClassification"
    torch_model, config = export_and_load(adaptation, lm_dir, tmp_path / "adapter", auto)
    assert config["fan_in_fan_out"] is True and config["target_modules"] == ["c_attn"]
    assert config["task_type"] == ("CAUSAL_LM" if task == "causal-lm" else "SEQ_CLS")
    assert config["modules_to_save"] == (None if task == "causal-lm" else ["score"])
    tensors = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert tensors["base_model.model.transformer.h.1.attn.c_attn.lora_A.weight"].shape == (4, 32)
    assert tensors["base_model.model.transformer.h.1.attn.c_attn.lora_B.weight"].shape == (96, 4)
    ids, mask = batch()
    ours = np.asarray(forward(adaptation.model, jnp.asarray(ids), jnp.asarray(mask)))
    theirs = torch_outputs(torch_model, ids, mask)
    real = mask.astype(bool) if ours.ndim == 3 else slice(None)
    np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4, rtol=0)


def tiny_classifier() -> GPT2ForSequenceClassification:
    return GPT2ForSequenceClassification.from_config(GPT2Config.from_hf(TINY | {"id2label": LABELS}))


def adapted(method) -> Adaptation:
    """The tiny classifier with `method` applied, built abstractly (no weight computed)."""
    return Adaptation(nnx.eval_shape(lambda: adapt(tiny_classifier(), [method]).model), (method,))


def trainable_paths(adaptation) -> list[str]:
    return sorted(path_str(p) for p, _ in nnx.to_flat_state(nnx.state(adaptation.model, adaptation.trainable())))


def test_the_methods_put_their_parameters_where_gpt2_keeps_its_sub_layers():
    lora = trainable_paths(adapted(LoRA()))
    assert lora == sorted([f"transformer/h/{i}/attn/c_attn/lora_{ab}" for i in (0, 1) for ab in "ab"]
                          + ["score/kernel"])
    houlsby = trainable_paths(adapted(Adapters(kind="houlsby")))
    assert {p.split("/adapter/")[0] for p in houlsby if "/adapter/" in p} == {
        f"transformer/h/{i}/{block}/c_proj" for i in (0, 1) for block in ("attn", "mlp")}
    assert {p for p in houlsby if "/ln_" in p} == {f"transformer/h/{i}/ln_{n}/{leaf}" for i in (0, 1)
                                                    for n in (1, 2) for leaf in ("scale", "bias")}
    bitfit = trainable_paths(adapted(BitFit()))
    # per layer ln_1, ln_2, c_attn, attn c_proj, c_fc, mlp c_proj; ln_f; the head
    assert all(p.endswith("/bias") for p in bitfit if p != "score/kernel") and len(bitfit) == 2 * 6 + 1 + 1
    prefix = adapted(PrefixTuning(num_virtual_tokens=3))
    assert prefix.model.transformer.num_prefix_tokens == 3
    assert trainable_paths(prefix) == ["score/kernel", "transformer/h/0/attn/prefix/encoder/embedding"]
    prompt = adapted(PromptTuning(num_virtual_tokens=4))
    assert prompt.model.transformer.num_virtual_tokens == 4
    assert trainable_paths(prompt) == ["score/kernel", "transformer/prompt/embedding"]
    no_decay = GPT2ForSequenceClassification.layout.no_decay
    all_paths = [path_str(p) for p, _ in nnx.to_flat_state(nnx.state(nnx.eval_shape(tiny_classifier), nnx.Param))]
    skipped = {p for p in all_paths if re.search(no_decay, p)}
    assert skipped == {p for p in all_paths if p.endswith("/bias") or "/ln_" in p}
    assert "transformer/ln_f/scale" in skipped and "transformer/h/0/attn/c_attn/kernel" not in skipped


def test_a_prompt_or_prefix_changes_the_outputs_but_not_their_shape(lm_dir):
    ids, mask = batch()
    plain = np.asarray(forward(GPT2LMHeadModel.from_pretrained(lm_dir), jnp.asarray(ids), jnp.asarray(mask)))
    for method in (PromptTuning(num_virtual_tokens=3), PrefixTuning(num_virtual_tokens=3)):
        adapted = adapt(GPT2LMHeadModel.from_pretrained(lm_dir), [method]).model
        logits = np.asarray(forward(adapted, jnp.asarray(ids), jnp.asarray(mask)))
        assert logits.shape == plain.shape and np.abs(logits - plain).max() > 1e-3


def test_dropout_acts_in_training_and_feature_extraction_turns_all_of_it_off(lm_dir):
    ids, mask = map(jnp.asarray, batch())
    dropped = nnx.jit(lambda model, key: model(ids, mask, dropout_key=key))
    model = GPT2ForSequenceClassification.from_pretrained(lm_dir, id2label=LABELS)
    plain = np.asarray(forward(model, ids, mask))
    assert np.abs(np.asarray(dropped(model, jax.random.key(0))) - plain).max() > 1e-3
    frozen = adapt(model, [FeatureExtraction()]).model
    np.testing.assert_allclose(np.asarray(dropped(frozen, jax.random.key(0))), plain, atol=1e-6, rtol=0)


def test_the_methods_command_prints_the_trainable_table(lm_dir, capsys):
    assert methods_main([str(lm_dir)]) == 0
    table = capsys.readouterr().out
    assert f"| method ({lm_dir})" in table
    assert all(f"| {name} |" in table for name in METHODS)
