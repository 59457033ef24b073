"""The decoder family against the PyTorch reference (`transformers` Llama) on tiny random configs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from conftest import padded_batch
from test_encoder import assert_rounds_like_pytorch
from tljax.models import DecoderConfig, LlamaForCausalLM, LlamaForSequenceClassification, LlamaForTokenClassification, \
    LlamaModel, generate, \
    stream_generate

# A wide initialisation makes greedy decoding of a random model vary from step to step.
TINY = dict(vocab_size=173, hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
            intermediate_size=64, max_position_embeddings=128, rope_theta=500.0, initializer_range=0.2,
            bos_token_id=1, eos_token_id=2, pad_token_id=0)


def torch_model(cls=transformers.LlamaForCausalLM, **changes):
    torch.manual_seed(0)
    return cls(transformers.LlamaConfig(**(TINY | changes))).eval()


def positions(mask: np.ndarray) -> np.ndarray:
    return np.maximum(np.cumsum(mask, -1) - 1, 0)


@pytest.mark.parametrize("left", [False, True], ids=["right-padded", "left-padded"])
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_causal_lm_logits_match_pytorch(tmp_path, rng, left, tied):
    reference = torch_model(tie_word_embeddings=tied)
    reference.save_pretrained(tmp_path)
    ids, mask = padded_batch(rng, TINY["vocab_size"], [9, 5, 2], left=left)
    model = LlamaForCausalLM.from_pretrained(tmp_path)
    logits = nnx.jit(lambda m, i, a: m(i, a))(model, jnp.asarray(ids), jnp.asarray(mask))
    with torch.no_grad():
        expected = reference(torch.tensor(ids), attention_mask=torch.tensor(mask),
                             position_ids=torch.tensor(positions(mask))).logits.numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(logits)[real], expected[real], atol=1e-5, rtol=0)


def test_backbone_and_classifier_match_pytorch(tmp_path, rng):
    ids, mask = padded_batch(rng, TINY["vocab_size"], [7, 4])
    reference = torch_model(transformers.LlamaForSequenceClassification, num_labels=3)
    reference.save_pretrained(tmp_path)
    with torch.no_grad():
        expected = reference(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
        hidden = reference.model(torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    np.testing.assert_allclose(
        np.asarray(LlamaForSequenceClassification.from_pretrained(tmp_path)(jnp.asarray(ids), jnp.asarray(mask))),
        expected, atol=1e-5)
    ours, _ = LlamaModel.from_pretrained(tmp_path)(jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(ours)[mask == 1], hidden[mask == 1], atol=1e-5)


def test_token_classifier_matches_pytorch_and_saves_as_its_class(tmp_path, rng):
    ids, mask = padded_batch(rng, TINY["vocab_size"], [7, 4])
    reference = torch_model(transformers.LlamaForTokenClassification, num_labels=5)
    reference.save_pretrained(tmp_path / "torch")
    with torch.no_grad():
        expected = reference(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    model = LlamaForTokenClassification.from_pretrained(tmp_path / "torch")
    logits = np.asarray(nnx.jit(lambda m, i, a: m(i, a))(model, jnp.asarray(ids), jnp.asarray(mask)))
    real = mask == 1
    np.testing.assert_allclose(logits[real], expected[real], atol=1e-5, rtol=0)
    model.save_pretrained(tmp_path / "ours")
    again = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path / "ours").eval()
    assert type(again).__name__ == "LlamaForTokenClassification"
    with torch.no_grad():
        np.testing.assert_allclose(again(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()[real],
                                   expected[real], atol=1e-5, rtol=0)


def test_saved_directory_loads_in_pytorch(tmp_path, rng):
    model = LlamaForCausalLM.from_config(DecoderConfig.from_hf(TINY | {"tie_word_embeddings": True}), seed=5)
    model.save_pretrained(tmp_path / "saved")
    reloaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "saved").eval()
    ids, mask = padded_batch(rng, TINY["vocab_size"], [6, 6])
    with torch.no_grad():
        expected = reloaded(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids), jnp.asarray(mask))), expected, atol=1e-5)
    assert reloaded.config.rope_parameters["rope_theta"] == TINY["rope_theta"]


def greedy_by_recomputation(model, ids, mask, steps):
    """Greedy decoding that re-runs the whole sequence every step (no cache): the reference. Each step's forward
    is compiled (one small program per length; op by op it took 30 s)."""
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    last_logits = nnx.jit(lambda model, ids, mask: model(ids, mask)[:, -1])
    out = []
    for _ in range(steps):
        token = jnp.argmax(last_logits(model, ids, mask), -1).astype(ids.dtype)
        out.append(token)
        ids = jnp.concatenate([ids, token[:, None]], 1)
        mask = jnp.concatenate([mask, jnp.ones_like(mask[:, :1])], 1)
    return np.stack(out, 1)


def with_shared_start(rng, ids: np.ndarray, mask: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompts [B, T] -> the same prompts after one start of `length` random tokens (as chat prompts
    start with one system prompt), left-padded [B, length + T]."""
    start = rng.randint(3, TINY["vocab_size"], length)
    ids = np.concatenate([np.zeros((len(ids), length), ids.dtype), ids], 1)
    mask = np.concatenate([np.zeros((len(mask), length), mask.dtype), mask], 1)
    for row in range(len(ids)):
        first = int(np.argmax(mask[row]))  # each row's first real token: the start goes right before it
        ids[row, first - length: first], mask[row, first - length: first] = start, 1
    return ids, mask


