"""The variants of a base model, answering one text (or one question about a passage) as the harness would score
it as an item.

A `Service` is shared by every user of the page: models load once (least recently used dropped beyond its
capacity), each tokenizer used by one request thread at a time (`guard.py`), tasks are parsed once, and every
answer is `harness.variants.evaluate` on a one-item list: what the harness reports for the text as an item (its
id a hash of the text, and of the question on an answer task, which seeds a decoder's few-shot draw). Decoders
also reply in words, streamed token by token by `tljax.models.stream_chat` (greedy: the same reply
`tljax.models.chat` gives).
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from harness.app.access import check_listed
from harness.app.catalogue import RunEntry, find_runs, read_run
from harness.app.guard import guard
from harness.app.texts import text
from harness.answer_variants import ANSWER_MAX_NEW_TOKENS, answer_pool
from harness.answers import AnswerItem, AnswerTask, answer_messages, draw_answer_demonstrations
from harness.entities import EntityItem, EntityTask, draw_entity_demonstrations, entity_messages
from harness.entity_variants import ENTITY_MAX_NEW_TOKENS, entity_pool
from harness.evaluation import ENCODER_PREFIXES
from harness.tasks import Item, Task, builtin_tasks, load_task
from harness.variants import LoadedRun, Models, Variant, conversation, demonstration_pool, evaluate, parse_reply
from tljax import models, zoo
from tljax.data.tagged import word_spans
from tljax.errors import InputError
from tljax.tagging import split_tag

DECODER_TOKENS = 512  # of a message asked of a decoder: a reply in seconds on a CPU
DECODER_FEW_SHOT = (2, 4)  # demonstrations in all
ENCODER_FEW_SHOT = (8,)  # examples per class
REPLY_TOKENS = 40  # of a decoder's free reply


class AppError(InputError):
    """Something the page asked for that cannot be done; the message is shown to the user."""


@dataclasses.dataclass(frozen=True)
class Choice:
    """A variant as the page lists it."""

    name: str  # unique among a base model's choices; what the selector shows
    variant: Variant
    method: str  # in a few words
    trainable: int | None  # parameters trained for it (0: none)
    decoder: bool
    run: RunEntry | None = None

    @property
    def available(self) -> bool:
        return self.run is None or self.run.usable

    @property
    def reason(self) -> str:
        return "" if self.available else f"{self.run.name}: {self.run.reason or self.run.status}"


@dataclasses.dataclass(frozen=True)
class Answer:
    """One variant's answer to one text."""

    label: str  # the predicted label (by the `acc` rule); on an entity task, the entities found in a few words; on
    # an answer task, the answer's words (or "No answer")
    probabilities: dict[str, float]  # every label's (none on an entity or answer task)
    record: dict[str, Any]  # the harness's record for the text, as a suite's predictions file holds it
    latency_s: float
    text: str  # what the model read (the message, truncated to what it reads; on an answer task, the passage)
    trainable: int | None  # parameters trained for the variant (a few-shot classifier's, once fitted)
    cut: Cut | None = None  # how the message was cut to what the model reads, if it was
    entities: tuple[dict[str, Any], ...] | None = None  # an entity task's: {start, end, label, score (or None)}
    # an answer task's: {text ("" for none), start, end (in the passage; -1: not in it), score, score_name
    # ("probability": a run's; "similarity": an encoder's most similar sentence; None: a decoder's reply)}
    span: dict[str, Any] | None = None
    question: str = ""  # an answer task's question

    def notice(self, language: str = "en") -> str:
        return self.cut.notice(language) if self.cut else ""


@dataclasses.dataclass(frozen=True)
class Cut:
    """A message longer than the model reads: its size, and what was kept."""

    characters: int
    tokens: int
    limit: int  # tokens the model reads
    kept: int  # characters kept

    def notice(self, language: str = "en") -> str:
        return text("truncated", language).format(characters=self.characters, tokens=self.tokens, limit=self.limit,
                                                  kept=self.kept)


def item_for(text: str, language: str, task: Task | EntityTask | AnswerTask | None = None,
             question: str = "") -> Item | EntityItem | AnswerItem:
    """The message as a harness item: its id is a hash of the text (and of the question on an answer task; so
    few-shot draws the same demonstrations for the same text, as the harness does for an item), its gold label
    unknown (0; no entities on an entity task, whose words are those tljax reads in raw text; no gold answers on
    an answer task, whose passage is the text)."""
    asked = f"{question}\n{text}" if task is not None and task.kind == "answers" else text
    identifier = f"app:{hashlib.sha256(asked.encode()).hexdigest()[:16]}"
    if task is not None and task.kind == "entities":
        return EntityItem(identifier, text, (), language, tuple(word_spans(text)))
    if task is not None and task.kind == "answers":
        return AnswerItem(identifier, question, text, (), language)
    return Item(identifier, text, 0, language)


