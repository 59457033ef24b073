"""The question-answering set written for tljax: Brazilian Portuguese passages with questions whose answers are
spans of the passage (some unanswerable from it), and the English translation of each passage and question
(`qa/*.yaml`, one file per topic; `qa/README.md` says how it was made).

Each passage marks its answers inline, readable as written: `O rio [Negro]{q1} encontra o [Solimões]{q2,q4}`
(one mark may answer several questions; marks never nest). `parse_passage` takes the plain text and the
character span of each mark, so the offsets are generated, never typed. Loaded by name: `qa-pt` and `qa-en`
(one example per question, a passage's questions in one split). `python -m tljax.data check-qa [FILE ...]`
checks files as the tests do (`check_questions`); `python -m tljax.data export qa-pt DIR` writes SQuAD v2.0 JSON.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from functools import cache
from importlib import resources

import yaml

from tljax.data.bundled.ner_corpus import refuse_near_duplicates
from tljax.data.dataset import DataError
from tljax.data.qa import QADataset

TOPICS = ("geography", "history", "science", "health", "law", "services")
LANGUAGES = ("pt", "en")
QA_CORPORA = {"qa-pt": "pt-BR", "qa-en": "en"}
LICENCE = "CC BY 4.0, written for tljax (tljax/data/bundled/qa/README.md)"
_MARK = re.compile(r"\[([^\[\]{}]+)\]\{(q\d+(?:,q\d+)*)\}")
_BRACKETS = re.compile(r"[\[\]{}]")
MAX_ANSWER_WORDS = 12  # an answer is a short span: a name, a number, a date, a short phrase
LONG_WORDS = 230  # a passage of at least this many Portuguese words is longer than one 256-token window


@dataclasses.dataclass(frozen=True)
class Question:
    """One question about one passage, in both languages; `answers[language]` the (start, end) of each gold
    answer in that language's passage (empty: the passage does not answer it)."""

    passage: str  # the passage's id
    topic: str
    split: str
    key: str  # q1, q2, ... within its passage
    text: dict[str, str]  # language -> the question
    context: dict[str, str]  # language -> the plain passage
    answers: dict[str, tuple[tuple[int, int], ...]]

    @property
    def id(self) -> str:
        return f"{self.passage}/{self.key}"

    @property
    def answerable(self) -> bool:
        return bool(self.answers["pt"])


def parse_passage(markup: str, where: str = "passage") -> tuple[str, dict[str, tuple[int, int]]]:
    """`[words]{q1,q3}` markup -> (plain text, {question key: (start, end)}); a stray bracket, a key marked
    twice, or a mark with spaces at its ends is an error naming `where`."""
    parts, marks, position, length = [], {}, 0, 0
    for match in _MARK.finditer(markup):
        before = markup[position:match.start()]
        surface = match.group(1)
        parts.append(before)
        length += len(before)
        if surface != surface.strip():
            raise DataError(f"{where}: the mark [{surface}] starts or ends with a space; keep it on the answer")
        for key in match.group(2).split(","):
            if key in marks:
                raise DataError(f"{where}: {key} is marked twice; a question has one marked answer per passage")
            marks[key] = (length, length + len(surface))
        parts.append(surface)
        length += len(surface)
        position = match.end()
    parts.append(markup[position:])
    stray = _BRACKETS.search(_MARK.sub("", markup))
    if stray:
        raise DataError(f"{where}: a stray {stray.group()!r} outside [answer]{{q1}} marks")
    return "".join(parts), marks


def split_of(passage_number: int) -> str:
    """The fixed split of a topic's `passage_number`-th passage (from 1): every 5th is test, the 3rd of every
    ten validation, the rest train (70 / 10 / 20 of each topic)."""
    return "test" if passage_number % 5 == 0 else "validation" if passage_number % 10 == 3 else "train"


def _alternative(context: str, span: tuple[int, int], text: str, where: str) -> tuple[int, int]:
    """The span of an alternative gold answer `text`: the occurrence that overlaps the marked `span`."""
    for match in re.finditer(re.escape(text), context):
        if match.start() < span[1] and span[0] < match.end():
            return match.start(), match.end()
    raise DataError(f"{where}: the alternative answer {text!r} does not overlap the marked answer "
                    f"{context[span[0]:span[1]]!r}; an alternative is the same answer cut longer or shorter")