@pytest.mark.parametrize("shared", [0, 20], ids=["own", "shared-start"])
def test_cached_generation_equals_recomputation_and_pytorch(tmp_path, rng, shared):
    """Also for prompts that share their first 20 tokens, which are then run once for the batch."""
    from tljax.models.decoder.generate import _split_shared

    reference = torch_model(tie_word_embeddings=True)
    reference.save_pretrained(tmp_path)
    model = LlamaForCausalLM.from_pretrained(tmp_path)
    ids, mask = padded_batch(rng, TINY["vocab_size"], [8, 5, 1], left=True)
    if shared:
        ids, mask = with_shared_start(rng, ids, mask, shared)
    assert _split_shared(ids, mask)[0].shape == (1, shared)
    cached = np.asarray(generate(model, ids, mask, max_new_tokens=12, eos_token_ids=()))
    assert len(set(cached[0].tolist())) > 3, "the tiny model should not repeat one token"
    np.testing.assert_array_equal(cached, greedy_by_recomputation(model, ids, mask, 12))
    with torch.no_grad():
        expected = reference.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=12,
                                      do_sample=False, eos_token_id=None, pad_token_id=0)[:, ids.shape[1]:]
    np.testing.assert_array_equal(cached, expected.numpy())


def test_generation_stops_at_end_of_sequence_with_padding(tmp_path, rng):
    torch_model().save_pretrained(tmp_path)
    model = LlamaForCausalLM.from_pretrained(tmp_path)
    ids, mask = padded_batch(rng, TINY["vocab_size"], [6, 3], left=True)
    free = np.asarray(generate(model, ids, mask, max_new_tokens=10, eos_token_ids=()))
    stop = int(free[0, 3])
    stopped = np.asarray(generate(model, ids, mask, max_new_tokens=10, eos_token_ids=(stop,), pad_token_id=0))
    first = list(free[0]).index(stop)
    np.testing.assert_array_equal(stopped[0, : first + 1], free[0, : first + 1])
    assert (stopped[0, first + 1:] == 0).all()


@pytest.mark.parametrize("sampling", [{}, {"temperature": 1.0, "seed": 4}], ids=["greedy", "sampled"])
@pytest.mark.parametrize("shared", [0, 20], ids=["own", "shared-start"])
def test_streamed_tokens_are_generates_and_stop_when_every_sequence_ended(tmp_path, rng, sampling, shared):
    torch_model().save_pretrained(tmp_path)
    model = LlamaForCausalLM.from_pretrained(tmp_path)
    ids, mask = padded_batch(rng, TINY["vocab_size"], [6, 3], left=True)
    if shared:
        ids, mask = with_shared_start(rng, ids, mask, shared)
    whole = np.asarray(generate(model, ids, mask, max_new_tokens=10, eos_token_ids=(), **sampling))
    streamed = np.stack(list(stream_generate(model, ids, mask, max_new_tokens=10, eos_token_ids=(), **sampling)), 1)
    np.testing.assert_array_equal(streamed, whole)
    # with an end token, the stream ends at the step where the last sequence emits it
    stop = (int(whole[0, 2]), int(whole[1, 4]))
    ended = np.asarray(generate(model, ids, mask, max_new_tokens=10, eos_token_ids=stop, pad_token_id=0, **sampling))
    steps = list(stream_generate(model, ids, mask, max_new_tokens=10, eos_token_ids=stop, pad_token_id=0, **sampling))
    last = max(min(i for i, t in enumerate(row) if t in stop) for row in ended)
    assert len(steps) == last + 1
    np.testing.assert_array_equal(np.stack(steps, 1), ended[:, : last + 1])