def entity_count(spans: Sequence[dict[str, Any]], language: str = "en") -> str:
    """"2 entities: PER, LOC" (in the page's language)."""
    if not spans:
        return text("no_entities", language)
    return text("entities_found", language).format(n=len(spans), types=", ".join(s["label"] for s in spans))


def answer_said(words: str, language: str = "en") -> str:
    """An answer's words, or "No answer" (in the page's language) where the variant left the question unanswered."""
    return words or text("no_answer", language)


def answer_span(record: dict[str, Any]) -> dict[str, Any]:
    """An answer task's record as the page marks it: the answer's words and span, and its score with what the
    score is (a run's span probability, an encoder's sentence similarity; a decoder's reply has none)."""
    if "score" in record:
        score, name = record["score"], "probability"
    elif "similarity" in record:
        score, name = record["similarity"], "similarity"
    else:
        score, name = None, None
    return {"text": record["predicted"], "start": record["start"], "end": record["end"], "score": score,
            "score_name": name}


RUN_SEPARATOR = " · "  # between a run's method and its folder in its choice's name


def _untrained_choices(base: str) -> list[Choice]:
    """Zero-shot and few-shot of `base`: they need no training."""
    decoder = is_decoder(base)
    found = [Choice("zero-shot", Variant(kind="zero-shot", model=base), "zero-shot", 0, decoder)]
    for k in DECODER_FEW_SHOT if decoder else ENCODER_FEW_SHOT:
        how = f"{k} demonstrations in the prompt" if decoder else f"logistic regression on {k} examples per class"
        found.append(Choice(f"few-shot k={k}", Variant(kind="few-shot", model=base, k=k), f"few-shot ({how})",
                            0 if decoder else None, decoder))
    return found


def _answers_for(run: RunEntry, base: str) -> bool:
    """Whether `run` is a variant of `base` that answers a task: a classifier or a chat-tuned decoder."""
    return run.model == base and (run.task != "causal-lm" or run.chat)


def _run_choice(run: RunEntry) -> Choice:
    return Choice(f"{run.method}{RUN_SEPARATOR}{run.name}", Variant(kind="run", run=str(run.path), allow_overlap=True),
                  run.method, run.trainable, run.task == "causal-lm", run)


def is_decoder(model: str) -> bool:
    """Whether a packaged name or model directory is a chat decoder, without downloading anything."""
    if model in zoo.PACKAGED:
        return models.is_decoder(zoo.PACKAGED[model].architecture)
    try:
        return models.is_decoder(models.read_config_dict(Path(model)).get("model_type", ""))
    except (OSError, InputError, ValueError):
        return False


def run_types(labels: Sequence[str]) -> list[str]:
    """The entity types of a token classifier's tags (O, B-PER, I-PER, ... -> PER, ...)."""
    return sorted({split_tag(tag)[1] for tag in labels if tag != "O"})


class SharedModels(Models):
    """The harness's model cache, each tokenizer guarded before anyone uses it: the request threads share a model's
    tokenizer (its embedder, scorer, predictor and the page's own calls all hold the same one)."""

    def get(self, name: str):
        model, tokenizer, is_decoder, directory = super().get(name)
        return model, guard(tokenizer), is_decoder, directory

    def run(self, run: str | Path) -> LoadedRun:
        loaded = super().run(run)
        guard(loaded.tokenizer)  # the object its predictor or scorer holds too
        return loaded


