"""Generation with a T5 encoder-decoder: greedy, sampled and beam search, one compiled program per shape.

The sources are encoded once; their cross-attention keys and values are computed once into the `T5Cache`, and
each step runs one target token per sequence (per beam) through the decoder. The loops are `lax.while_loop`s over
fixed-size buffers: they stop as soon as every sequence has ended, and no shape depends on when.
Shapes: B batch, S source tokens, N new tokens, K beams, V vocab.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from flax import nnx

from tljax.models.config import ConfigError
from tljax.models.decoder.generate import check_sampling, sample_token

Array = jax.Array
# what Hugging Face's beam search adds to a score to rule a candidate out (finite, so that sums stay ordered)
EXCLUDED = -1.0e9


class Seq2SeqLM(Protocol):
    """What generation asks of an encoder-decoder with an output layer (`T5ForConditionalGeneration` answers; the
    model imports this module for its `generate_targets`, so this module names no model class)."""

    config: Any  # eos_token_ids, pad_token_id, decoder_start_token_id

    def encode(self, input_ids: Array, attention_mask: Array) -> tuple[Array, Array]:
        """Sources [B, S'] -> (the encoder's output [B, S, H], the source mask [B, S] bool)."""

    def start_cache(self, encoder_hidden: Array, source_mask: Array, size: int) -> Any:
        """A fresh decoding cache (`take(rows)` picks rows of it) with room for `size` target tokens."""

    def decode_step(self, decoder_input_ids: Array, cache: Any) -> tuple[Array, Any]:
        """The next target tokens [B, T] through the cache -> (their decoder output [B, T, H], the cache)."""

    def logits(self, hidden: Array) -> Array:
        """The decoder's output [..., H] -> float32 vocabulary logits [..., V]."""


class Generated(NamedTuple):
    """What `generate` returns."""

    tokens: Array  # [B, N] int32: the new tokens (no start token), `pad_token_id` after a sequence's end
    # [B] float32: greedy and sampled, the sum of the model's log-probabilities of the tokens up to the end
    # (before temperature, top-k or top-p); beam search, the best beam's score as Hugging Face's
    # `sequences_scores`: that sum divided by (its length ** length_penalty)
    scores: Array


def processed_log_probs(logits: Array, temperature: float, top_k: int | None, top_p: float | None) -> Array:
    """The distribution `sample_token` draws from, as log-probabilities [B, V] of logits [B, V] (temperature > 0):
    divided by the temperature, restricted to the `top_k` tokens, then to the fewest whose probability reaches
    `top_p` (the tokens ruled out at -inf), normalised. Hugging Face's temperature, top-k and top-p warpers, in
    that order, give the same."""
    logits = logits / temperature
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None:
        ordered = jnp.sort(logits, axis=-1)[:, ::-1]
        probabilities = jax.nn.softmax(ordered, axis=-1)
        before = jnp.cumsum(probabilities, axis=-1) - probabilities  # the mass of the tokens ranked above
        cutoff_index = jnp.sum(before < top_p, axis=-1, keepdims=True) - 1
        cutoff = jnp.take_along_axis(ordered, cutoff_index, axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.nn.log_softmax(logits, axis=-1)


def _encode(model: Seq2SeqLM, input_ids: Array, attention_mask: Array, rows: int, size: int):
    """The sources [B, S] encoded once into a fresh decoding cache of `size` self-attention slots, each row
    repeated `rows` times (beams: their cross-attention keys and values are computed once too)."""
    cache = model.start_cache(*model.encode(input_ids, attention_mask), size)
    return cache.take(jnp.repeat(jnp.arange(input_ids.shape[0]), rows)) if rows > 1 else cache


def _next_logits(model: Seq2SeqLM, tokens: Array, cache):
    """The last tokens [R] through the decoder -> (float32 logits of their successors [R, V], the cache)."""
    hidden, cache = model.decode_step(tokens[:, None], cache)
    return model.logits(hidden[:, 0]), cache


SAMPLING = ("temperature", "top_k", "top_p")


def sample(model: Seq2SeqLM, input_ids: Array, attention_mask: Array, key: Array, *, max_new_tokens: int,
           temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None, eos: tuple[int, ...] = (),
           pad: int = 0, start: int = 0) -> tuple[Array, Array]:
    """Greedy (temperature 0) or sampled targets of the sources [B, S] -> (tokens [B, N], scores [B]), N =
    `max_new_tokens`, `pad` after a row's end token: `generate`'s work, traceable (for use inside a compiled
    function, e.g. an evaluation that scores generated text)."""
    batch = input_ids.shape[0]
    cache = _encode(model, input_ids, attention_mask, 1, max_new_tokens)
    keys = jax.random.split(key, max_new_tokens)
    eos_ids = jnp.asarray(eos or (-1,), jnp.int32)

    def running(carry):
        step, _, _, done, _, _ = carry
        return (step < max_new_tokens) & ~done.all()

    def step_once(carry):
        step, token, cache, done, tokens, scores = carry
        logits, cache = _next_logits(model, token, cache)
        chosen = sample_token(logits, keys[step] if temperature else None, temperature, top_k, top_p)
        gained = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), chosen[:, None], axis=1)[:, 0]
        chosen = jnp.where(done, pad, chosen)
        scores = scores + jnp.where(done, 0.0, gained)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, chosen[:, None], step, axis=1)
        return step + 1, chosen, cache, done | jnp.isin(chosen, eos_ids), tokens, scores

    carry = (jnp.zeros((), jnp.int32), jnp.full((batch,), start, jnp.int32), cache, jnp.zeros((batch,), bool),
             jnp.full((batch, max_new_tokens), pad, jnp.int32), jnp.zeros((batch,), jnp.float32))
    _, _, _, _, tokens, scores = jax.lax.while_loop(running, step_once, carry)
    return tokens, scores


@partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", *SAMPLING, "eos", "pad", "start"))
def _sample(graphdef, state, input_ids, attention_mask, key, **settings):
    return sample(nnx.merge(graphdef, state), input_ids, attention_mask, key, **settings)


def _take_beams(x: Array, indices: Array) -> Array:
    """x [B, K, ...] -> x [B, J, ...] at the beams `indices` [B, J] of each row."""
    return jnp.take_along_axis(x, indices.reshape(indices.shape + (1,) * (x.ndim - 2)), axis=1)


@partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "num_beams", "length_penalty", "early_stopping",
                                   "eos", "pad", "start"))
def _beam_search(graphdef, state, input_ids, attention_mask, *, max_new_tokens, num_beams, length_penalty,
                 early_stopping, eos, pad, start):
    """Hugging Face's (transformers >= 4.50) vectorised beam search, step for step -> (best beam's tokens
    [B, N], its score [B]).

    Each step keeps the best 2K continuations of the K running beams (2K, so that K remain when K of them end);
    those that end (an end token, or the length limit) among the best K join the finished beams with their
    length-penalised score, the best K that go on are the next running beams. The search stops when no running
    beam can beat the worst finished one (`early_stopping`: False, Hugging Face's heuristic; True, as soon as K
    beams have finished; "never", the bound at the longest length when the penalty rewards length)."""
    model = nnx.merge(graphdef, state)
    batch, beams, length = input_ids.shape[0], num_beams, 1 + max_new_tokens
    keep = max(2, 1 + len(eos)) * beams
    top_beams = jnp.arange(keep) < beams
    # each length's penalty as Python computes it (double, then float32): the same divisors as PyTorch's
    penalty = jnp.asarray([max(n, 1) ** length_penalty for n in range(length + 1)], jnp.float32)
    longest = max_new_tokens ** length_penalty
    eos_ids = jnp.asarray(eos or (-1,), jnp.int32)
    cache = _encode(model, input_ids, attention_mask, beams, max_new_tokens)

    sequences = jnp.full((batch, beams, length), pad, jnp.int32).at[:, :, 0].set(start)
    carry = dict(
        length=jnp.ones((), jnp.int32), cache=cache, running=sequences, finished_sequences=sequences,
        # only the first beam starts: the others would repeat its continuations
        running_scores=jnp.zeros((batch, beams), jnp.float32).at[:, 1:].set(EXCLUDED),
        scores=jnp.full((batch, beams), EXCLUDED, jnp.float32), finished=jnp.zeros((batch, beams), bool),
        improvable=jnp.ones((batch, 1), bool), stop=jnp.zeros((), bool))

    def step_once(c):
        cur = c["length"]
        last = jax.lax.dynamic_index_in_dim(c["running"], cur - 1, axis=2, keepdims=False).reshape(-1)
        logits, cache = _next_logits(model, last, c["cache"])
        vocab = logits.shape[-1]
        log_probs = jax.nn.log_softmax(logits, axis=-1).reshape(batch, beams, vocab)
        log_probs = (log_probs + c["running_scores"][:, :, None]).reshape(batch, beams * vocab)
        # the best `keep` continuations of all beams
        top_scores, top_indices = jax.lax.top_k(log_probs, keep)
        source, token = top_indices // vocab, top_indices % vocab
        candidates = _take_beams(c["running"], source)
        candidates = jax.lax.dynamic_update_slice_in_dim(candidates, token[:, :, None], cur, axis=2)
        ends = (cur + 1 >= length) | jnp.isin(token, eos_ids)
        # the best `beams` that go on
        going = top_scores + ends.astype(jnp.float32) * EXCLUDED
        chosen = jax.lax.top_k(going, beams)[1]
        running, running_scores = _take_beams(candidates, chosen), _take_beams(going, chosen)
        rows = (_take_beams(source, chosen) + jnp.arange(batch)[:, None] * beams).reshape(-1)
        # the ended among the best `beams` join the finished ones if they beat them
        just_ended = ends & top_beams[None]
        ended_scores = top_scores / penalty[cur]
        full = jnp.all(c["finished"], axis=-1, keepdims=True) & (early_stopping is True)
        ended_scores = ended_scores + full.astype(jnp.float32) * EXCLUDED
        ended_scores = ended_scores + (~c["improvable"]).astype(jnp.float32) * EXCLUDED
        ended_scores = ended_scores + (~just_ended).astype(jnp.float32) * EXCLUDED
        merged_scores = jnp.concatenate([c["scores"], ended_scores], axis=1)
        best = jax.lax.top_k(merged_scores, beams)[1]
        finished_sequences = _take_beams(jnp.concatenate([c["finished_sequences"], candidates], axis=1), best)
        finished = _take_beams(jnp.concatenate([c["finished"], just_ended], axis=1), best)
        scores = _take_beams(merged_scores, best)
        cur = cur + 1
        # can a running beam still beat the worst finished one?
        hoped = longest if early_stopping == "never" and length_penalty > 0.0 else penalty[cur - 1]
        best_running = running_scores[:, :1] / hoped
        worst_finished = jnp.where(finished, jnp.min(scores, axis=1, keepdims=True), EXCLUDED)
        improvable = c["improvable"] & jnp.any(best_running > worst_finished, axis=-1, keepdims=True)
        open_beam = ~(jnp.all(finished) & (early_stopping is True))
        stop = ~(jnp.any(improvable) & open_beam & ~jnp.all(ends))
        return dict(length=cur, cache=cache.take(rows), running=running, finished_sequences=finished_sequences,
                    running_scores=running_scores, scores=scores, finished=finished, improvable=improvable,
                    stop=stop)

    out = jax.lax.while_loop(lambda c: ~c["stop"] & (c["length"] < length), step_once, carry)
    best = out["finished_sequences"][:, 0, 1:]
    # after its end, a sequence holds `pad` (Hugging Face fills it with the end token when pad is 0)
    ended = jnp.cumsum(jnp.isin(best, eos_ids), axis=1) - jnp.isin(best, eos_ids).astype(jnp.int32) > 0
    return jnp.where(ended, pad, best), out["scores"][:, 0]