def read_topic(path, topic: str, where: str) -> list[Question]:
    """The questions of one topic file (`path`: a file or a resource)."""
    passages = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(passages, list):
        raise DataError(f"{where}: a topic file is a list of passages")
    found = []
    for number, passage in enumerate(passages, 1):
        pid = passage.get("id") if isinstance(passage, dict) else None
        place = f"{where}, {pid or f'passage {number}'}"
        missing = [k for k in ("id", "title", "pt", "en", "questions") if k not in (passage or {})]
        if missing:
            raise DataError(f"{place}: missing {', '.join(missing)} (a passage has id, title, pt, en, questions)")
        context, marks = {}, {}
        for language in LANGUAGES:
            context[language], marks[language] = parse_passage(" ".join(str(passage[language]).split()),
                                                               f"{place} ({language})")
        keys = [q.get("id") for q in passage["questions"]]
        for language in LANGUAGES:
            unknown = sorted(set(marks[language]) - set(keys))
            if unknown:
                raise DataError(f"{place} ({language}): marks {unknown} answer no question of the passage")
        for question in passage["questions"]:
            key = question.get("id")
            here = f"{place}/{key}"
            if not all(isinstance(question.get(lang), str) and question[lang].strip() for lang in LANGUAGES):
                raise DataError(f"{here}: a question needs its pt and en text")
            unanswerable = bool(question.get("unanswerable", False))
            answers = {}
            for language in LANGUAGES:
                if unanswerable:
                    if key in marks[language]:
                        raise DataError(f"{here} ({language}): unanswerable, yet marked in the passage")
                    answers[language] = ()
                    continue
                if key not in marks[language]:
                    raise DataError(f"{here} ({language}): no [answer]{{{key}}} mark in the passage (or say "
                                    "unanswerable: true)")
                span = marks[language][key]
                if len(context[language][span[0]:span[1]].split()) > MAX_ANSWER_WORDS:
                    raise DataError(f"{here} ({language}): the answer has more than {MAX_ANSWER_WORDS} words")
                alternatives = (question.get("alternatives") or {}).get(language, [])
                answers[language] = (span, *(_alternative(context[language], span, t, f"{here} ({language})")
                                             for t in alternatives))
            found.append(Question(pid, topic, split_of(number), key,
                                  {lang: " ".join(question[lang].split()) for lang in LANGUAGES}, context, answers))
    return found


@cache
def questions() -> tuple[Question, ...]:
    """Every question of every topic, in file order."""
    folder = resources.files(__package__).joinpath("qa")
    found = []
    for topic in TOPICS:
        found += read_topic(folder.joinpath(f"{topic}.yaml"), topic, f"qa/{topic}.yaml")
    return tuple(found)


def load_qa(name: str) -> QADataset:
    """`qa-pt` or `qa-en`: one example per question, grouped by passage, with the set's fixed splits."""
    if name not in QA_CORPORA:
        raise DataError(f"unknown question-answering set {name!r}; known: {', '.join(QA_CORPORA)}")
    language = name.split("-")[1]
    every = questions()
    answers = tuple(tuple((q.context[language][a:b], a) for a, b in q.answers[language]) for q in every)
    return QADataset(name, tuple(q.id for q in every), tuple(q.text[language] for q in every),
                     tuple(q.context[language] for q in every), answers, tuple(q.passage for q in every),
                     tuple(q.split for q in every), QA_CORPORA[name])


def check_questions(every: list[Question] | tuple[Question, ...]) -> dict:
    """The set's invariants: unique ids, answers in both languages or in neither, no near-duplicate
    questions; returns its counts."""
    ids = Counter(q.id for q in every)
    repeated = [i for i, n in ids.items() if n > 1]
    if repeated:
        raise DataError(f"question ids repeat: {repeated[:5]}")
    passages = Counter(q.passage for q in every)
    for language in LANGUAGES:
        refuse_near_duplicates(list(every), language)
    contexts = {q.passage: q.context["pt"] for q in every}
    long = sum(len(text.split()) >= LONG_WORDS for text in contexts.values())
    counts = {"passages": len(passages), "questions": len(every),
              "unanswerable": sum(not q.answerable for q in every), "long passages": long,
              "topics": dict(Counter(q.topic for q in {q.passage: q for q in every}.values())),
              "splits": {s: {"passages": len({q.passage for q in every if q.split == s}),
                             "questions": sum(q.split == s for q in every)} for s in ("train", "validation", "test")}}
    return counts
