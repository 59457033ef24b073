"""The Gemma 3 text decoder against the PyTorch reference (`transformers` Gemma3) on a tiny random config.

Four layers, three of them attending to a window of 4 tokens, on sequences of up to 11: both kinds of
attention (and their two RoPE bases) shape the results. The norms' weights are randomised (transformers starts
them at zero, where 1 + w hides a wrong formula; the norms after each block scale it up about three-fold, else
the scaled embeddings dominate and a tied head repeats its input), the queries are scaled by a
`query_pre_attn_scalar` other than the head size, and the logits are soft-capped.
"""

import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from conftest import cli_env, padded_batch
from test_encoder import assert_rounds_like_pytorch
from tljax.models import (
    ConfigError,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    Gemma3TextForQuestionAnswering,
    Gemma3TextForSequenceClassification,
    Gemma3TextForTokenClassification,
    Gemma3TextModel,
    from_pretrained,
    generate,
)

TINY = dict(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=12, sliding_window=4,
            layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 500.0},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 40.0}},
            final_logit_softcapping=3.0, max_position_embeddings=64, initializer_range=0.2,
            bos_token_id=2, eos_token_id=1, pad_token_id=0)
LENGTHS = [11, 6, 2]  # longer than the window, and left padding across it


def torch_model(cls=transformers.Gemma3ForCausalLM, **changes):
    torch.manual_seed(0)
    model = cls(transformers.Gemma3TextConfig(**(TINY | changes))).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:  # the layers' outputs scaled up, so that greedy decoding does not repeat the input
                parameter.normal_(2.0 if "post_" in name else 0.0, 0.5)
    return model


def positions(mask: np.ndarray) -> np.ndarray:
    return np.maximum(np.cumsum(mask, -1) - 1, 0)