def _check(max_new_tokens: int, num_beams: int, temperature: float, top_k, top_p, early_stopping) -> None:
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    if num_beams < 1:
        raise ConfigError(f"num_beams must be at least 1, got {num_beams}")
    if num_beams > 1 and (temperature or top_k is not None or top_p is not None):
        raise ConfigError("beam search is deterministic: sampling (temperature, top_k, top_p) needs num_beams=1")
    if early_stopping not in (True, False, "never"):
        raise ConfigError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")


def generate(
    model: Seq2SeqLM,
    input_ids: Array,
    attention_mask: Array | None = None,
    *,
    max_new_tokens: int = 32,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    eos_token_ids: Sequence[int] | None = None,
    pad_token_id: int | None = None,
    decoder_start_token_id: int | None = None,
) -> Generated:
    """Targets for padded sources [B, S] (padding on either side): at most `max_new_tokens` new tokens each.

    Greedy when `temperature` is 0 and `num_beams` 1; sampled when `temperature` > 0 (optionally restricted to the
    `top_k` tokens or the `top_p` probability mass, `sample_token`); beam search with `num_beams` > 1, as Hugging
    Face's (`length_penalty`, `early_stopping` as there; their defaults too). The decoder starts from
    `decoder_start_token_id` and a sequence ends at an end token (the config's unless given), after which it holds
    `pad_token_id`. Returns the tokens [B, max_new_tokens] and the scores [B] (`Generated`).
    """
    _check(max_new_tokens, num_beams, temperature, top_k, top_p, early_stopping)
    config = model.config
    eos = tuple(int(t) for t in (config.eos_token_ids if eos_token_ids is None else eos_token_ids))
    pad = pad_token_id if pad_token_id is not None else config.pad_token_id
    pad = int(pad if pad is not None else (eos[0] if eos else 0))
    start = decoder_start_token_id if decoder_start_token_id is not None else config.decoder_start_token_id
    if start is None:
        raise ConfigError("the config has no decoder_start_token_id: pass decoder_start_token_id (T5's is 0)")
    input_ids = jnp.asarray(input_ids, jnp.int32)
    attention_mask = jnp.ones_like(input_ids) if attention_mask is None else jnp.asarray(attention_mask, jnp.int32)
    graphdef, state = nnx.split(model)
    if num_beams > 1:
        tokens, scores = _beam_search(graphdef, state, input_ids, attention_mask, max_new_tokens=max_new_tokens,
                                      num_beams=num_beams, length_penalty=float(length_penalty),
                                      early_stopping=early_stopping, eos=eos, pad=pad, start=int(start))
    else:
        tokens, scores = _sample(graphdef, state, input_ids, attention_mask, jax.random.key(seed),
                                 max_new_tokens=max_new_tokens, temperature=float(temperature), top_k=top_k,
                                 top_p=top_p, eos=eos, pad=pad, start=int(start))
    return Generated(tokens, scores)