def test_sampling_is_reproducible_and_respects_top_k(tmp_path, rng):
    torch_model().save_pretrained(tmp_path)
    model = LlamaForCausalLM.from_pretrained(tmp_path)
    ids, mask = padded_batch(rng, TINY["vocab_size"], [5, 5], left=True)
    kw = dict(max_new_tokens=8, eos_token_ids=())
    a = np.asarray(generate(model, ids, mask, temperature=1.0, seed=1, **kw))
    b = np.asarray(generate(model, ids, mask, temperature=1.0, seed=1, **kw))
    c = np.asarray(generate(model, ids, mask, temperature=1.0, seed=2, **kw))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    greedy = np.asarray(generate(model, ids, mask, **kw))
    np.testing.assert_array_equal(generate(model, ids, mask, temperature=0.7, top_k=1, seed=3, **kw), greedy)
    np.testing.assert_array_equal(generate(model, ids, mask, temperature=0.7, top_p=1e-6, seed=3, **kw), greedy)


@pytest.mark.parametrize("stored", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_a_half_precision_checkpoint_generates_and_rounds_as_pytorch_does(tmp_path, rng, stored):
    reference = torch_model().to(stored)
    reference.save_pretrained(tmp_path)
    half = LlamaForCausalLM.from_pretrained(tmp_path)  # dtype "auto": the checkpoint's
    ids, mask = padded_batch(rng, TINY["vocab_size"], [6, 4], left=True)
    low = nnx.jit(lambda m, i, a: m(i, a))(half, jnp.asarray(ids), jnp.asarray(mask))
    dtype = {torch.bfloat16: jnp.bfloat16, torch.float16: jnp.float16}[stored]
    assert half.model.layers[0].self_attn.q_proj.kernel.dtype == dtype
    inputs = dict(attention_mask=torch.tensor(mask), position_ids=torch.tensor(positions(mask)))
    with torch.no_grad():
        pytorch_low = reference(torch.tensor(ids), **inputs).logits.float().numpy()
        exact = reference.float()(torch.tensor(ids), **inputs).logits.numpy()
    real = mask.astype(bool)
    assert_rounds_like_pytorch(np.asarray(low)[real], pytorch_low[real], exact[real])
    assert generate(half, ids, mask, max_new_tokens=4).shape == (2, 4)


@pytest.mark.parametrize("method", [None, "lora", "prompt", "prefix"])
def test_layers_scanned_compute_what_the_layers_one_by_one_compute(rng, method):
    """`scan_layers` (one compiled layer applied by `lax.scan` over the stacked parameters) gives the hidden
    states and the cache of the layers run one after another, with and without a cache, with a method in every
    layer; layers of different structure are run one by one (prefix tuning's layers each read their own rows
    of one shared table, and LoRA on one layer only)."""
    from tljax.methods import adapt, make_method
    from tljax.models import KVCache
    from tljax.models.decoder.modeling import _stacked_layers

    model = LlamaForCausalLM.from_config(DecoderConfig.from_hf(TINY | {"num_hidden_layers": 3}), seed=1)
    if method:
        model = adapt(model, [make_method(method, {} if method == "lora" else {"num_virtual_tokens": 2})]).model
    ids, mask = padded_batch(rng, TINY["vocab_size"], [7, 4], left=True)

    @nnx.jit(static_argnames="scan")
    def run(model, ids, mask, scan):
        cache = KVCache.empty(model.config, ids.shape[0], ids.shape[1] + 3)
        plain, _ = model.model(ids, mask, scan_layers=scan)
        cached, cache = model.model(ids, mask, cache=cache, scan_layers=scan)
        return plain, cached, cache

    one_by_one, scanned = run(model, ids, mask, False), run(model, ids, mask, True)
    for a, b in zip(jax.tree.leaves(one_by_one), jax.tree.leaves(scanned)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6, rtol=1e-6)
    assert (_stacked_layers(model.model.layers) is None) == (method == "prefix")
    # LoRA on the first layer only: the layers differ in structure and run one by one
    model = adapt(model, [make_method("lora", {"target_pattern": r"layers/0/self_attn/k_proj$"})]).model
    assert _stacked_layers(model.model.layers) is None
    np.testing.assert_array_equal(np.asarray(model.model(ids, mask, scan_layers=True)[0]),
                                  np.asarray(model.model(ids, mask)[0]))
