"""The Qwen2 family against the PyTorch reference (`transformers` Qwen2) on a tiny random config: forward, heads,
generation, saving both ways, config refusals, a PEFT export, where the methods put their parameters."""

import contextlib
import io
import json
import types

import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
import transformers
from flax import nnx

from conftest import padded_batch
from test_decoder import positions
from test_peft_export import perturb
from tljax.methods import Adaptation, Adapters, BitFit, LoRA, PrefixTuning, PromptTuning, adapt
from tljax.methods.peft import save_peft
from tljax.models.transforms import backbone
from tljax.models import (
    ConfigError,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2ForQuestionAnswering,
    Qwen2ForSequenceClassification,
    Qwen2ForTokenClassification,
    Qwen2Model,
    from_pretrained,
    generate,
)

# A wide initialisation makes greedy decoding of a random model vary from step to step; small Qwen2 sizes tie
# their embeddings.
TINY = dict(vocab_size=101, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=48, max_position_embeddings=128, initializer_range=0.2, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 500.0}, bos_token_id=1, eos_token_id=2,
            pad_token_id=0)
VOCAB = TINY["vocab_size"]


def torch_reference(cls=transformers.Qwen2ForCausalLM, **changes) -> torch.nn.Module:
    """A random PyTorch Qwen2 whose q/k/v biases are not zero (Hugging Face initialises them to zero, which would
    leave them untested)."""
    torch.manual_seed(0)
    model = cls(transformers.Qwen2Config(**(TINY | changes))).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0.0, 0.2)
    return model


@pytest.fixture(scope="module")
def causal(tmp_path_factory) -> types.SimpleNamespace:
    """The PyTorch causal LM, the directory it saved, and our model loaded from that directory."""
    directory = tmp_path_factory.mktemp("qwen2")
    reference = torch_reference()
    reference.save_pretrained(directory)
    return types.SimpleNamespace(reference=reference, directory=directory,
                                 model=Qwen2ForCausalLM.from_pretrained(directory))


@nnx.jit
def hidden_and_logits(model, ids, mask):
    hidden, _ = model.model(ids, mask)
    return hidden, model.logits(hidden)


def torch_logits(model, ids, mask) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(ids), attention_mask=torch.tensor(mask),
                     position_ids=torch.tensor(positions(mask))).logits.numpy()


@pytest.mark.parametrize("left", [False, True], ids=["right-padded", "left-padded"])
def test_hidden_states_and_logits_match_pytorch(causal, left):
    ids, mask = padded_batch(np.random.RandomState(0), VOCAB, [9, 5, 2], left=left)
    hidden, logits = hidden_and_logits(causal.model, jnp.asarray(ids), jnp.asarray(mask))
    inputs = dict(attention_mask=torch.tensor(mask), position_ids=torch.tensor(positions(mask)))
    with torch.no_grad():
        expected_hidden = causal.reference.model(torch.tensor(ids), **inputs).last_hidden_state.numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(hidden)[real], expected_hidden[real], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.asarray(logits)[real], torch_logits(causal.reference, ids, mask)[real],
                               atol=1e-5, rtol=0)
    assert causal.model.model.layers[0].self_attn.q_proj.bias is not None
    assert causal.model.model.layers[0].self_attn.o_proj.bias is None and causal.model.lm_head is None


def test_greedy_generation_equals_transformers(causal):
    ids, mask = padded_batch(np.random.RandomState(1), VOCAB, [8, 5, 1], left=True)
    ours = np.asarray(generate(causal.model, ids, mask, max_new_tokens=10, eos_token_ids=()))
    assert len(set(ours[0].tolist())) > 3, "the tiny model should not repeat one token"
    with torch.no_grad():
        expected = causal.reference.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=10,
                                             do_sample=False, eos_token_id=None, pad_token_id=0)[:, ids.shape[1]:]
    np.testing.assert_array_equal(ours, expected.numpy())