def torch_inputs(ids, mask) -> dict:
    return dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                position_ids=torch.tensor(positions(mask)))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(the PyTorch causal LM, its saved directory)."""
    model = torch_model()
    directory = tmp_path_factory.mktemp("gemma3")
    model.save_pretrained(directory)
    return model, directory


@pytest.fixture(scope="module")
def model(reference):
    return Gemma3ForCausalLM.from_pretrained(reference[1])


@pytest.fixture(scope="module")
def batch():
    return padded_batch(np.random.RandomState(0), TINY["vocab_size"], LENGTHS, left=True)


def test_logits_and_hidden_states_match_pytorch_on_a_left_padded_batch(reference, model, batch):
    ids, mask = batch
    logits = nnx.jit(lambda m, i, a: m(i, a))(model, jnp.asarray(ids), jnp.asarray(mask))
    with torch.no_grad():
        out = reference[0](**torch_inputs(ids, mask), output_hidden_states=True)
    real = mask.astype(bool)
    expected = out.logits.numpy()
    assert np.abs(expected[real]).max() > 2.0, "the soft cap (3) should matter"
    np.testing.assert_allclose(np.asarray(logits)[real], expected[real], atol=1e-5, rtol=0)
    hidden, _ = Gemma3TextModel.from_pretrained(reference[1])(jnp.asarray(ids), jnp.asarray(mask),
                                                              jnp.asarray(positions(mask)))
    np.testing.assert_allclose(np.asarray(hidden)[real], out.hidden_states[-1].numpy()[real], atol=1e-5, rtol=0)


def test_the_window_and_the_layer_types_matter(reference, model, batch):
    """The same weights with every layer attending globally give other logits: the window is in use."""
    ids, mask = batch
    config = model.config.replace(layer_types=("full_attention",) * 4)
    everywhere = Gemma3ForCausalLM(config, rngs=nnx.Rngs(0))
    nnx.update(everywhere, nnx.state(model, nnx.Param))
    last = nnx.jit(lambda m, i, a: m(i, a)[0, -1])
    assert np.abs(last(everywhere, jnp.asarray(ids[:1]), jnp.asarray(mask[:1]))
                  - last(model, jnp.asarray(ids[:1]), jnp.asarray(mask[:1]))).max() > 1e-2


def test_classifier_matches_pytorch_and_heads_load_a_causal_checkpoint(tmp_path, reference, batch):
    ids, mask = batch
    classifier = torch_model(transformers.Gemma3TextForSequenceClassification, num_labels=3)
    classifier.save_pretrained(tmp_path)
    with torch.no_grad():
        expected = classifier(torch.tensor(ids), attention_mask=torch.tensor(mask),
                              position_ids=torch.tensor(positions(mask))).logits.numpy()
    ours = Gemma3TextForSequenceClassification.from_pretrained(tmp_path)
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(ids), jnp.asarray(mask))), expected, atol=1e-5)
    # the heads transformers lacks start from a causal checkpoint, their backbone that of the causal model
    causal, _ = Gemma3TextModel.from_pretrained(reference[1])(jnp.asarray(ids), jnp.asarray(mask))
    tagger = Gemma3TextForTokenClassification.from_pretrained(reference[1], id2label={0: "O", 1: "B", 2: "I"})
    reader = Gemma3TextForQuestionAnswering.from_pretrained(reference[1])
    for head, body in ((tagger, tagger.model), (reader, reader.transformer)):
        np.testing.assert_array_equal(np.asarray(body(jnp.asarray(ids), jnp.asarray(mask))[0]), np.asarray(causal))
    assert tagger(jnp.asarray(ids), jnp.asarray(mask)).shape == (3, max(LENGTHS), 3)
    assert reader(jnp.asarray(ids), jnp.asarray(mask)).shape == (3, max(LENGTHS), 2)


def test_saved_directory_loads_in_pytorch_and_back(tmp_path, model, batch):
    ids, mask = batch
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["rope_parameters"]["sliding_attention"]["rope_theta"] == 40.0
    assert saved["layer_types"] == TINY["layer_types"] and saved["architectures"] == ["Gemma3ForCausalLM"]
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(again).__name__ == "Gemma3ForCausalLM"
    with torch.no_grad():
        expected = again(**torch_inputs(ids, mask)).logits.numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))[real], expected[real],
                               atol=1e-5, rtol=0)
    reloaded = from_pretrained(tmp_path)
    assert type(reloaded) is Gemma3ForCausalLM and reloaded.config == model.config


def test_a_bfloat16_checkpoint_rounds_as_pytorch_does(tmp_path, reference, batch):
    """In bfloat16, Gemma's own roundings (the embedding scale rounded to bfloat16, 1 + w in float32 before the
    cast) keep ours as close to float32 as PyTorch's bfloat16 model is."""
    low = torch_model().to(torch.bfloat16)
    low.save_pretrained(tmp_path)
    ours = Gemma3ForCausalLM.from_pretrained(tmp_path)  # dtype "auto": the checkpoint's
    assert ours.model.embed_tokens.embedding.dtype == jnp.bfloat16
    ids, mask = batch
    real = mask.astype(bool)
    with torch.no_grad():
        pytorch_low = low(**torch_inputs(ids, mask)).logits.float().numpy()
        exact = reference[0](**torch_inputs(ids, mask)).logits.numpy()  # the same weights in float32
    mine = np.asarray(nnx.jit(lambda m, i, a: m(i, a))(ours, jnp.asarray(ids), jnp.asarray(mask)))
    assert_rounds_like_pytorch(mine[real], pytorch_low[real], exact[real])


def test_cutting_layers_keeps_each_layers_kind(tmp_path, reference, batch):
    """A student of layers 1 and 2 (a sliding and a full one) is the Gemma 3 transformers builds from its config."""
    from tljax.models.transforms import select_layers

    student = Gemma3ForCausalLM.from_pretrained(reference[1])
    select_layers(student, [1, 2])
    assert student.config.layer_types == ("sliding_attention", "full_attention")
    student.save_pretrained(tmp_path)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids, mask = batch
    real = mask.astype(bool)
    with torch.no_grad():
        expected = again(**torch_inputs(ids, mask)).logits.numpy()
    np.testing.assert_allclose(np.asarray(student(jnp.asarray(ids), jnp.asarray(mask)))[real], expected[real],
                               atol=1e-5, rtol=0)


