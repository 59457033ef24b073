"""Questions and passages -> model inputs in windows, and the models' span scores back to answers in the text.

Each question is read with its context as the tokenizer pairs two texts (`[CLS] question [SEP] context [SEP]`,
its token types as the tokenizer gives them; a tokenizer that puts nothing between two texts gets a line break).
A context longer than the window is read in windows of `max_length` tokens that overlap by `stride` tokens
(Hugging Face's `doc_stride`; `tljax.data.windows.window_starts`), each with the whole question. A window's
labels are the positions of the answer's first and last tokens, found from the tokens' character offsets; a
window that does not hold the whole answer, and every window of an unanswerable question, points at position 0
(the null answer).

Predictions are gathered back per question (`best_answers`): in each window the `n_best` highest start and end
scores over the context's tokens give the candidate spans (end not before start, at most `max_answer_length`
tokens); the best candidate over all windows is the answer, its text cut from the context by the tokens'
offsets. The null score is the least start + end score at position 0 over the question's windows; with
`allow_null` (a set with unanswerable questions, SQuAD v2) a question is left unanswered when the null score
exceeds the best span's by more than `null_threshold`, given or chosen on validation data for the best F1
(`choose_null_threshold`, the official SQuAD v2 evaluation's best threshold).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tljax.data.batches import Encoded
from tljax.data.dataset import DataError
from tljax.data.windows import window_starts

MAX_QUESTION_TOKENS = 64  # a longer question is cut (as Hugging Face's run_qa does: max_query_length)


@dataclasses.dataclass(frozen=True)
class PairLayout:
    """The tokens a tokenizer puts around and between two texts, and the token type of each part."""

    lead: tuple[int, ...]
    middle: tuple[int, ...]
    trail: tuple[int, ...]
    first_type: int = 0
    second_type: int = 0

    @classmethod
    def of(cls, tokenizer, first: str = "a", second: str = "b") -> PairLayout:
        """Found by tokenising `first` and `second` alone and as a pair (texts the vocabulary knows, such as a
        question and the start of its context: a tiny vocabulary may not know "a")."""
        bare_a = tokenizer(first, add_special_tokens=False)["input_ids"]
        bare_b = tokenizer(second, add_special_tokens=False)["input_ids"]
        pair = tokenizer(first, second)
        ids, types = pair["input_ids"], pair.get("token_type_ids") or [0] * len(pair["input_ids"])
        for i in range(len(ids)):
            if ids[i: i + len(bare_a)] != bare_a:
                continue
            after = i + len(bare_a)
            for j in range(after, len(ids) - len(bare_b) + 1):
                if ids[j: j + len(bare_b)] == bare_b:
                    middle = tuple(ids[after:j]) or tuple(tokenizer("\n", add_special_tokens=False)["input_ids"])
                    return cls(tuple(ids[:i]), middle, tuple(ids[j + len(bare_b):]), types[i], types[j])
        raise DataError(f"cannot tell how {type(tokenizer).__name__} pairs a question with a context: "
                        f"{first!r}, {second!r} tokenise to {ids}")


@dataclasses.dataclass(frozen=True)
class QuestionWindows:
    """Question / context pairs in windows: what the model reads, and what takes its scores back to the text.

    `encoded`: one row per window (ids; `extras`: `start_positions` / `end_positions` [windows] and the
    `token_type_ids` of each row); `window_of[i]` the question window i reads; `offsets[i]` [len, 2] the
    character span in the context of each position of window i (-1, -1 outside the context)."""

    encoded: Encoded
    window_of: np.ndarray
    offsets: tuple[np.ndarray, ...]
    questions_cut: int = 0  # questions longer than MAX_QUESTION_TOKENS, cut

    def windows_per_question(self) -> np.ndarray:
        return np.bincount(self.window_of, minlength=int(self.window_of.max()) + 1 if len(self.window_of) else 0)


def answer_tokens(offsets: np.ndarray, start: int, end: int) -> tuple[int, int] | None:
    """The first and last positions whose characters lie in the answer at [start, end) (`offsets` [len, 2], -1
    outside the context), or None when the window does not hold the whole answer."""
    inside = np.flatnonzero((offsets[:, 0] >= 0) & (offsets[:, 1] > start) & (offsets[:, 0] < end))
    context = np.flatnonzero(offsets[:, 0] >= 0)
    if not len(inside) or not len(context):
        return None
    first_char, last_char = offsets[context[0], 0], offsets[context[-1], 1]
    if start < first_char or end > last_char:  # the answer runs past the window's context
        return None
    return int(inside[0]), int(inside[-1])


def trimmed(text: str, offsets: Sequence[tuple[int, int]]) -> np.ndarray:
    """Token offsets [tokens, 2] without the spaces a tokenizer counts into a token (SentencePiece's "▁"): an
    answer cut from a span of tokens starts at its first letter."""
    spans = np.asarray(offsets, np.int64).reshape(-1, 2)
    for row in spans:
        while row[0] < row[1] and text[row[0]].isspace():
            row[0] += 1
    return spans


def encode_questions(questions: Sequence[str], contexts: Sequence[str], answers: Sequence[Sequence[tuple[str, int]]]
                     | None, tokenizer, max_length: int, *, stride: int = 64, prefix: str = "") -> QuestionWindows:
    """Tokenises each (question, context) pair into windows of at most `max_length` tokens whose contexts overlap
    by `stride` tokens; `answers[k]` the gold (text, start) of question k (the first is the training target;
    empty: unanswerable), or None to predict."""
    layout = PairLayout.of(tokenizer, " ".join(questions[0].split()[:4]), " ".join(contexts[0].split()[:4])) \
        if questions else PairLayout.of(tokenizer)
    asked = tokenizer([prefix + q for q in questions], add_special_tokens=False, verbose=False)["input_ids"]
    # contexts are read whole, however long (verbose=False: no warning about the model's length)
    read = tokenizer(list(contexts), add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    ids, types, offsets, window_of, starts, ends, cut = [], [], [], [], [], [], 0
    for k, (question, context_ids, context_offsets) in enumerate(zip(asked, read["input_ids"],
                                                                      read["offset_mapping"])):
        if len(question) > MAX_QUESTION_TOKENS:
            question, cut = question[:MAX_QUESTION_TOKENS], cut + 1
        head = [*layout.lead, *question, *layout.middle]
        capacity = max_length - len(head) - len(layout.trail)
        if capacity < 8:
            raise DataError(f"max_length {max_length} leaves {capacity} tokens of context after the question and the "
                            "special tokens; raise data.max_length")
        overlap = min(stride, capacity // 2)
        spans = trimmed(contexts[k], context_offsets)
        target = answers[k][0] if answers is not None and answers[k] else None
        for start in window_starts(len(context_ids), capacity, overlap):
            end = min(start + capacity, len(context_ids))
            row = np.asarray([*head, *context_ids[start:end], *layout.trail], np.int32)
            place = np.full((len(row), 2), -1, np.int64)
            place[len(head): len(head) + end - start] = spans[start:end]
            kinds = np.full(len(row), layout.second_type, np.int32)
            kinds[: len(head)] = layout.first_type
            position = None if target is None else answer_tokens(place, target[1], target[1] + len(target[0]))
            ids.append(row)
            types.append(kinds)
            offsets.append(place)
            window_of.append(k)
            starts.append(position[0] if position else 0)
            ends.append(position[1] if position else 0)
    encoded = Encoded(tuple(ids), np.zeros(len(ids), np.int32), truncated=0,
                      extras={"start_positions": np.asarray(starts, np.int32),
                              "end_positions": np.asarray(ends, np.int32), "token_type_ids": tuple(types)})
    return QuestionWindows(encoded, np.asarray(window_of, np.int64), tuple(offsets), cut)


@dataclasses.dataclass(frozen=True)
class Prediction:
    """A question's answer: its text and character span in the context ("" and (-1, -1): no answer), the span's
    score (start + end), the null score, and the span's probability within its window."""

    text: str
    start: int
    end: int
    score: float
    null_score: float
    probability: float

    @property
    def answered(self) -> bool:
        return self.start >= 0


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max()
    return shifted - np.log(np.exp(shifted).sum())


def best_answers(windows: QuestionWindows, contexts: Sequence[str], start_scores: Sequence[np.ndarray],
                 end_scores: Sequence[np.ndarray], *, n_best: int = 20, max_answer_length: int = 30,
                 allow_null: bool = False, null_threshold: float = 0.0) -> list[Prediction]:
    """The answer to each question from its windows' start and end scores ([len] per window, the window's own
    positions) as the module's docstring says."""
    found: list[Prediction | None] = [None] * len(contexts)
    nulls = np.full(len(contexts), np.inf)
    for w, (starts, ends) in enumerate(zip(start_scores, end_scores)):
        k, place = int(windows.window_of[w]), windows.offsets[w]
        starts, ends = np.asarray(starts, np.float64), np.asarray(ends, np.float64)
        nulls[k] = min(nulls[k], starts[0] + ends[0])
        context = np.flatnonzero(place[: len(starts), 0] >= 0)
        if not len(context):
            continue
        top_starts = context[np.argsort(-starts[context], kind="stable")[:n_best]]
        top_ends = context[np.argsort(-ends[context], kind="stable")[:n_best]]
        log_p_start, log_p_end = _log_softmax(starts), _log_softmax(ends)
        for s in top_starts:
            for e in top_ends:
                if e < s or e - s + 1 > max_answer_length:
                    continue
                score = starts[s] + ends[e]
                if found[k] is None or score > found[k].score:
                    a, b = int(place[s, 0]), int(place[e, 1])
                    found[k] = Prediction(contexts[k][a:b], a, b, float(score), 0.0,
                                          float(np.exp(log_p_start[s] + log_p_end[e])))
    result = []
    for k, prediction in enumerate(found):
        null = float(nulls[k]) if np.isfinite(nulls[k]) else 0.0
        if prediction is None or (allow_null and null - prediction.score > null_threshold):
            best = prediction.score if prediction else float("-inf")
            result.append(Prediction("", -1, -1, best, null, 0.0))
        else:
            result.append(dataclasses.replace(prediction, null_score=null))
    return result


@dataclasses.dataclass(frozen=True)
class AnswerSettings:
    """How span scores become answers (the run's `data` section; recorded with the export)."""

    stride: int = 64
    n_best_size: int = 20
    max_answer_length: int = 30
    allow_null: bool = False  # the training data has unanswerable questions (SQuAD v2): answer none when
    null_score_diff_threshold: float = 0.0  # the null score beats the best span's by more than this
    # "config": the threshold as given; "validation": chosen to maximise F1 on the validation split (`auto`)
    threshold_source: str = "config"


def window_outputs(forward: Callable[[dict], Any], batches: list[dict], encoded: Encoded) -> list[np.ndarray]:
    """`forward`'s outputs for each window of `encoded` ([len, ...] each, its own positions), over `batches`
    (`evaluation_batches`: every window once, shortest first)."""
    lengths = [len(x) for x in encoded.ids]
    order = np.argsort(lengths, kind="stable")
    outputs: list[Any] = [None] * len(lengths)
    start = 0
    for batch in batches:
        values = np.asarray(forward(batch), np.float64)
        rows = order[start: start + len(values)][: int((batch["weights"] > 0).sum())]
        for row, window in enumerate(rows):
            outputs[window] = values[row, : lengths[window]]
        start += len(values)
    return outputs



def choose_null_threshold(predictions: Sequence[Prediction], golds: Sequence[Sequence[str]]) -> tuple[float, float]:
    """(threshold, F1): the `null_score_diff_threshold` that maximises SQuAD F1 over questions whose best spans are
    `predictions` (found with `allow_null=False`, each with its null score) and whose gold answers are `golds` (as
    the official SQuAD v2 evaluation's best_f1_thresh). A question is left unanswered when its null score exceeds
    its best span's by more than the threshold; of equally good thresholds, the one nearest 0."""
    from tljax.squad import question_scores

    margins = np.asarray([p.null_score - p.score for p in predictions], np.float64)
    answered = np.asarray([question_scores(p.text, g)[1] for p, g in zip(predictions, golds)])
    unanswered = np.asarray([question_scores("", g)[1] for g in golds])
    # a threshold at each margin leaves that question and every one with a smaller margin unanswered...
    candidates = np.unique(np.concatenate([margins, [margins.min() - 1.0] if len(margins) else [0.0]]))
    scores = [np.where(margins > t, unanswered, answered).mean() if len(margins) else 0.0 for t in candidates]
    best = max(scores) if scores else 0.0
    chosen = min((t for t, f in zip(candidates, scores) if f == best), key=abs, default=0.0)
    return float(chosen), float(best)


def answer_questions(windows: QuestionWindows, contexts: Sequence[str], scores: Sequence[np.ndarray],
                     settings: AnswerSettings) -> list[Prediction]:
    """The answer to every question from its windows' span scores ([len, 2] each), as `settings` say."""
    return best_answers(windows, contexts, [s[:, 0] for s in scores], [s[:, 1] for s in scores],
                        n_best=settings.n_best_size, max_answer_length=settings.max_answer_length,
                        allow_null=settings.allow_null, null_threshold=settings.null_score_diff_threshold)
