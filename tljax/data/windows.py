"""Words -> sub-word tokens -> model inputs, and back: label alignment, overlapping windows, and the
mapping of predictions to words and to character spans of the original text.

A text is tokenised once with the tokenizer's character offsets (no special tokens); each token belongs to the
first word its characters overlap. The first token of a word carries the word's tag; the word's other tokens
are ignored by the loss (label -100), or, with `label_all_subtokens`, carry its tag as a continuation (`B-X`
becomes `I-X`). A text longer than the model reads is never cut: it is read in windows of the model's length
that overlap by `stride` tokens, each framed by the tokenizer's special tokens (and the run's text prefix). A
word is predicted in the window where its first token sits furthest from the edges (the most context on both
sides). A word the tokenizer merged into the previous word's token (no token of its own starts in it) takes
that token's prediction, as a continuation of its entity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tljax.data.batches import Encoded
from tljax.data.dataset import DataError
from tljax.tagging import OUTSIDE, split_tag, viterbi

IGNORED = -100  # the label of a position no loss or metric reads
NO_TOKEN = -2  # a word with no token at all (the tokenizer dropped its characters): predicted O


@dataclasses.dataclass(frozen=True)
class Layout:
    """The special tokens a tokenizer puts before and after a text ([CLS] / [SEP], <s> / </s>, a BOS)."""

    lead: tuple[int, ...]
    trail: tuple[int, ...]

    @classmethod
    def of(cls, tokenizer) -> Layout:
        framed = tokenizer("a")["input_ids"]
        bare = tokenizer("a", add_special_tokens=False)["input_ids"]
        for k in range(len(framed) - len(bare) + 1):
            if framed[k: k + len(bare)] == bare:
                return cls(tuple(framed[:k]), tuple(framed[k + len(bare):]))
        raise DataError(f"cannot tell the special tokens of {type(tokenizer).__name__}: 'a' tokenises to {bare} "
                        f"alone and to {framed} with its special tokens")


def window_starts(length: int, capacity: int, stride: int) -> list[int]:
    """The first token of each window over `length` tokens, `capacity` per window, consecutive windows sharing
    `stride` tokens (one window when the text fits)."""
    starts = [0]
    while starts[-1] + capacity < length:
        starts.append(starts[-1] + capacity - stride)
    return starts


def token_words(offsets: Sequence[tuple[int, int]], words: Sequence[tuple[int, int]]) -> np.ndarray:
    """[tokens]: the word each token belongs to (the first word its characters overlap), -1 for none (e.g. a
    token of only spaces)."""
    owner = np.full(len(offsets), -1, np.int64)
    w = 0
    for t, (start, end) in enumerate(offsets):
        while w < len(words) and words[w][1] <= start:
            w += 1
        if w < len(words) and words[w][0] < end and start < words[w][1]:
            owner[t] = w
    return owner


def followers(offsets: Sequence[tuple[int, int]], words: Sequence[tuple[int, int]],
              word_of_token: np.ndarray) -> np.ndarray:
    """[words]: -1 for a word whose own token starts in it; otherwise the word whose token covers its start (it
    is predicted as that word's continuation), or `NO_TOKEN`."""
    result = np.full(len(words), NO_TOKEN, np.int64)
    result[np.unique(word_of_token[word_of_token >= 0])] = -1
    for w in np.flatnonzero(result == NO_TOKEN):
        start = words[w][0]
        covering = [t for t, (a, b) in enumerate(offsets) if a <= start < b and 0 <= word_of_token[t] < w]
        if covering:
            result[w] = word_of_token[covering[0]]
    return result


@dataclasses.dataclass(frozen=True)
class WordWindows:
    """Tokenised texts in windows: the model's inputs, and what takes predictions back to words.

    `encoded` holds one row per window (ids with special tokens; labels per token, -100 where ignored);
    `window_of[i]` the text it reads; `owned[i]` [len] the word each position predicts (-1: none; every
    word is owned by one position of one window); `followers[k]` [words of text k] (see `followers`);
    `firsts[i]` [len] the word each position is the first token of, in every window it appears in (-1: none)."""

    encoded: Encoded
    window_of: np.ndarray  # [windows] the text of each window
    owned: tuple[np.ndarray, ...]
    followers: tuple[np.ndarray, ...]
    word_counts: tuple[int, ...]
    firsts: tuple[np.ndarray, ...] = ()  # per window [len]: the word whose first token each position is, else -1

    def word_scores(self, window_scores: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per-position scores of each window ([len, C] each) -> per word of each text ([words, C]; a word
        without a position of its own gets its follower source's, and NaN for none)."""
        width = window_scores[0].shape[-1]
        result = [np.full((n, width), np.nan) for n in self.word_counts]
        for window, scores in enumerate(window_scores):
            owned = self.owned[window]
            positions = np.flatnonzero(owned >= 0)
            result[self.window_of[window]][owned[positions]] = scores[positions]
        return result


def encode_words(texts: Sequence[str], words: Sequence[Sequence[tuple[int, int]]],
                 tag_ids: Sequence[Sequence[int]] | None, tokenizer, max_length: int, *, prefix: str = "",
                 stride: int = 32, continuation: Sequence[int] | None = None) -> WordWindows:
    """Tokenises `texts` (words at character spans `words`, tags `tag_ids` per word, or None to predict) into
    windows of at most `max_length` tokens overlapping by `stride`. `continuation[tag]` is the tag the other
    tokens of a word carry (`label_all_subtokens`); None leaves them out of the loss (-100)."""
    layout = Layout.of(tokenizer)
    prefix_ids = tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    head = [*layout.lead, *prefix_ids]
    capacity = max_length - len(head) - len(layout.trail)
    if capacity < 2:
        raise DataError(f"max_length {max_length} leaves {capacity} tokens for text after the special tokens and "
                        f"the text prefix; raise data.max_length")
    stride = min(stride, capacity // 2)
    tokenised = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    ids, labels, owned, window_of, follow, firsts = [], [], [], [], [], []
    for k, (text_ids, offsets) in enumerate(zip(tokenised["input_ids"], tokenised["offset_mapping"])):
        word_of_token = token_words(offsets, words[k])
        follow.append(followers(offsets, words[k], word_of_token))
        first = np.full(len(words[k]), -1, np.int64)  # the first token of each word
        for t in range(len(text_ids) - 1, -1, -1):
            if word_of_token[t] >= 0:
                first[word_of_token[t]] = t
        token_labels = np.full(len(text_ids), IGNORED, np.int64)
        if tag_ids is not None:
            for t, w in enumerate(word_of_token):
                if w >= 0 and first[w] == t:
                    token_labels[t] = tag_ids[k][w]
                elif w >= 0 and continuation is not None:
                    token_labels[t] = continuation[tag_ids[k][w]]
        starts = window_starts(len(text_ids), capacity, stride)
        best = np.full(len(words[k]), -1, np.int64)  # the window that predicts each word
        margin = np.full(len(words[k]), -1, np.int64)
        for n, start in enumerate(starts):
            end = min(start + capacity, len(text_ids))
            for w in np.flatnonzero((first >= start) & (first < end)):
                room = min(first[w] - start, end - 1 - first[w])
                if room > margin[w]:
                    best[w], margin[w] = n, room
        for n, start in enumerate(starts):
            end = min(start + capacity, len(text_ids))
            frame = np.full(len(head) + end - start + len(layout.trail), -1, np.int64)
            mine = np.flatnonzero(best == n)
            frame[len(head) + first[mine] - start] = mine
            starting = np.full_like(frame, -1)
            inside = np.flatnonzero((first >= start) & (first < end))
            starting[len(head) + first[inside] - start] = inside
            firsts.append(starting)
            ids.append(np.asarray([*head, *text_ids[start:end], *layout.trail], np.int32))
            labels.append(np.concatenate([np.full(len(head), IGNORED), token_labels[start:end],
                                          np.full(len(layout.trail), IGNORED)]).astype(np.int32))
            owned.append(frame)
            window_of.append(k)
    encoded = Encoded(tuple(ids), tuple(labels), truncated=0)
    return WordWindows(encoded, np.asarray(window_of, np.int64), tuple(owned), tuple(follow),
                       tuple(len(w) for w in words), tuple(firsts))


def continuation_tags(tag_names: Sequence[str]) -> list[int]:
    """For each tag, the tag a word's later sub-tokens carry: I-X for B-X, itself otherwise."""
    index = {name: i for i, name in enumerate(tag_names)}
    result = []
    for name in tag_names:
        prefix, label = split_tag(name)
        result.append(index.get(f"I-{label}", index[name]) if prefix == "B" else index[name])
    return result


def word_tags(scores: np.ndarray, follow: np.ndarray, tag_names: Sequence[str],
              crf: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> list[str]:
    """The tag of each word of one text from its words' scores [words, C] (`WordWindows.word_scores`): the
    best-scoring tag of each word, or with `crf` (start, end, transitions) the best-scoring path over the words
    that have a token of their own (Viterbi); a word without a token of its own continues its source word's
    entity."""
    own = np.flatnonzero(follow == -1)
    best = {}
    if crf is not None and len(own):
        best = dict(zip(own.tolist(), viterbi(scores[own], *crf)))
    tags = []
    for w, row in enumerate(scores):
        if follow[w] == -1:
            tags.append(tag_names[best[w] if w in best else int(np.argmax(row))])
        elif follow[w] == NO_TOKEN or tags[follow[w]] == OUTSIDE:
            tags.append(OUTSIDE)
        else:
            tags.append(f"I-{split_tag(tags[follow[w]])[1]}")
    return tags


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def score_words(forward: Callable[[dict], Any], batches: list[dict], windows: WordWindows, *,
                log_softmax: bool = True) -> list[np.ndarray]:
    """Log-probabilities of every tag for every word of every text ([words, L] each), from `forward`'s logits
    over `batches` (`evaluation_batches` of `windows.encoded`: every window once, shortest first);
    `log_softmax=False`: `forward`'s own outputs per word (e.g. hidden states [words, H])."""
    lengths = [len(x) for x in windows.encoded.ids]
    order = np.argsort(lengths, kind="stable")  # the order evaluation_batches takes the rows in
    window_scores: list[Any] = [None] * len(lengths)
    start = 0
    for batch in batches:
        logits = np.asarray(forward(batch), np.float64)
        rows = order[start: start + len(logits)]
        rows = rows[: int((batch["weights"] > 0).sum())]
        for row, window in enumerate(rows):
            values = logits[row, : lengths[window]]
            window_scores[window] = _log_softmax(values) if log_softmax else values
        start += len(logits)
    return windows.word_scores(window_scores)