def test_config_reads_both_spellings_and_refuses_what_it_does_not_compute():
    old = Gemma3TextConfig.from_hf({"model_type": "gemma3_text", "num_hidden_layers": 7, "rope_theta": 1e6,
                                    "rope_local_base_freq": 1e4, "sliding_window_pattern": 3,
                                    "cache_implementation": "hybrid"})
    assert old.layer_types == ("sliding_attention", "sliding_attention", "full_attention") * 2 + (
        "sliding_attention",)
    assert (old.rope_theta, old.rope_local_base_freq) == (1e6, 1e4)
    new = Gemma3TextConfig.from_hf(transformers.Gemma3TextConfig(**TINY).to_dict())
    assert (new.rope_theta, new.rope_local_base_freq, new.layer_types) == (500.0, 40.0, tuple(TINY["layer_types"]))
    refused = {
        "attn_logit_softcapping": 50.0,
        "use_bidirectional_attention": True,
        "hidden_activation": "silu",
        "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                            "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}},
        "layer_types": ["sliding_attention", "chunked_attention"],
        "some_new_switch": True,
    }
    for key, value in refused.items():
        with pytest.raises(ConfigError, match=key if key != "layer_types" else "layer_types must") as error:
            Gemma3TextConfig.from_hf({"model_type": "gemma3_text", "num_hidden_layers": 2, key: value})
        assert str(error.value).count("\n") <= 2, "one line per problem"


def test_greedy_generation_equals_pytorch(reference, model, batch):
    """tljax's generation (the cache, sliding windows over cache slots, left padding) against transformers'
    `generate` with its own sliding-window cache: 12 new tokens take the longest prompt past 5 windows."""
    ids, mask = batch
    ours = np.asarray(generate(model, ids, mask, max_new_tokens=12, eos_token_ids=()))
    assert len(set(ours[0].tolist())) > 3, "the tiny model should not repeat one token"
    with torch.no_grad():
        expected = reference[0].generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=12,
                                         do_sample=False, eos_token_id=None, pad_token_id=0)[:, ids.shape[1]:]
    np.testing.assert_array_equal(ours, expected.numpy())


def trainable_paths(adaptation) -> list[str]:
    return [path for path, _, rule in adaptation.rules().report(adaptation.model) if rule.trainable]


def test_lora_exports_a_peft_adapter_that_pytorch_loads(tmp_path, reference, batch):
    import peft

    from tljax.methods import adapt, make_method
    from tljax.methods.peft import save_peft

    adaptation = adapt(Gemma3ForCausalLM.from_pretrained(reference[1]), [make_method("lora", {"rank": 4})])
    targets = {p for p, _ in nnx.to_flat_state(nnx.state(adaptation.model, nnx.Param)) if "lora" in str(p)}
    assert targets and all({"q_proj", "v_proj"} & set(map(str, p)) for p in targets)  # PEFT's default targets
    # moved off zero, so that the adapter changes the logits
    for path, variable in nnx.to_flat_state(nnx.state(adaptation.model, nnx.Param)):
        if "lora_b" in map(str, path):
            variable.set_value(0.3 * jnp.ones_like(variable.get_value()))
    save_peft(adaptation, tmp_path / "adapter", base_model_name_or_path=str(reference[1]))
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    ids, mask = batch
    base = transformers.AutoModelForCausalLM.from_pretrained(reference[1]).eval()
    with torch.no_grad():
        before = base(**torch_inputs(ids, mask)).logits.numpy()
        loaded = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
        expected = loaded(**torch_inputs(ids, mask)).logits.numpy()
    ours = np.asarray(adaptation.model(jnp.asarray(ids), jnp.asarray(mask)))
    real = mask.astype(bool)
    assert np.abs(expected - before)[real].max() > 1e-2
    np.testing.assert_allclose(ours[real], expected[real], atol=1e-5, rtol=0)


def test_methods_command_prints_the_trainable_table(reference):
    done = subprocess.run([sys.executable, "-m", "tljax.methods", str(reference[1])], capture_output=True,
                          text=True, env=cli_env(devices=1), timeout=120)
    assert done.returncode == 0, done.stderr
    rows = {line.split("|")[1].strip(): line for line in done.stdout.splitlines() if line.startswith("| ")}
    assert {"full", "lora", "houlsby", "prefix", "prompt"} <= set(rows), done.stdout
    assert "100.000%" in rows["full"] and "| 0.0" not in rows["lora"], done.stdout


