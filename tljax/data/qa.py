"""Questions about passages, with the answers' spans in them: `QADataset`, and the readers of the formats users have.

`tljax.data.sources.load_questions(source)` accepts:

* a bundled set by name (`qa-pt`, `qa-en`: `tljax/data/bundled/qa/`);
* a SQuAD JSON file, v1.1 or v2.0 (`data` -> `paragraphs` -> `context`, `qas` -> `id`, `question`,
  `answers` [{`text`, `answer_start`}], `is_impossible`); every gold answer is kept (the dev sets have several);
* a JSON Lines or CSV file with `question`, `context` and `answers` ({"text": [...], "answer_start": [...]}, as
  the Hugging Face `squad` dataset has it, or a list of {"text", "answer_start"}; in CSV the answers cell is that
  JSON), and an optional `id`, `title` and `split`; empty answers: unanswerable;
* `hf:DIR`, a Hugging Face `datasets` directory (`save_to_disk`) in the SQuAD layout, its own splits kept.

Every answer is checked against its context (its `answer_start` must point at its text): a wrong offset, an empty
question or a missing context is refused with the file and the record. A passage's questions stay in one split.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from tljax.data.dataset import SPLIT_ALIASES, DataError

Answer = tuple[str, int]  # (text, character offset of its start in the context)
QA_SUFFIXES = (".json", ".jsonl", ".ndjson", ".csv")


@dataclasses.dataclass(frozen=True)
class QADataset:
    """Questions, the context each is asked about, and its gold answers (none: unanswerable from the context)."""

    name: str
    ids: tuple[str, ...]
    questions: tuple[str, ...]
    contexts: tuple[str, ...]
    answers: tuple[tuple[Answer, ...], ...]  # per question: (text, start) of each gold answer
    groups: tuple[str, ...] | None = None  # the passage: its questions never split across train / validation / test
    predefined_split: tuple[str, ...] | None = None
    language: str = "und"

    def __post_init__(self) -> None:
        for field in ("ids", "questions", "contexts", "answers", "groups", "predefined_split"):
            value = getattr(self, field)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, field, tuple(value))
        if self.groups is None:  # the passage groups its questions
            object.__setattr__(self, "groups", tuple(" ".join(c.split()) for c in self.contexts))
        n = len(self.questions)
        for field in ("ids", "contexts", "answers", "groups", "predefined_split"):
            value = getattr(self, field)
            if value is not None and len(value) != n:
                raise DataError(f"{self.name}: {field} has {len(value)} entries but there are {n} questions")

    def __len__(self) -> int:
        return len(self.questions)

    @property
    def texts(self) -> tuple[str, ...]:
        """Question and context, one string each: what the splits' leakage check compares."""
        return tuple(f"{q}\n{c}" for q, c in zip(self.questions, self.contexts))

    @property
    def answerable(self) -> tuple[bool, ...]:
        return tuple(bool(a) for a in self.answers)

    def gold_texts(self, index: int) -> list[str]:
        """The gold answers' texts of question `index` ([] when unanswerable)."""
        return [text for text, _ in self.answers[index]]

    def subset(self, indices: Iterable[int], name: str | None = None) -> QADataset:
        idx = list(indices)
        pick = lambda values: None if values is None else tuple(values[i] for i in idx)  # noqa: E731
        return dataclasses.replace(self, name=name or self.name, ids=pick(self.ids), questions=pick(self.questions),
                                   contexts=pick(self.contexts), answers=pick(self.answers), groups=pick(self.groups),
                                   predefined_split=pick(self.predefined_split))

    def counts(self) -> dict[str, int]:
        return {"questions": len(self), "passages": len(set(self.groups)),
                "unanswerable": sum(not a for a in self.answers)}


def check_answers(context: str, answers: Sequence[Answer], where: str) -> None:
    """Refuses an answer whose `answer_start` does not point at its text in the context."""
    for text, start in answers:
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: an answer's text is empty; give the answer's words, or no answers at all for "
                            "a question the context does not answer")
        if not isinstance(start, int) or isinstance(start, bool) or start < 0:
            raise DataError(f"{where}: answer_start {start!r} of {text!r} must be a character offset (a whole number "
                            ">= 0)")
        if context[start:start + len(text)] != text:
            found = context.find(text)
            hint = f"; the text occurs at {found}" if found >= 0 else "; the text does not occur in the context"
            raise DataError(f"{where}: answer_start {start} does not point at the answer {text!r} (the context has "
                            f"{context[start:start + len(text)]!r} there{hint})")


def _record(question, context, answers: list[Answer], where: str) -> None:
    if not isinstance(context, str) or not context.strip():
        raise DataError(f"{where}: the context is missing or empty; every question needs the passage it is asked "
                        "about")
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: the question is missing or empty")
    check_answers(context, answers, where)


