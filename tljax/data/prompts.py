"""A model's prompt for a text-to-text task: the input in a fixed form, after which the model writes the output.

Two forms (`PromptForm`) for a decoder, which writes the output after the prompt:

- plain: `prefix + input + separator` after the tokenizer's start tokens (a Llama tokenizer's BOS), e.g.
  "translate English to Portuguese: The film was good.\n";
- chat: `prefix + input` as the user's message in the tokenizer's chat template, up to where the assistant's
  reply begins (`tljax.data.chat.chat_context`).

An encoder-decoder's encoder reads the prompt alone (`source=True`): `prefix + input` tokenised as the tokenizer
tokenises a text, its own special tokens around it (T5's `</s>` after it), no separator, e.g.
"translate English to Portuguese: The film was good.</s>"; the decoder writes the output apart.

The output is tokenised on its own and ends with the tokenizer's end-of-sequence token, so that what the model
is taught to write after the prompt is exactly what generation reads back. Training, evaluation and
`tljax.predict` build prompts here, so a trained run is asked in the form it was taught.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from tljax.data.chat import chat_context
from tljax.data.dataset import DataError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PromptForm:
    """How an input becomes a prompt: `form` (plain | chat), the task's `prefix`, and the plain form's
    `separator` between the input and the output; `source`: an encoder-decoder's input (plain, no separator, the
    tokenizer's end tokens after it)."""

    form: str = "plain"
    prefix: str = ""
    separator: str = "\n"
    source: bool = False

    def context(self, tokenizer, text: str) -> str:
        """The prompt's text (without the plain form's start and end tokens)."""
        if self.form == "chat":
            return chat_context(tokenizer, [{"role": "user", "content": self.prefix + text}])
        return self.prefix + text + ("" if self.source else self.separator)

    def ids(self, tokenizer, texts: Sequence[str]) -> list[list[int]]:
        """The prompt's token ids of each text."""
        head = [] if self.form == "chat" else start_tokens(tokenizer)
        tail = end_tokens(tokenizer) if self.source else []
        contexts = [self.context(tokenizer, text) for text in texts]
        if not contexts:
            return []
        return [head + ids + tail for ids in tokenizer(contexts, add_special_tokens=False, verbose=False)["input_ids"]]


def start_tokens(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts before a text (a Llama tokenizer's BOS; none for GPT-2's)."""
    plain = tokenizer("hello", add_special_tokens=False)["input_ids"]
    full = tokenizer("hello", add_special_tokens=True)["input_ids"]
    return next((full[:i] for i in range(len(full) - len(plain) + 1) if full[i: i + len(plain)] == plain), [])


def end_tokens(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts after a text (T5's `</s>`, BERT's [SEP]; none for Llama's)."""
    plain = tokenizer("hello", add_special_tokens=False)["input_ids"]
    full = tokenizer("hello", add_special_tokens=True)["input_ids"]
    after = len(start_tokens(tokenizer)) + len(plain)
    return full[after:] if full[after - len(plain): after] == plain else []


def end_token(tokenizer) -> int:
    """The token that ends every output (the tokenizer's end of sequence; a chat model's end of turn)."""
    if tokenizer.eos_token_id is None:
        raise DataError("the model's tokenizer has no end-of-sequence token, so an output could not end; use a "
                        "model whose tokenizer has one (eos_token)")
    return int(tokenizer.eos_token_id)


def fit_prompts(form: PromptForm, tokenizer, texts: Sequence[str], budget: int) -> tuple[list[list[int]], int]:
    """(the prompt ids of each text, at most `budget` tokens each; how many inputs were cut to fit). A long
    input loses its end, never the form around it (the template, the prefix, the separator)."""
    prompts, cut = form.ids(tokenizer, texts), 0
    for row, ids in enumerate(prompts):
        if len(ids) <= budget:
            continue
        cut += 1
        own = tokenizer(texts[row], add_special_tokens=False, verbose=False)["input_ids"]
        keep = len(own) - (len(ids) - budget)
        while True:  # decoding and encoding again may merge or split a token at the cut: shorten until it fits
            if keep < 1:
                raise DataError(f"data.max_length leaves no room for input {row + 1}'s text in the prompt "
                                f"({len(ids) - len(own)} tokens of form, {budget} allowed); raise data.max_length or "
                                "lower data.max_target_length")
            ids = form.ids(tokenizer, [tokenizer.decode(own[:keep]).rstrip()])[0]
            if len(ids) <= budget:
                break
            keep -= max(1, len(ids) - budget)
        prompts[row] = ids
    return prompts, cut


def target_ids(tokenizer, targets: Sequence[str], max_target_length: int) -> tuple[list[list[int]], int]:
    """(each target's token ids, cut to `max_target_length`, then the end token; how many were cut)."""
    end = end_token(tokenizer)
    encoded = tokenizer(list(targets), add_special_tokens=False, verbose=False)["input_ids"] if targets else []
    cut = sum(len(ids) > max_target_length for ids in encoded)
    return [ids[:max_target_length] + [end] for ids in encoded], cut


def output_text(tokenizer, tokens: np.ndarray, ends: Sequence[int]) -> str:
    """The text of generated `tokens` [N] up to the first end token (special tokens dropped, spaces trimmed)."""
    tokens = [int(t) for t in tokens]
    stop = next((i for i, t in enumerate(tokens) if t in ends), len(tokens))
    return tokenizer.decode(tokens[:stop], skip_special_tokens=True).strip()


__all__ = ["PromptForm", "end_token", "end_tokens", "fit_prompts", "output_text", "start_tokens", "target_ids"]