def load_in_pytorch(directory, auto=transformers.AutoModelForCausalLM) -> torch.nn.Module:
    """`transformers`' model of a directory, checked to have found every tensor it needs and no other."""
    model, info = auto.from_pretrained(directory, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return model.eval()


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_saved_directory_loads_in_pytorch_with_equal_logits(causal, tmp_path, tied):
    """transformers saves -> tljax loads (the fixture's model, or an untied one) -> tljax saves -> transformers
    loads: the logits of all three are equal."""
    if tied:
        reference, model = causal.reference, causal.model
    else:
        reference = torch_reference(tie_word_embeddings=False)
        reference.save_pretrained(tmp_path / "torch")
        model = Qwen2ForCausalLM.from_pretrained(tmp_path / "torch")
        assert model.lm_head is not None
    backbone = from_pretrained(causal.directory, task="base")  # a checkpoint with a head loads into the backbone
    assert type(backbone) is Qwen2Model and backbone.layers[1].self_attn.k_proj.bias is not None
    model.save_pretrained(tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["model_type"] == "qwen2" and config["architectures"] == ["Qwen2ForCausalLM"]
    assert "attention_bias" not in config and "mlp_bias" not in config
    again = load_in_pytorch(tmp_path / "ours")
    assert type(again).__name__ == "Qwen2ForCausalLM"
    ids, mask = padded_batch(np.random.RandomState(2), VOCAB, [7, 4], left=True)
    real = mask.astype(bool)
    expected = torch_logits(reference, ids, mask)[real]
    np.testing.assert_allclose(torch_logits(again, ids, mask)[real], expected, atol=1e-5, rtol=0)
    ours = np.asarray(hidden_and_logits(model, jnp.asarray(ids), jnp.asarray(mask))[1])
    np.testing.assert_allclose(ours[real], expected, atol=1e-5, rtol=0)


HEADS = {
    "sequence-classification": (transformers.Qwen2ForSequenceClassification, Qwen2ForSequenceClassification,
                                transformers.AutoModelForSequenceClassification),
    "token-classification": (transformers.Qwen2ForTokenClassification, Qwen2ForTokenClassification,
                             transformers.AutoModelForTokenClassification),
    "question-answering": (transformers.Qwen2ForQuestionAnswering, Qwen2ForQuestionAnswering,
                           transformers.AutoModelForQuestionAnswering),
}


def torch_head_outputs(model, ids, mask) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(positions(mask)))
    if hasattr(out, "start_logits"):
        return np.stack([out.start_logits.numpy(), out.end_logits.numpy()], -1)
    return out.logits.numpy()


@pytest.mark.parametrize("task", list(HEADS))
def test_each_head_matches_pytorch_both_ways(tmp_path, task):
    torch_class, our_class, auto = HEADS[task]
    reference = torch_reference(torch_class, num_labels=3)
    reference.save_pretrained(tmp_path / "torch")
    model = from_pretrained(tmp_path / "torch", task=task)
    assert type(model) is our_class and type(backbone(model)) is Qwen2Model
    if task == "question-answering":  # Hugging Face's span model names its backbone `transformer`
        assert any(name.startswith("transformer.") for name in reference.state_dict())
    ids, mask = padded_batch(np.random.RandomState(3), VOCAB, [9, 5])
    ours = np.asarray(nnx.jit(lambda m, i, a: m(i, a))(model, jnp.asarray(ids), jnp.asarray(mask)))
    expected = torch_head_outputs(reference, ids, mask)
    real = slice(None) if task == "sequence-classification" else mask == 1
    np.testing.assert_allclose(ours[real], expected[real], atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path / "ours")
    again = load_in_pytorch(tmp_path / "ours", auto)
    assert type(again).__name__ == torch_class.__name__
    np.testing.assert_allclose(torch_head_outputs(again, ids, mask)[real], expected[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("changes, message", [
    ({"use_sliding_window": True, "sliding_window": 16}, "use_sliding_window=True is not supported"),
    ({"layer_types": ["full_attention", "sliding_attention"]}, "every layer must be 'full_attention'"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}},
     "rope_parameters=.* is not supported"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling=.*linear.*not supported"),
], ids=["sliding-window", "sliding-layer", "rope-parameters", "rope-scaling"])
def test_configs_it_does_not_implement_are_refused_in_one_line(changes, message):
    config = transformers.Qwen2Config(**TINY).to_dict() | changes
    with pytest.raises(ConfigError, match=message) as refused:
        Qwen2Config.from_hf(config)
    assert "\n" not in str(refused.value)


def test_what_does_not_change_the_forward_pass_is_accepted():
    """A Qwen2.5-style config.json: a sliding window's size and start layer with the window off, the legacy
    `rope_theta`, and attention_bias / mlp_bias, which Hugging Face's Qwen2 ignores (it has neither bias)."""
    raw = {k: v for k, v in TINY.items() if k != "rope_parameters"} | {
        "model_type": "qwen2", "use_sliding_window": False, "sliding_window": 32768, "max_window_layers": 21,
        "rope_theta": 1e6, "torch_dtype": "bfloat16", "attention_bias": True, "mlp_bias": True,
        "layer_types": ["full_attention"] * 2}
    config = Qwen2Config.from_hf(raw)
    assert config.rope_theta == 1e6 and config.qkv_bias and not config.attention_bias and not config.mlp_bias
    with pytest.raises(ConfigError, match="model_type 'llama' is not 'qwen2'"):
        Qwen2Config.from_hf(raw | {"model_type": "llama"})
    with pytest.raises(ConfigError, match="mlp_bias=True needs attention_bias=True"):  # no Hugging Face twin
        config.replace(mlp_bias=True).validate()


@pytest.mark.parametrize("bitfit", [False, True], ids=["lora", "lora+bitfit"])
def test_a_lora_adapter_loads_in_peft_with_equal_logits(causal, tmp_path, bitfit):
    """With BitFit, PEFT's base is the model saved with BitFit's zero o_proj and MLP biases (a Llama directory):
    the adapter's biases need a place there."""
    base = causal.directory
    if bitfit:
        adapt(Qwen2ForCausalLM.from_pretrained(base), [BitFit()]).model.save_pretrained(tmp_path / "base")
        base = tmp_path / "base"
    adaptation = adapt(Qwen2ForCausalLM.from_pretrained(causal.directory),
                       [LoRA(rank=4, alpha=16.0)] + ([BitFit()] if bitfit else []))
    perturb(adaptation)
    save_peft(adaptation, tmp_path / "adapter", base_model_name_or_path=str(base))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["target_modules"] == ["q_proj", "v_proj"]
    assert config["bias"] == ("all" if bitfit else "none")
    reference = peft.PeftModel.from_pretrained(load_in_pytorch(base), tmp_path / "adapter").eval()
    ids, mask = padded_batch(np.random.RandomState(4), VOCAB, [9, 4, 1], left=True)
    real = mask.astype(bool)
    ours = np.asarray(hidden_and_logits(adaptation.model, jnp.asarray(ids), jnp.asarray(mask))[1])
    np.testing.assert_allclose(ours[real], torch_logits(reference, ids, mask)[real], atol=1e-4, rtol=0)


def adapted(method) -> tuple[Qwen2ForCausalLM, set[str]]:
    """The tiny causal LM with `method` applied, built abstractly (no value computed), and the module paths of the
    parameters the method trains (layer indices as "N")."""
    config = Qwen2Config.from_hf(transformers.Qwen2Config(**TINY).to_dict())
    model = nnx.eval_shape(lambda: adapt(Qwen2ForCausalLM.from_config(config), [method]).model)
    report = Adaptation(model, (method,)).rules().report(model)
    return model, {"/".join("N" if part.isdigit() else part for part in path.split("/")[:-1])
                   for path, _, rule in report if rule.trainable}


def test_where_the_methods_put_their_parameters():
    assert adapted(LoRA())[1] == {"model/layers/N/self_attn/q_proj", "model/layers/N/self_attn/v_proj"}
    assert {m for m in adapted(Adapters(kind="houlsby"))[1] if "layernorm" not in m} == {
        f"model/layers/N/{place}/adapter/{part}" for place in ("self_attn/o_proj", "mlp/down_proj")
        for part in ("down", "up")}
    model, trained = adapted(PrefixTuning(num_virtual_tokens=2))
    assert trained == {"model/layers/N/self_attn/prefix/encoder"} and model.model.num_prefix_tokens == 2
    model, trained = adapted(PromptTuning(num_virtual_tokens=3))
    assert trained == {"model/prompt"} and model.model.num_virtual_tokens == 3
    model, trained = adapted(BitFit())  # the q/k/v biases, and zero ones where Qwen2 has none
    assert trained == {f"model/layers/N/{name}" for name in ("self_attn/q_proj", "self_attn/k_proj",
                       "self_attn/v_proj", "self_attn/o_proj", "mlp/gate_proj", "mlp/up_proj", "mlp/down_proj")}
    assert model.config.attention_bias and model.config.mlp_bias


def test_bitfit_exports_as_the_llama_it_computes_as(causal, tmp_path):
    """Hugging Face's Qwen2 has no o_proj or MLP biases: BitFit's (trained) ones would be dropped, so the model
    saves as a Llama with attention_bias and mlp_bias, which transformers and tljax load with equal logits."""
    adaptation = adapt(Qwen2ForCausalLM.from_pretrained(causal.directory), [BitFit()])
    model = adaptation.model
    perturb(adaptation)
    model.save_pretrained(tmp_path / "bitfit")
    config = json.loads((tmp_path / "bitfit" / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    assert config["attention_bias"] and config["mlp_bias"] and config["tie_word_embeddings"]
    ids, mask = padded_batch(np.random.RandomState(5), VOCAB, [6, 3], left=True)
    real = mask.astype(bool)
    ours = np.asarray(hidden_and_logits(model, jnp.asarray(ids), jnp.asarray(mask))[1])[real]
    np.testing.assert_allclose(torch_logits(load_in_pytorch(tmp_path / "bitfit"), ids, mask)[real], ours,
                               atol=1e-5, rtol=0)
    reloaded = from_pretrained(tmp_path / "bitfit")
    assert type(reloaded) is LlamaForCausalLM
    np.testing.assert_array_equal(np.asarray(reloaded.model.layers[1].mlp.up_proj.bias[...]),
                                  np.asarray(model.model.layers[1].mlp.up_proj.bias[...]))


def test_the_methods_command_prints_the_trainable_table(causal):
    from tljax.methods.__main__ import main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([str(causal.directory)]) == 0
    rows = {line.split(" | ")[0].strip("| "): line for line in printed.getvalue().splitlines()}
    # LoRA rank 8 on q_proj (32 -> 32) and v_proj (32 -> 16) in 2 layers, and the 2-label score head (32 x 2)
    assert "| 1,856 |" in rows["lora"], printed.getvalue()
    assert {"full", "bitfit", "prefix", "prompt", "pfeiffer"} <= set(rows)
