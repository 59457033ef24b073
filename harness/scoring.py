"""Log-likelihood scoring on a decoder: how likely each answer is as the continuation of a prompt.

The context / continuation split follows EleutherAI's lm-evaluation-harness exactly (`tljax.data.chat.encode_pair`):
trailing spaces of the context move into the continuation, context + continuation are tokenised together and cut
at the length of the tokenised context (so a continuation that merges with the end of the context in the
tokenizer is scored as that harness scores it). Special tokens as that harness's `HFLM` adds them: none for a chat
prompt here (its template writes its own); for a plain prompt the tokenizer's own (e.g. Llama-2's BOS, nothing for
SmolLM2), unless the context already starts with the BOS text (`plain_pair`). Each item's context is run once: its
keys and values are cached, and every answer's tokens are scored against that cache in one batch. The tokens that
every context of a call starts with (a chat template's system prompt, a shared instruction: 47 of SmolLM2's 77 on
average for the sentiment task's zero-shot prompt) are run once per batch, and their keys and values are shared
by its rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tljax.data.chat import encode_pairs
from tljax.errors import InputError
from tljax.models import KVCache
from tljax.models.decoder.modeling import shared_start
from tljax.models.transforms import CallShapes, ProgramCost, backbone, typical_cost

# answer rows (items x answers) per batch: bounds the [rows, answer tokens, vocabulary] logits
ROWS_PER_BATCH = 64
PREFIX_STEP = 32  # prompt lengths are padded to multiples of this: a few compiled shapes, little padding
# prompt tokens per batch (rows x (shared + padded length)): long prompts go in fewer rows, halved until they fit,
# so that the activations stay bounded (32 reviews of 2,500 tokens took over 24 GB in one batch)
PROMPT_TOKENS_PER_BATCH = 8192


def plain_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) of a plain prompt, as lm-eval's `HFLM.loglikelihood` encodes them: the
    tokenizer's own special tokens (`encode`'s default), none where the context already starts with the text
    of the prefix token (BOS, else EOS); an empty context is that prefix token."""
    prefix_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if context == "":
        ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        return ([prefix_id], ids) if prefix_id is not None and ids[:1] != [prefix_id] else (ids[:1], ids[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    special = prefix_id is None or not context.startswith(tokenizer.decode(prefix_id))
    whole = tokenizer(context + continuation, add_special_tokens=special)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=special)["input_ids"]
    return context_ids, whole[len(context_ids):]


@dataclasses.dataclass(frozen=True)
class Scores:
    """Per item and answer: the summed log-probability [N, L], and whether greedy decoding gives it [N, L]."""

    logprob: np.ndarray
    greedy: np.ndarray


def _score_fn(graphdef, scan_layers: bool = True):
    @jax.jit
    def score(state, prefix, prefix_mask, shared, answers, answer_mask):
        """prefix [B, P] (each row's own context tokens, left-padded) after shared [1, S] (the tokens every row's
        context starts with; S may be 0), answers [B, L, C] (right-padded) -> (log-prob sums, greedy) [B, L]."""
        model = nnx.merge(graphdef, state)
        body = backbone(model)
        batch, labels, width = answers.shape
        size = body.num_virtual_tokens + shared.shape[1] + prefix.shape[1] + width
        # the shared start run once (padding then sits between it and a row's own tokens); scan_layers: one layer
        # to compile
        hidden, cache = body.after_shared_start(shared, prefix, prefix_mask, size, scan_layers=scan_layers)
        first = jax.nn.log_softmax(model.logits(hidden[:, -1]))  # [B, V]: the answers' first token
        repeat = lambda x: jnp.repeat(x, labels, axis=0)  # noqa: E731 - one copy of the cache per answer
        cache = KVCache(tuple(map(repeat, cache.keys)), tuple(map(repeat, cache.values)), repeat(cache.mask),
                        cache.index)
        ids, mask = answers.reshape(batch * labels, width), answer_mask.reshape(batch * labels, width)
        hidden, _ = body(ids, mask, cache=cache, use_prompt=False, scan_layers=scan_layers)
        rest = jax.nn.log_softmax(model.logits(hidden[:, :-1]))  # [B * L, C - 1, V]: the answers' next tokens
        predicted = jnp.concatenate([repeat(first)[:, None], rest], axis=1)  # [B * L, C, V]
        token = jnp.take_along_axis(predicted, ids[..., None], axis=-1)[..., 0]
        real = mask.astype(bool)
        sums = jnp.where(real, token, 0.0).sum(-1).reshape(batch, labels)
        greedy = ((jnp.argmax(predicted, -1) == ids) | ~real).all(-1).reshape(batch, labels)
        return sums, greedy

    return score


class DecoderScorer:
    """Scores answers after contexts with a causal LM (`LlamaForCausalLM`, any method applied)."""

    def __init__(self, model: nnx.Module, tokenizer, pad_id: int | None = None):
        self.tokenizer = tokenizer
        self.pad_id = pad_id if pad_id is not None else (tokenizer.pad_token_id or 0)
        graphdef, state = nnx.split(model)
        self._state = jax.device_put(state)
        self._score = _score_fn(graphdef)
        self._unrolled = _score_fn(graphdef, scan_layers=False)  # only lowered, for FLOPs (see program_cost)
        self.shapes = CallShapes()

    def typical_cost(self) -> tuple[ProgramCost, int] | None:
        """(compiled cost, items of its batch) of the median batch scored so far."""
        return typical_cost(self._score, self._state, self.shapes, flops_of=self._unrolled)

    def __call__(self, requests: Sequence[tuple[str, Sequence[str]]], *, plain: bool = False) -> Scores:
        """`requests`: (context, answers) per item, every item with the same number of answers. `plain`: the
        contexts are plain prompts (tokenised with the tokenizer's special tokens, `plain_pair`), not chat ones."""
        flat = [(context, answer) for context, answers in requests for answer in answers]
        split = [plain_pair(self.tokenizer, c, a) for c, a in flat] if plain else encode_pairs(self.tokenizer, flat)
        encoded, used = [], 0
        for context, answers in requests:
            pairs, used = split[used: used + len(answers)], used + len(answers)
            empty = [answer for answer, (_, ids) in zip(answers, pairs) if not ids]
            if empty:
                raise InputError(f"the answers {empty} leave no token of their own after {context[-40:]!r} (the "
                                 "tokenizer merges them into the prompt); choose verbalisers or a prompt end that "
                                 "do not merge")
            encoded.append((pairs[0][0], [ids for _, ids in pairs]))
        labels = len(encoded[0][1]) if encoded else 0
        logprob, greedy = np.zeros((len(requests), labels), np.float32), np.zeros((len(requests), labels), bool)
        common = shared_start([prefix for prefix, _ in encoded])
        shared = np.asarray([encoded[0][0][:common] if encoded else []], np.int32)  # [1, S]
        encoded = [(prefix[common:], answers) for prefix, answers in encoded]
        order = np.argsort([len(prefix) for prefix, _ in encoded], kind="stable")
        widest = max((len(ids) for _, answers in encoded for ids in answers), default=1)
        width = widest + widest % 2  # answers padded to an even length: few shapes, little padding
        # items per batch (each is `labels` answer rows), no more than there are, in powers of two: few shapes
        per_batch = min(max(1, ROWS_PER_BATCH // max(labels, 1)), 1 << max(len(requests) - 1, 0).bit_length())
        start, full = 0, per_batch
        while start < len(order):
            per_batch = full
            while True:  # the shortest prompts first (`order`): a batch's longest is its last
                rows = order[start: start + per_batch].tolist()
                length = -(-len(encoded[rows[-1]][0]) // PREFIX_STEP) * PREFIX_STEP  # a multiple of PREFIX_STEP
                if per_batch == 1 or per_batch * (common + length) <= PROMPT_TOKENS_PER_BATCH:
                    break
                per_batch //= 2
            start += len(rows)
            prefix = np.full((per_batch, length), self.pad_id, np.int32)
            prefix_mask = np.zeros((per_batch, length), np.int32)
            answers = np.full((per_batch, labels, width), self.pad_id, np.int32)
            answer_mask = np.zeros((per_batch, labels, width), np.int32)
            for row, index in enumerate(rows):
                ids, options = encoded[index]
                prefix[row, length - len(ids):], prefix_mask[row, length - len(ids):] = ids, 1
                for label, tokens in enumerate(options):
                    answers[row, label, : len(tokens)], answer_mask[row, label, : len(tokens)] = tokens, 1
            for row in range(len(rows), per_batch):  # padding rows: one real token, so attention has a key
                prefix_mask[row, -1] = 1
            self.shapes.record(prefix, prefix_mask, shared, answers, answer_mask)
            sums, hits = self._score(self._state, prefix, prefix_mask, shared, answers, answer_mask)
            logprob[rows], greedy[rows] = np.asarray(sums)[: len(rows)], np.asarray(hits)[: len(rows)]
        return Scores(logprob, greedy)