@pytest.mark.parametrize("method, lands", [
    ("lora", r"layers/\d+/self_attn/[qv]_proj/lora_[ab]$"),
    ("houlsby", r"layers/\d+/(?:self_attn/o_proj|mlp/down_proj)/adapter/|layernorm/weight$|[qk]_norm/weight$"),
    ("prefix", r"^model/layers/0/self_attn/prefix/encoder/embedding$"),
    ("prompt", r"^model/prompt/"),
])
def test_methods_put_their_parameters_in_gemmas_places(reference, batch, method, lands):
    """Where a method's trainable parameters land, from the family's layout (and that the adapted model runs)."""
    import re

    from tljax.methods import adapt, make_method

    model = Gemma3ForCausalLM.from_pretrained(reference[1])
    options = {"num_virtual_tokens": 2} if method in ("prefix", "prompt") else {}
    adaptation = adapt(model, [make_method(method, options)])
    trainable = trainable_paths(adaptation)
    assert trainable and all(re.search(lands, p) for p in trainable), trainable
    ids, mask = batch
    logits = nnx.jit(lambda m, i, a: m(i, a))(adaptation.model, jnp.asarray(ids), jnp.asarray(mask))
    assert np.isfinite(np.asarray(logits)).all()


def test_a_soft_prompt_starts_from_the_embeddings_gemma_reads(reference):
    """Gemma scales its token embeddings by sqrt(hidden): a prompt started from words starts from the scaled rows,
    as PEFT's does (`word_embeddings(ids)`), not from the table's (5.7 times smaller here)."""
    from tljax.methods import MethodContext, adapt, make_method

    class TwoWords:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [7, 9]}

    model = Gemma3ForCausalLM.from_pretrained(reference[1])
    method = make_method("prompt", {"num_virtual_tokens": 3, "init": "text", "init_text": "good bad"})
    adaptation = adapt(model, [method], context=MethodContext(tokenizer=TwoWords()))
    with torch.no_grad():
        expected = reference[0].get_input_embeddings()(torch.tensor([7, 9, 7])).numpy()
    np.testing.assert_allclose(np.asarray(adaptation.model.model.prompt.embedding[...]), expected, rtol=1e-6)


def test_bitfit_adds_the_biases_a_pytorch_gemma_holds_and_saves_them(tmp_path, reference, batch):
    """transformers' Gemma 3 has attention biases (`attention_bias`) but no MLP biases: BitFit adds zero biases
    to q/k/v/o_proj only, and the trained model saves whole into a directory PyTorch computes the same from."""
    from tljax.methods import adapt, make_method

    adaptation = adapt(Gemma3ForCausalLM.from_pretrained(reference[1]), [make_method("bitfit")])
    biases = [p for p in trainable_paths(adaptation) if p.endswith("bias")]
    assert len(biases) == 4 * TINY["num_hidden_layers"] and all("self_attn/" in p for p in biases), biases
    rng = np.random.RandomState(0)
    for path, variable in nnx.to_flat_state(nnx.state(adaptation.model, nnx.Param)):
        if path[-1] == "bias":  # as training would leave them
            variable.set_value(jnp.asarray(rng.normal(0, 0.5, variable.get_value().shape), jnp.float32))
    adaptation.model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["attention_bias"] is True and "mlp_bias" not in saved
    ids, mask = batch
    with torch.no_grad():
        expected = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()(**torch_inputs(ids, mask)).logits
    real = mask.astype(bool)
    ours = np.asarray(adaptation.model(jnp.asarray(ids), jnp.asarray(mask)))
    np.testing.assert_allclose(ours[real], expected.numpy()[real], atol=1e-5, rtol=0)
    assert not np.allclose(ours, np.asarray(Gemma3ForCausalLM.from_pretrained(reference[1])(jnp.asarray(ids), jnp.asarray(mask))))
