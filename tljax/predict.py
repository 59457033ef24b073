"""`python -m tljax.predict RUN_DIR "some text" ...`: what a trained run says about each text.

RUN_DIR is a finished run (`python -m tljax.train`) or its export directory. A sequence classifier prints
one line per text: the label, every label's probability, the text. A token classifier (named entities) prints
each text's entities, one per line: the type, the character span in the text, the score (the mean probability
of its words' tags) and the words; `--json` prints them as JSON for programs. Put `--` before the texts when
one starts with `-`.

A chat-tuned decoder (`task: causal-lm` with `chat`) classifies as a sequence classifier does: each text is asked
with the run's instruction in the chat form it was taught (its template: the base's own, or `chat.template`), and
every label's reply is scored by its log-likelihood.

A seq2seq run prints the output it writes for each text, one per line (`--task NAME` in a multi-task run: the
task whose prefix goes before the text).

A question-answering run takes `--question "..." --context "..."` (the context as text, or `--context-file
FILE`; several --question arguments ask the same context several things) and prints each answer, its character
span in the context and its probability, or that the context does not answer the question.

In Python: `load_predictor(RUN_DIR)(["some text"])` (a `Predictor` or an `EntityTagger`), or
`load_predictor(RUN_DIR)(questions, contexts)` (an `AnswerFinder`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from tljax.cache import enable_compilation_cache
from tljax.data.answer_windows import AnswerSettings, answer_questions, encode_questions, window_outputs
from tljax.data.batches import Encoded, encode, evaluation_batches, make_batch
from tljax.data.dataset import TextDataset
from tljax.data.prompts import PromptForm, end_token, fit_prompts, output_text
from tljax.data.tagged import word_spans
from tljax.data.windows import encode_words, score_words, word_tags
from tljax.errors import InputError
from tljax.models.decoder.generate import generate
from tljax.models.transforms import jit_bound
from tljax.runs import RunInfo, find_export, load_exported
from tljax.tagging import entities
from tljax.train.chat import encode_chat
from tljax.train.config import ChatConfig

DEFAULT_STRIDE = 32  # the overlap of the windows a text longer than the model reads is tagged in


class Predictor:
    """A trained run's export, ready to classify texts."""

    def __init__(self, model, tokenizer, info: RunInfo):
        self.tokenizer, self.info = tokenizer, info
        self.labels = list(info.labels)
        self.probabilities = jit_bound(model, lambda m, ids, mask: jax.nn.softmax(m(ids, mask), -1))

    @classmethod
    def load(cls, run_dir: str | Path) -> Predictor:
        """The classifier of a finished run (its directory, or its export directory)."""
        predictor = load_predictor(run_dir)
        if not isinstance(predictor, cls):
            raise InputError(f"{run_dir} is a {predictor.info.task} run, not a sequence classifier")
        return predictor

    def __call__(self, texts: list[str], batch_size: int = 32) -> list[tuple[str, dict[str, float]]]:
        """(label, {label: probability}) for each text."""
        check_texts_to_classify(texts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        encoded = encode(texts, [0] * len(texts), self.tokenizer, self.info.max_length, self.info.text_prefix)
        order = np.argsort([len(x) for x in encoded.ids], kind="stable")
        probabilities = np.zeros((len(texts), len(self.labels)))
        for start, batch in zip(range(0, len(texts), batch_size),
                                evaluation_batches(encoded, batch_size, pad, self.info.max_length)):
            rows = order[start: start + batch_size]
            p = self.probabilities(batch["input_ids"], batch["attention_mask"])
            probabilities[rows] = np.asarray(p)[: len(rows)]
        return [(self.labels[int(p.argmax())], dict(zip(self.labels, map(float, p)))) for p in probabilities]


class ChatClassifier:
    """A chat-tuned decoder's export, ready to classify texts in the form it was taught: each text asked with the
    run's instruction through its chat template, every label's reply (as the run taught it: its word, and a taught
    format's end of turn) scored by its summed log-probability, as the run's own evaluation scores it."""

    def __init__(self, model, tokenizer, info: RunInfo):
        self.tokenizer, self.info = tokenizer, info
        self.labels = list(info.labels)
        known = {field.name for field in dataclasses.fields(ChatConfig)}
        self.settings = ChatConfig(**{k: v for k, v in (info.chat or {}).items() if k in known})
        self.reply_log_probs = jit_bound(model, _reply_log_probs)

    def __call__(self, texts: list[str], batch_size: int = 16) -> list[tuple[str, dict[str, float]]]:
        """(label, {label: probability}) for each text: the softmax of the labels' reply log-probabilities."""
        check_texts_to_classify(texts)
        dataset = TextDataset("texts", tuple(texts), (0,) * len(texts), tuple(self.labels))
        rows = encode_chat(dataset, self.settings, self.tokenizer, self.info.max_length)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        scores = np.zeros((len(texts), len(self.labels)))
        for batch in evaluation_batches(rows, batch_size, pad, self.info.max_length):
            real = batch["weights"] > 0
            values = np.asarray(self.reply_log_probs(batch["input_ids"], batch["attention_mask"],
                                                     *_reply_positions(batch)), np.float64)
            scores[batch["example"][real], batch["label"][real]] = values[real]
        probabilities = np.exp(scores - np.logaddexp.reduce(scores, axis=1, keepdims=True))
        return [(self.labels[int(p.argmax())], dict(zip(self.labels, map(float, p)))) for p in probabilities]


def _reply_positions(batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(the position predicting each reply token [B, R], that token's id [B, R], whether it is one [B, R]) of rows
    of `encode_chat`: the reply runs from `reply_start` to the row's last real token; R is the longest reply."""
    lengths = batch["attention_mask"].sum(-1) - batch["reply_start"]  # [B] (0 or less on padding rows)
    width = max(int(lengths.max()), 1)
    offset = np.arange(width)[None]
    scored = offset < lengths[:, None]
    at = np.where(scored, batch["reply_start"][:, None] - 1 + offset, 0)  # token t is predicted at t - 1
    targets = np.where(scored, np.take_along_axis(batch["input_ids"], at + 1, axis=1), 0)
    return at.astype(np.int32), targets.astype(np.int32), scored


def _reply_log_probs(model, input_ids, attention_mask, at, targets, scored):
    """Each row's reply log-probability [B]: the sum over its tokens' [B, R] (logits at those positions only)."""
    log_probs = jax.nn.log_softmax(model.logits_at(input_ids, attention_mask, at).astype(jnp.float32))
    token = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    return jnp.where(scored, token, 0.0).sum(-1)


class EntityTagger:
    """A trained token classifier's export, ready to find the entities of texts."""

    def __init__(self, model, tokenizer, info: RunInfo, stride: int = DEFAULT_STRIDE):
        self.tokenizer, self.info, self.stride = tokenizer, info, stride
        self.labels = tuple(info.labels)
        self.logits = jit_bound(model, lambda m, ids, mask: m(ids, mask))
        crf = getattr(model, "crf", None)
        self.crf = None if crf is None else crf.numpy_parameters()  # Viterbi decoding over each text's words

    def __call__(self, texts: list[str], batch_size: int = 32,
                 words: list[list[tuple[int, int]]] | None = None) -> list[list[dict]]:
        """For each text, its entities: {"label", "start", "end" (character offsets), "text", "score"}. `words`:
        the (start, end) of each word of each text, where the data gives them (a CoNLL file's tokens); default:
        the words tljax reads in raw text (`tljax.data.tagged.word_spans`)."""
        check_texts_to_classify(texts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        words = [word_spans(text) for text in texts] if words is None else [list(w) for w in words]
        windows = encode_words(texts, words, None, self.tokenizer, self.info.max_length, prefix=self.info.text_prefix,
                               stride=self.stride)
        batches = evaluation_batches(windows.encoded, batch_size, pad, self.info.max_length)
        scores = score_words(lambda batch: self.logits(batch["input_ids"], batch["attention_mask"]), batches,
                             windows)
        found = []
        for text, spans, word_scores, follow in zip(texts, words, scores, windows.followers):
            tags = word_tags(word_scores, follow, self.labels, self.crf)
            confidence = np.exp(np.nanmax(word_scores, axis=-1))  # NaN for words predicted with another
            items = []
            for entity in entities(tags):
                start, end = spans[entity.start][0], spans[entity.end - 1][1]
                score = confidence[entity.start: entity.end]
                items.append({"label": entity.label, "start": int(start), "end": int(end), "text": text[start:end],
                              "score": round(float(np.nanmean(score)), 4)})
            found.append(items)
        return found


class AnswerFinder:
    """A trained question-answering run's export, ready to find answers in contexts."""

    def __init__(self, model, tokenizer, info: RunInfo):
        self.tokenizer, self.info = tokenizer, info
        self.settings = AnswerSettings(**(info.answers or {}))
        self.logits = jit_bound(model, lambda m, ids, mask, types: m(ids, mask, types))

    def __call__(self, questions: list[str], contexts: list[str], batch_size: int = 32) -> list[dict]:
        """For each question (about the context at the same place): {"answer", "start", "end" (character offsets
        in the context; -1 for none), "score" (the span's probability in its window), "answered"}."""
        if len(questions) != len(contexts):
            raise InputError(f"{len(questions)} questions for {len(contexts)} contexts; give each question its "
                             "context")
        for what, texts in (("question", questions), ("context", contexts)):
            if any(not isinstance(t, str) or not t.strip() for t in texts):
                raise InputError(f"a {what} is empty; give each question some words and the text that answers it")
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        windows = encode_questions(questions, contexts, None, self.tokenizer, self.info.max_length,
                                   stride=self.settings.stride, prefix=self.info.text_prefix)
        batches = evaluation_batches(windows.encoded, batch_size, pad, self.info.max_length)
        scores = window_outputs(lambda b: self.logits(b["input_ids"], b["attention_mask"], b["token_type_ids"]),
                                batches, windows.encoded)
        found = answer_questions(windows, contexts, scores, self.settings)
        return [{"answer": p.text, "start": p.start, "end": p.end, "score": round(p.probability, 4),
                 "answered": p.answered} for p in found]


class TextGenerator:
    """A trained seq2seq run's export, ready to write the output of new inputs (greedy, as its evaluation did): a
    decoder writes after the prompt; an encoder-decoder's encoder reads the prompt (at most the run's max_length
    tokens) and its decoder writes the output (`generate_targets`, compiled once per shape)."""

    def __init__(self, model, tokenizer, info: RunInfo):
        self.model, self.tokenizer, self.info = model, tokenizer, info
        settings = info.seq2seq or {}
        self.max_target_length = int(settings.get("max_target_length", 64))
        self.prefixes = dict(settings.get("tasks") or {"": info.text_prefix})  # task -> its prefix
        self.form = settings.get("prompt_form", "plain"), settings.get("separator", "\n")
        self.ends = tuple(dict.fromkeys([end_token(tokenizer), *model.config.eos_token_ids]))
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.encoder_decoder = bool(getattr(model, "is_encoder_decoder", False))
        if self.encoder_decoder:
            self.targets = jit_bound(model, lambda m, ids, mask: m.generate_targets(
                ids, mask, max_new_tokens=self.max_target_length + 1, eos=self.ends, pad=self.pad))

    def __call__(self, texts: list[str], batch_size: int = 16, task: str | None = None) -> list[str]:
        """The output of each text (asked with `task`'s prefix in a multi-task run: one of `self.prefixes`)."""
        check_texts_to_classify(texts)
        if task is None and len(self.prefixes) > 1:
            raise InputError(f"this run was trained on several tasks; name one with --task: {', '.join(self.prefixes)}")
        if task is not None and task not in self.prefixes:
            raise InputError(f"task {task!r} is not one this run was trained on; valid: "
                             f"{', '.join(p for p in self.prefixes if p) or '(none: leave --task out)'}")
        form = PromptForm(self.form[0], self.prefixes[task if task is not None else next(iter(self.prefixes))],
                          self.form[1], source=self.encoder_decoder)
        budget = self.info.max_length if self.encoder_decoder else self.info.max_length - self.max_target_length - 1
        prompts, _ = fit_prompts(form, self.tokenizer, texts, budget)
        pad = self.pad
        encoded = Encoded(tuple(np.asarray(p, np.int32) for p in prompts), np.zeros(len(prompts), np.int32), 0)
        outputs = [""] * len(texts)
        order = np.argsort([len(p) for p in prompts], kind="stable")
        for start in range(0, len(texts), batch_size):
            rows = order[start: start + batch_size].tolist()
            # as wide as the longest prompt (not a bucket): the prompt and the output fit the model's positions
            batch = make_batch(encoded, rows, len(rows), pad, self.info.max_length, left_pad=True,
                               width=max(len(prompts[i]) for i in rows))
            if self.encoder_decoder:
                tokens = np.asarray(self.targets(batch["input_ids"], batch["attention_mask"]))
            else:
                tokens = np.asarray(generate(self.model, batch["input_ids"], batch["attention_mask"],
                                             max_new_tokens=self.max_target_length + 1, eos_token_ids=self.ends,
                                             pad_token_id=pad))
            for row, index in enumerate(rows):
                outputs[index] = output_text(self.tokenizer, tokens[row], self.ends)
        return outputs


PREDICTORS = {"sequence-classification": Predictor, "token-classification": EntityTagger,
              "question-answering": AnswerFinder, "seq2seq": TextGenerator}


def load_predictor(run_dir: str | Path) -> Predictor | ChatClassifier | EntityTagger | AnswerFinder | TextGenerator:
    """What a finished run (its directory, or its export directory) predicts with, by its task."""
    directory = find_export(run_dir)
    model, tokenizer, info = load_exported(directory)
    if info.task == "causal-lm" and info.chat:  # chat tuning: a classifier that answers in words
        return ChatClassifier(model, tokenizer, info)
    if info.task not in PREDICTORS:
        raise InputError(f"{run_dir} is a {info.task} run (continued pre-training), not a classifier; "
                         f"fine-tune from it: python -m tljax.train --set model={directory}/model")
    return PREDICTORS[info.task](model, tokenizer, info)


def _context(args) -> str | None:
    """The context of a question-answering call (None when no question is asked), checked."""
    if not args.question and args.context is None and args.context_file is None:
        return None
    if args.texts:
        raise InputError("give either TEXTs to classify or tag, or --question and --context, not both")
    if not args.question or any(not q.strip() for q in args.question):
        raise InputError('a question is missing or empty; give --question "What ...?" with the context')
    if (args.context is None) == (args.context_file is None):
        raise InputError('give the context once: --context "..." or --context-file FILE')
    if args.context_file is not None:
        try:
            context = args.context_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"cannot read the context file {args.context_file}: {error}") from None
    else:
        context = args.context
    if not context.strip():
        raise InputError("the context is empty; give the text the questions are about")
    return context


def check_texts_to_classify(texts: list[str]) -> None:
    """Refuses empty or blank texts, as training does (`check_texts`): the model would answer from nothing."""
    empty = [number for number, text in enumerate(texts, 1) if not isinstance(text, str) or not text.strip()]
    if empty:
        if len(texts) == 1:
            which = "the text is"
        elif len(empty) == 1:
            which = f"text {empty[0]} of {len(texts)} is"
        else:
            which = f"texts {', '.join(map(str, empty))} of {len(texts)} are"
        raise InputError(f"{which} empty or blank; give each TEXT some words to classify, e.g. "
                         'python -m tljax.predict RUN_DIR "a fine film"')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tljax.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished run (classification, tagging, question "
                        "answering or seq2seq) or its export directory")
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="a text to classify or tag, or the input a seq2seq "
                        "run writes from (one or more)")
    parser.add_argument("--question", action="append", default=[], help="a question (question answering; repeat "
                        "it to ask several)")
    parser.add_argument("--context", help="the text the questions are about")
    parser.add_argument("--context-file", type=Path, help="a UTF-8 text file holding the context")
    parser.add_argument("--json", action="store_true", help="print JSON: one object per text or question")
    parser.add_argument("--task", help="a multi-task seq2seq run: the task to ask (its prefix goes before each TEXT)")
    args = parser.parse_args(argv)
    if not args.texts and not args.question and args.context is None and args.context_file is None:
        parser.error("give the TEXTs to classify or tag, or --question and --context for a question-answering run")
    enable_compilation_cache()
    try:
        context = _context(args)
        if context is None:
            check_texts_to_classify(args.texts)  # before the model is loaded: that takes a while
        predictor = load_predictor(args.run_dir)
        if isinstance(predictor, AnswerFinder) != (context is not None):
            raise InputError(f"{args.run_dir} is a question-answering run: give --question \"...\" and --context "
                             "\"...\" (or --context-file FILE)" if isinstance(predictor, AnswerFinder) else
                             f"{args.run_dir} is a {predictor.info.task} run: give the TEXTs to read, not --question "
                             "/ --context")
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if isinstance(predictor, AnswerFinder):
        for question, found in zip(args.question, predictor(args.question, [context] * len(args.question))):
            if args.json:
                print(json.dumps({"question": question, **found}, ensure_ascii=False))
            elif found["answered"]:
                print(f"{question}\n  {found['answer']}  (characters {found['start']}-{found['end']}, probability "
                      f"{found['score']:.3f})")
            else:
                print(f"{question}\n  (the context does not answer it)")
        return 0
    if isinstance(predictor, TextGenerator):
        try:
            outputs = predictor(args.texts, task=args.task)
        except InputError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        for text, output in zip(args.texts, outputs):
            print(json.dumps({"text": text, "output": output}, ensure_ascii=False) if args.json else output)
        return 0
    if isinstance(predictor, EntityTagger):
        for text, found in zip(args.texts, predictor(args.texts)):
            if args.json:
                print(json.dumps({"text": text, "entities": found}, ensure_ascii=False))
                continue
            print(f"{text}\n" + ("".join(f"  {e['label']:6} {e['start']:>4}-{e['end']:<4} {e['score']:.3f}  "
                                          f"{e['text']}\n" for e in found) or "  (no entities)\n"), end="")
        return 0
    for text, (label, probabilities) in zip(args.texts, predictor(args.texts)):
        if args.json:
            print(json.dumps({"text": text, "label": label, "probabilities": probabilities}, ensure_ascii=False))
            continue
        shown = "  ".join(f"{name} {p:.3f}" for name, p in probabilities.items())
        print(f"{label}\t({shown})\t{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
