"""Text generation with the key/value cache: greedy and sampled, one compiled program per shape.

Every decoder family generates through the same code: it asks the model only what `CausalLM` and `CachedBackbone`
state (LlamaForCausalLM and GPT2LMHeadModel both answer), never for its family or its attribute names.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tljax.models.config import ConfigError
from tljax.models.decoder.modeling import KVCache, shared_start
from tljax.models.transforms import backbone

Array = jax.Array
PROMPT_STEP = 32  # stream_chat pads prompts to multiples of this


class CachedBackbone(Protocol):
    """What generation asks of a causal model's backbone (`tljax.models.transforms.backbone(model)`)."""

    num_virtual_tokens: int  # a soft prompt's virtual tokens, which come before the prompt
    num_prefix_tokens: int  # a prefix's keys and values, which take the first positions

    def after_shared_start(self, shared: Array, input_ids: Array, attention_mask: Array, size: int, *,
                           scan_layers: bool = False) -> tuple[Array, KVCache]:
        """Left-padded rows [B, T] after the tokens `shared` [1, S] that all start with (S may be 0), run into a
        fresh cache of `size` slots (`KVCache.empty` of the model's config: its constructor) -> (the rows' hidden
        states [B, T, H], the cache)."""

    def __call__(self, input_ids: Array, attention_mask: Array, *, cache: KVCache,
                 use_prompt: bool = False) -> tuple[Array, KVCache]:
        """[B, T] more tokens through the cache -> (their hidden states [B, T, H], the updated cache)."""


class CausalLM(Protocol):
    """What generation asks of a causal language model besides its backbone."""

    # `max_position_embeddings` (the context), `eos_token_ids`, `pad_token_id`
    config: Any

    def logits(self, hidden: Array) -> Array:
        """Hidden states [..., H] -> float32 next-token logits [..., V]."""