def _answers_field(raw, where: str) -> list[Answer]:
    """{"text": [...], "answer_start": [...]} (Hugging Face's squad) or [{"text", "answer_start"}, ...] -> answers."""
    if raw is None or raw == [] or raw == {}:
        return []
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise DataError(f"{where}: answers {raw!r} is not JSON; write {{\"text\": [\"...\"], \"answer_start\": "
                            "[0]}") from None
    if isinstance(raw, dict) and "text" in raw and "answer_start" in raw:
        texts, starts = raw["text"], raw["answer_start"]
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            raise DataError(f"{where}: answers.text and answers.answer_start must be lists of the same length")
        return list(zip(texts, starts))
    if isinstance(raw, list) and all(isinstance(a, dict) and {"text", "answer_start"} <= set(a) for a in raw):
        return [(a["text"], a["answer_start"]) for a in raw]
    raise DataError(f"{where}: answers must be {{\"text\": [...], \"answer_start\": [...]}} or a list of "
                    f"{{\"text\", \"answer_start\"}}; got {raw!r}")


def _dataset(name: str, rows: list[dict], language: str = "und") -> QADataset:
    if not rows:
        raise DataError(f"{name} holds no questions")
    ids = [str(r.get("id") or f"q{n}") for n, r in enumerate(rows, 1)]
    repeated = [i for i, n in Counter(ids).items() if n > 1]
    if repeated:
        raise DataError(f"{name}: question ids repeat ({', '.join(repeated[:5])}); each question needs its own id")
    splits = [r.get("split") for r in rows]
    predefined = tuple(SPLIT_ALIASES.get(str(s), "train") for s in splits) if all(s is not None for s in splits) \
        else None
    groups = tuple(str(r["group"]) for r in rows) if all(r.get("group") for r in rows) else None
    return QADataset(name, tuple(ids), tuple(" ".join(r["question"].split()) for r in rows),
                     tuple(r["context"] for r in rows), tuple(tuple(r["answers"]) for r in rows), groups,
                     predefined, language)


def read_squad(path: Path, text: str) -> QADataset:
    """A SQuAD v1.1 / v2.0 JSON file."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}); a SQuAD file is one JSON "
                        "object with a data list") from None
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise DataError(f"{path}: a SQuAD file is an object with a \"data\" list of articles, each with "
                        "\"paragraphs\" of \"context\" and \"qas\"")
    rows = []
    for a, article in enumerate(document["data"]):
        title = article.get("title", f"article {a}") if isinstance(article, dict) else a
        for p, paragraph in enumerate(article.get("paragraphs", []) if isinstance(article, dict) else []):
            context = paragraph.get("context")
            for q, qa in enumerate(paragraph.get("qas", [])):
                where = f"{path}, {title!s} paragraph {p}, question {qa.get('id', q)}"
                answers = [] if qa.get("is_impossible") else _answers_field(qa.get("answers"), where)
                if not qa.get("is_impossible") and not answers:
                    raise DataError(f"{where}: no answers and not is_impossible; mark a question its context does "
                                    "not answer with \"is_impossible\": true")
                _record(qa.get("question"), context, answers, where)
                rows.append({"id": qa.get("id"), "question": qa["question"], "context": context, "answers": answers,
                             "group": f"{title}/{p}"})
    return _dataset(str(path), rows)


def read_qa_records(path: Path, text: str) -> QADataset:
    """A JSON Lines or CSV file of question / context / answers records."""
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        records = [(reader.line_num, dict(row)) for row in reader]
    else:
        records = []
        for number, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                records.append((number, json.loads(line)))
            except json.JSONDecodeError as error:
                raise DataError(f"{path}, line {number}: not valid JSON ({error.msg} at column {error.colno}); each "
                                "line is one object with question, context and answers") from None
    rows = []
    for number, record in records:
        where = f"{path}, line {number}"
        if not isinstance(record, dict):
            raise DataError(f"{where}: each record is an object with question, context and answers")
        answers = _answers_field(record.get("answers"), where)
        _record(record.get("question"), record.get("context"), answers, where)
        rows.append({**record, "answers": answers, "group": record.get("title") and
                     f"{record['title']}/{' '.join(record['context'].split())[:80]}"})
    return _dataset(str(path), rows)


def read_hf_squad(directory: Path) -> QADataset:
    """A `save_to_disk` directory (a dataset or a dict of splits) with question, context and answers columns."""
    import datasets  # slow to import: only for this source

    try:
        loaded = datasets.load_from_disk(str(directory))
    except (FileNotFoundError, ValueError) as error:
        raise DataError(f"hf:{directory} is not a datasets directory written by save_to_disk ({error})") from None
    parts = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(None, loaded)]
    rows = []
    for split, part in parts:
        missing = [c for c in ("question", "context", "answers") if c not in part.column_names]
        if missing:
            raise DataError(f"hf:{directory} has no {' and no '.join(missing)} column (its columns: "
                            f"{part.column_names}); a question-answering dataset has question, context, answers")
        for number, row in enumerate(part):
            where = f"hf:{directory}, {split or 'dataset'} row {number}"
            answers = _answers_field(row["answers"], where)
            _record(row["question"], row["context"], answers, where)
            rows.append({"id": row.get("id"), "question": row["question"], "context": row["context"],
                         "answers": answers, "split": SPLIT_ALIASES.get(split, "train") if split else None})
    return _dataset(f"hf:{directory}", rows)