class Service:
    """What the page's events call: shared by every user of one app process.

    `public`: the page listens beyond loopback, so a base model must be one it lists (`bases`) and a task one of
    `tasks` (see access.py); otherwise any model directory or task file may be named."""

    def __init__(self, run_folders: Sequence[Path], capacity: int = 4, public: bool = False):
        self.run_folders = [Path(f) for f in run_folders]
        self.models = SharedModels(capacity)
        self.public = public
        self._tasks: dict[str, Task | EntityTask | AnswerTask] = {}
        self._lock = threading.Lock()

    # -- what there is -------------------------------------------------------------------------------------
    def bases(self) -> list[str]:
        """The packaged models, then the bases of runs found on disk."""
        names = list(zoo.PACKAGED)
        return names + sorted({r.model for r in find_runs(self.run_folders)} - set(names))

    def tasks(self) -> list[str]:
        """The tasks the page lists (the harness's built-in ones)."""
        return builtin_tasks()

    def task(self, name: str) -> Task | EntityTask | AnswerTask:
        """The task `name`, parsed once: a listed task, or on a loopback page also a task file."""
        check_listed(self.public, "tasks", name, self.tasks())
        with self._lock:
            if name not in self._tasks:
                self._tasks[name] = load_task(name)
            return self._tasks[name]

    def choices(self, base: str) -> list[Choice]:
        """Zero-shot and few-shot of `base` (no training needed), then every run found of that base."""
        found = find_runs(self.run_folders)
        self._check_base(base, found)
        return _untrained_choices(base) + [_run_choice(run) for run in found if _answers_for(run, base)]

    def _check_base(self, base: str, found: Sequence[RunEntry] | None = None) -> None:
        """Refuses a base a public page does not list: neither packaged nor the base of a run found."""
        if self.public and base not in zoo.PACKAGED:  # the runs on disk are read only for another name
            found = find_runs(self.run_folders) if found is None else found
            check_listed(True, "base models", base, list(zoo.PACKAGED) + [r.model for r in found])

    def fits(self, choice: Choice, task_name: str) -> bool:
        """Whether the variant can answer the task: a run trained for other labels (or another kind of task)
        cannot; on an entity task an encoder answers few-shot (a tag classifier), not zero-shot; on an answer
        task an encoder answers zero-shot (the passage sentence most similar to the question), not few-shot."""
        task = self.task(task_name)
        if task.kind == "entities":
            if choice.run is None:
                return choice.decoder or choice.variant.kind == "few-shot"
            return choice.run.task == "token-classification" and set(run_types(choice.run.labels)) == set(task.labels)
        if task.kind == "answers":
            if choice.run is None:
                return choice.decoder or choice.variant.kind == "zero-shot"
            return choice.run.task == "question-answering"
        return choice.run is None or (choice.run.task not in ("token-classification", "question-answering")
                                      and set(choice.run.labels) == set(task.labels))

    def unfit_reason(self, task_name: str, language: str = "en") -> str:
        """What does answer the task, for a variant that does not (`fits`): what each kind of task takes."""
        kind = self.task(task_name).kind
        return text(f"fits_{kind}", language) if kind in ("entities", "answers") else ""

    def choice(self, base: str, name: str) -> Choice:
        """The variant `name` of `base` as it is now (a run is read again: it may have gone since it was listed)."""
        self._check_base(base)
        for choice in _untrained_choices(base):
            if choice.name == name:
                return choice
        run_name = name.split(RUN_SEPARATOR, 1)[-1]
        inside = not Path(run_name).is_absolute() and ".." not in Path(run_name).parts  # below a runs folder
        for folder in self.run_folders if inside else []:  # a run's choice is named after its folder: read that one
            if (folder / run_name / "config.yaml").is_file():
                run = read_run(folder / run_name, folder)
                if _answers_for(run, base) and _run_choice(run).name == name:
                    return _run_choice(run)
        raise AppError(f"{name!r} is not a variant of {base} (any more); refresh the list")

    def needs_download(self, choice: Choice) -> str:
        """A notice if answering needs a model that is not downloaded yet (empty otherwise)."""
        model = choice.variant.model or (choice.run.model if choice.run else None)
        if model in zoo.PACKAGED and not zoo.is_cached(model):
            return f"{model} ({zoo.PACKAGED[model].download_mb} MB)"
        return ""

    # -- answering ------------------------------------------------------------------------------------------
    def _limit(self, choice: Choice) -> tuple[Any, int]:
        """(tokenizer, tokens the variant reads of a message, special tokens excluded)."""
        if choice.run is not None:
            loaded = self.models.run(choice.variant.run)
            tokenizer, limit = loaded.tokenizer, DECODER_TOKENS if choice.decoder else loaded.info.max_length
        elif choice.decoder:
            tokenizer, limit = self.models.get(choice.variant.model)[1], DECODER_TOKENS
        else:
            embedder = self.models.embedder(choice.variant.model)
            tokenizer, limit = embedder.tokenizer, embedder.max_length
        return tokenizer, limit - (0 if choice.decoder else tokenizer.num_special_tokens_to_add())

    def fit(self, choice: Choice, text: str) -> tuple[str, Cut | None]:
        """(the text cut to what the variant reads, how it was cut if it was)."""
        tokenizer, limit = self._limit(choice)
        if choice.variant.model in ENCODER_PREFIXES:
            limit -= 2  # the "query: " prefix
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = encoded["offset_mapping"]
        if len(offsets) <= limit:
            return text, None
        kept = text[: offsets[limit - 1][1]]
        return kept, Cut(len(text), len(offsets), limit, len(kept))

    def answer(self, choice: Choice, task_name: str, language: str, text: str, question: str = "") -> Answer:
        """The variant's answer to `text` in `language` (a template of the task): the harness's record. On an
        answer task `text` is the passage and `question` what is asked about it."""
        if not choice.available:
            raise AppError(f"{choice.name} is unavailable: {choice.reason}")
        text, question = text.strip(), (question or "").strip()
        if not text:
            raise AppError("empty message")
        task = self.task(task_name)
        if task.kind == "answers" and not question:
            raise AppError(f"empty question: {task_name} asks a question about the message (the passage); type one")
        # a tagger or a reader reads a long text whole, in overlapping windows, and an encoder's most similar
        # sentence reads every sentence (a decoder's prompt is cut as on other tasks)
        whole = task.kind in ("entities", "answers") and not choice.decoder
        fitted, cut = (text, None) if whole else self.fit(choice, text)
        variant = dataclasses.replace(choice.variant, language=language)
        started = time.perf_counter()
        evaluation = evaluate(variant, task, [item_for(fitted, language, task, question)], 0, self.models,
                              measure_costs=False)
        latency = time.perf_counter() - started
        if not evaluation.records:  # the harness leaves out a text that is one of its few-shot examples
            raise AppError("this text is one of the few-shot variant's own labelled examples; try another")
        record = evaluation.records[0]
        trainable = choice.trainable if choice.trainable is not None else evaluation.costs.get("trainable_parameters")
        if task.kind == "entities":
            scores = record.get("scores") or [None] * len(record["predicted"])
            spans = tuple({"start": s, "end": e, "label": label, "score": score}
                          for (s, e, label), score in zip(record["predicted"], scores))
            return Answer(entity_count(spans, language), {}, record, latency, fitted, trainable, cut, spans)
        if task.kind == "answers":
            return Answer(answer_said(record["predicted"], language), {}, record, latency, fitted, trainable, cut,
                          span=answer_span(record), question=question)
        probabilities = dict(zip(task.labels, record["probabilities"]))
        return Answer(task.labels[record["prediction"]["acc"]], probabilities, record, latency, fitted, trainable, cut)

    def reply(self, choice: Choice, task_name: str, language: str, text: str,
              max_new_tokens: int = REPLY_TOKENS, question: str = "") -> Iterator[str]:
        """A decoder's free reply to the task's question about `text` (after the same demonstrations as its
        scored answer; on an answer task, `question` about the passage `text`), streamed: the reply so far after
        each token."""
        task = self.task(task_name)
        fitted, _ = self.fit(choice, text.strip())  # what the scored answer read
        variant = dataclasses.replace(choice.variant, language=language)
        if task.kind == "entities":  # the reply is the answer: the one its record holds, said again
            item = item_for(fitted, language, task)
            pool = entity_pool(variant, task) if variant.kind == "few-shot" else []
            demos = draw_entity_demonstrations(pool, item, variant.k, task.labels, 0) if pool else []
            messages = entity_messages(task.template(language), task.labels, fitted, demos, variant.form)
            max_new_tokens = max(max_new_tokens, ENTITY_MAX_NEW_TOKENS)  # a list of entities
        elif task.kind == "answers":  # the reply is the answer: the one its record holds, said again
            item = item_for(fitted, language, task, question.strip())
            pool = answer_pool(variant, task) if variant.kind == "few-shot" else []
            demos = draw_answer_demonstrations(pool, item, variant.k, 0) if pool else []
            messages = answer_messages(task.template(language), item, demos, variant.form)
            max_new_tokens = ANSWER_MAX_NEW_TOKENS  # as the harness asks: a short span
        else:
            pool = demonstration_pool(variant, task) if variant.kind == "few-shot" else []
            messages = conversation(variant, task, item_for(fitted, language), 0, pool)
        if choice.run is not None:
            loaded = self.models.run(choice.variant.run)
            model, tokenizer = loaded.model, loaded.tokenizer
        else:
            model, tokenizer, _, _ = self.models.get(choice.variant.model)
        yield from models.stream_chat(model, tokenizer, messages, max_new_tokens=max_new_tokens)

    def implied_label(self, task_name: str, language: str, reply: str) -> str | None:
        """The label a reply names (the harness's chat parser), or None (always on an entity or answer task: its
        reply is read into entities, or an answer, by the answer)."""
        task = self.task(task_name)
        if task.kind in ("entities", "answers"):
            return None
        index = parse_reply(reply, task.template(language).verbalisers)
        return task.labels[index] if index >= 0 else None