def sample_token(logits: Array, key: Array | None, temperature: float, top_k: int | None,
                 top_p: float | None) -> Array:
    """Picks the next token from logits [B, V]: the argmax when temperature is 0, else a sample."""
    if temperature == 0.0 or key is None:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p is not None:
        ordered = jnp.sort(logits, axis=-1)[:, ::-1]
        cumulative = jnp.cumsum(jax.nn.softmax(ordered, axis=-1), axis=-1)
        # the smallest set of tokens whose probability reaches top_p (the top token always stays)
        cutoff_index = jnp.sum(cumulative - jax.nn.softmax(ordered, axis=-1) < top_p, axis=-1, keepdims=True) - 1
        cutoff = jnp.take_along_axis(ordered, cutoff_index, axis=-1)
        logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _split_shared(input_ids, attention_mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Left-padded prompts [B, T] -> (the start they all share [1, S] (`shared_start`; S may be 0), the rest of
    each [B, T'] left-padded to a multiple of PROMPT_STEP, its mask [B, T'])."""
    ids, mask = np.asarray(input_ids, np.int32), np.asarray(attention_mask, np.int32)
    prompts = [row[real > 0] for row, real in zip(ids, mask)]
    common = shared_start(prompts)
    if not common:
        return np.zeros((1, 0), np.int32), ids, mask
    rest = [prompt[common:] for prompt in prompts]
    width = -(-max(map(len, rest)) // PROMPT_STEP) * PROMPT_STEP
    rest_ids, rest_mask = np.zeros((len(rest), width), np.int32), np.zeros((len(rest), width), np.int32)
    for row, tokens in enumerate(rest):
        rest_ids[row, width - len(tokens):], rest_mask[row, width - len(tokens):] = tokens, 1
    return prompts[0][None, :common], rest_ids, rest_mask


def _first_token(model: CausalLM, shared, input_ids, attention_mask, key, total: int, sampling: dict):
    """The prompt (shared [1, S], then each row's own [B, T]) run into a fresh cache of `total` positions ->
    (first new token [B], cache). The shared start is run once, its keys and values copied to every row."""
    hidden, cache = backbone(model).after_shared_start(shared, input_ids, attention_mask, total,
                                                       scan_layers=True)  # one layer to compile
    return sample_token(model.logits(hidden[:, -1]), key, **sampling), cache


def _next_token(model: CausalLM, token, cache, key, sampling: dict):
    """One decoding step: the last token [B] through the cache -> (next token [B], cache)."""
    ones = jnp.ones((token.shape[0], 1), jnp.int32)
    hidden, cache = backbone(model)(token[:, None], ones, cache=cache, use_prompt=False)
    return sample_token(model.logits(hidden[:, 0]), key, **sampling), cache


SAMPLING = ("temperature", "top_k", "top_p")


def decode(model: CausalLM, shared: Array, input_ids: Array, attention_mask: Array, key: Array, *,
           max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
           eos: tuple[int, ...] = (), pad: int = 0) -> Array:
    """The tokens [B, max_new_tokens] that continue left-padded prompts [B, T] after their shared start `shared`
    [1, S] (S may be 0), `pad` after a row's end-of-sequence token: `generate`'s work, traceable (for use inside a
    compiled function, e.g. an evaluation that scores generated text)."""
    sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p}
    total = backbone(model).num_virtual_tokens + shared.shape[1] + input_ids.shape[1] + max_new_tokens
    keys = jax.random.split(key, max_new_tokens)
    first, cache = _first_token(model, shared, input_ids, attention_mask, keys[0], total, sampling)
    is_eos = lambda token: jnp.isin(token, jnp.asarray(eos or (-1,), jnp.int32))  # noqa: E731

    def step(carry, step_key):
        token, cache, done = carry
        nxt, cache = _next_token(model, token, cache, step_key, sampling)
        nxt = jnp.where(done, pad, nxt)
        return (nxt, cache, done | is_eos(nxt)), nxt

    _, rest = jax.lax.scan(step, (first, cache, is_eos(first)), keys[1:])
    return jnp.concatenate([first[:, None], rest.T], axis=1)


@partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", *SAMPLING, "eos", "pad"))
def _generate(graphdef, state, shared, input_ids, attention_mask, key, *, max_new_tokens, temperature, top_k,
              top_p, eos, pad):
    return decode(nnx.merge(graphdef, state), shared, input_ids, attention_mask, key, max_new_tokens=max_new_tokens,
                  temperature=temperature, top_k=top_k, top_p=top_p, eos=eos, pad=pad)


# the same two functions, each compiled on its own, for generation one token at a time
@partial(jax.jit, static_argnames=("graphdef", "total", *SAMPLING))
def _stream_first(graphdef, state, shared, input_ids, attention_mask, key, *, total, **sampling):
    return _first_token(nnx.merge(graphdef, state), shared, input_ids, attention_mask, key, total, sampling)


@partial(jax.jit, static_argnames=("graphdef", *SAMPLING))
def _stream_next(graphdef, state, token, cache, key, **sampling):
    return _next_token(nnx.merge(graphdef, state), token, cache, key, sampling)


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """What every model's generation refuses in one line: no token to write, a negative temperature, a top_k or
    top_p that selects nothing."""
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0:
        raise ConfigError(f"temperature must be at least 0, got {temperature}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ConfigError(f"top_p must be in (0, 1], got {top_p}")
    if top_k is not None and top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {top_k}")


def _check_generation(model: CausalLM, prompt_length: int, max_new_tokens: int, temperature: float, top_k,
                      top_p) -> None:
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    body = backbone(model)
    virtual = body.num_virtual_tokens + body.num_prefix_tokens
    if virtual + prompt_length + max_new_tokens > model.config.max_position_embeddings:
        raise ConfigError(f"prompt of {prompt_length} tokens (+ {virtual} virtual) + {max_new_tokens} new ones "
                         f"exceeds the model's context of {model.config.max_position_embeddings}")


def _eos_and_pad(config, eos_token_ids, pad_token_id) -> tuple[tuple[int, ...], int]:
    eos = tuple(config.eos_token_ids if eos_token_ids is None else eos_token_ids)
    pad = pad_token_id if pad_token_id is not None else config.pad_token_id
    return eos, int(pad if pad is not None else (eos[0] if eos else 0))


def generate(
    model: CausalLM,
    input_ids: Array,
    attention_mask: Array | None = None,
    *,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    eos_token_ids: Sequence[int] | None = None,
    pad_token_id: int | None = None,
) -> Array:
    """Continues left-padded prompts [B, T] with `max_new_tokens` tokens -> [B, max_new_tokens].

    Greedy when `temperature` is 0, otherwise sampled (optionally restricted to the `top_k` tokens or the
    `top_p` probability mass). After a sequence emits an end-of-sequence token (the config's unless given)
    it emits `pad_token_id`. The start that every prompt shares (a chat template's system prompt; see
    `shared_start`) is run once for the batch.
    """
    _check_generation(model, input_ids.shape[1], max_new_tokens, temperature, top_k, top_p)
    eos, pad = _eos_and_pad(model.config, eos_token_ids, pad_token_id)
    if attention_mask is None:
        attention_mask = np.ones(np.shape(input_ids), np.int32)
    graphdef, state = nnx.split(model)
    return _generate(graphdef, state, *_split_shared(input_ids, attention_mask), jax.random.key(seed),
                     max_new_tokens=max_new_tokens, temperature=float(temperature), top_k=top_k, top_p=top_p,
                     eos=eos, pad=pad)


def stream_generate(
    model: CausalLM,
    input_ids: Array,
    attention_mask: Array | None = None,
    *,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    eos_token_ids: Sequence[int] | None = None,
    pad_token_id: int | None = None,
) -> Iterator[np.ndarray]:
    """`generate`, one step at a time: yields each new token [B] as soon as it is chosen, and stops when every
    sequence has ended (or after `max_new_tokens`). The tokens are `generate`'s with the same arguments (the same
    sampling keys); a sequence that has ended yields `pad_token_id`."""
    _check_generation(model, input_ids.shape[1], max_new_tokens, temperature, top_k, top_p)
    eos, pad = _eos_and_pad(model.config, eos_token_ids, pad_token_id)
    if attention_mask is None:
        attention_mask = np.ones(np.shape(input_ids), np.int32)
    graphdef, state = nnx.split(model)
    sampling = {"temperature": float(temperature), "top_k": top_k, "top_p": top_p}
    keys = jax.random.split(jax.random.key(seed), max_new_tokens)
    shared, input_ids, attention_mask = _split_shared(input_ids, attention_mask)
    total = backbone(model).num_virtual_tokens + shared.shape[1] + input_ids.shape[1] + max_new_tokens
    token, cache = _stream_first(graphdef, state, shared, input_ids, attention_mask, keys[0], total=total,
                                 **sampling)
    done = np.zeros(input_ids.shape[0], bool)
    for step in range(max_new_tokens):
        if step:
            token, cache = _stream_next(graphdef, state, token, cache, keys[step], **sampling)
        chosen = np.where(done, pad, np.asarray(token))
        done |= np.isin(chosen, eos)
        yield chosen
        if done.all():
            return
        token = jnp.asarray(chosen, jnp.int32)


TURN_MARKER = "\x00reply\x00"  # stands for a reply's text when a template is rendered to find what follows it


def turn_end_ids(tokenizer) -> tuple[int, ...]:
    """The special token a tokenizer's chat template writes right after an assistant's reply (SmolLM2's
    <|im_end|>, Gemma's <end_of_turn>) as a 1-tuple, or () where it writes none (or there is no template)."""
    if not getattr(tokenizer, "chat_template", None):
        return ()
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": TURN_MARKER}], tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render this conversation names no end
        return ()
    if TURN_MARKER not in text:
        return ()
    after = tokenizer(text[text.rindex(TURN_MARKER) + len(TURN_MARKER):], add_special_tokens=False)["input_ids"]
    added = getattr(tokenizer, "added_tokens_decoder", {})
    # the first token after the reply, if it is a special one ("\n" and other text are not an end)
    return (after[0],) if after and after[0] in added and added[after[0]].special else ()


def reply_ends(model: CausalLM, tokenizer) -> tuple[int, ...]:
    """Where a chat reply ends: the model's end-of-sequence tokens and its template's end of turn (a base model
    taught a turn format ends its replies with the format's end, not with its own end of sequence)."""
    return tuple(dict.fromkeys((*model.config.eos_token_ids, *turn_end_ids(tokenizer))))


def chat(
    model: CausalLM,
    tokenizer,
    conversations: Sequence[Sequence[dict[str, str]]],
    *,
    max_new_tokens: int = 64,
    **sampling,
) -> list[str]:
    """Replies to each conversation (a list of {"role", "content"} messages) through the chat template.

    `tokenizer` is a `transformers` tokenizer with a chat template. A reply ends at the model's end of sequence or
    at the template's end of turn (`reply_ends`), unless `eos_token_ids` says otherwise. Returns the decoded replies.
    """
    prompts = [tokenizer.apply_chat_template(list(c), add_generation_prompt=True, tokenize=False)
               for c in conversations]
    # padded on the left (generation continues the prompts' ends), asked of this call only: the tokenizer may be
    # shared by other threads, which must not see its padding side change
    encoded = tokenizer(prompts, return_tensors="np", padding=True, padding_side="left", add_special_tokens=False)
    sampling.setdefault("eos_token_ids", reply_ends(model, tokenizer))
    tokens = generate(model, encoded["input_ids"], encoded["attention_mask"], max_new_tokens=max_new_tokens,
                      pad_token_id=tokenizer.pad_token_id, **sampling)
    return tokenizer.batch_decode(jax.device_get(tokens), skip_special_tokens=True)


def stream_chat(
    model: CausalLM,
    tokenizer,
    conversation: Sequence[dict[str, str]],
    *,
    max_new_tokens: int = 64,
    **sampling,
) -> Iterator[str]:
    """The reply to one conversation as it is generated: yields the decoded reply so far after each token (the
    last value is `chat`'s reply with the same arguments)."""
    prompt = tokenizer.apply_chat_template(list(conversation), add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    # left-padded to a multiple of PROMPT_STEP: a few compiled shapes serve every prompt (as `chat`'s batches pad)
    width = -(-len(ids) // PROMPT_STEP) * PROMPT_STEP
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = np.asarray([[pad] * (width - len(ids)) + ids], np.int32)
    mask = np.asarray([[0] * (width - len(ids)) + [1] * len(ids)], np.int32)
    tokens: list[int] = []
    sampling.setdefault("eos_token_ids", reply_ends(model, tokenizer))
    for token in stream_generate(model, input_ids, mask, max_new_tokens=max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id, **sampling):
        tokens.append(int(token[0]))
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            yield text
