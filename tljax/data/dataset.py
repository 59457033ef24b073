"""The types every data source shares: `TextDataset` (labelled texts), `DataError`, the split names, and the
checks that turn raw columns into a dataset (`check_texts`, `encode_labels`, `columns_of`).

A leaf of `tljax.data`: it imports no other module of the package, so that every loader (and `splits`) can
import it and `sources` can import every loader.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Iterable, Sequence

from tljax.errors import InputError

SPLIT_NAMES = ("train", "validation", "test")
# Split names other sources use for the same thing.
SPLIT_ALIASES = {"train": "train", "validation": "validation", "valid": "validation", "dev": "validation",
                  "test": "test"}
_INT = re.compile(r"[+-]?\d+")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


class DataError(InputError):
    """Labelled text that cannot be loaded or split as asked."""


@dataclasses.dataclass(frozen=True)
class TextDataset:
    """Texts with one class label each (an index into `label_names`), plus what splitting must respect."""

    name: str
    texts: tuple[str, ...]
    labels: tuple[int, ...]
    label_names: tuple[str, ...]
    groups: tuple[str, ...] | None = None  # one group (e.g. a movie) never straddles train/validation/test
    predefined_split: tuple[str, ...] | None = None  # "train" / "validation" / "test" when the source ships one
    language: str = "und"  # BCP 47 code; "und" when unknown

    def __post_init__(self) -> None:
        # Accept lists (e.g. from JSON) but store tuples, so that a dataset stays immutable and hashable.
        for field in ("texts", "labels", "label_names", "groups", "predefined_split"):
            value = getattr(self, field)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, field, tuple(value))
        n = len(self.texts)
        for field in ("labels", "groups", "predefined_split"):
            value = getattr(self, field)
            if value is not None and len(value) != n:
                raise DataError(f"{self.name}: {field} has {len(value)} entries but there are {n} texts; "
                                "every example needs exactly one")
        bad = [label for label in self.labels if not 0 <= label < len(self.label_names)]
        if bad:
            raise DataError(f"{self.name}: label index {bad[0]} is outside 0..{len(self.label_names) - 1}; "
                            f"labels must index label_names {list(self.label_names)}")
        if self.predefined_split is not None and not set(self.predefined_split) <= set(SPLIT_NAMES):
            odd = sorted(set(self.predefined_split) - set(SPLIT_NAMES))
            raise DataError(f"{self.name}: predefined split names {odd} are not among {list(SPLIT_NAMES)}")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Iterable[int], name: str | None = None) -> TextDataset:
        """The examples at `indices`, in that order, with the same label names and language."""
        idx = list(indices)
        pick = lambda values: None if values is None else tuple(values[i] for i in idx)  # noqa: E731
        return dataclasses.replace(self, name=name or self.name, texts=pick(self.texts), labels=pick(self.labels),
                                   groups=pick(self.groups), predefined_split=pick(self.predefined_split))

    def class_counts(self) -> dict[str, int]:
        """Examples per class, in `label_names` order (classes without examples count 0)."""
        counts = Counter(self.labels)
        return {name: counts.get(i, 0) for i, name in enumerate(self.label_names)}


def encode_labels(values: Sequence[object], declared: Sequence[object] | None, where: str, *,
                  lines: Sequence[int] | None = None) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Label values (strings or ints) -> (indices, label names).

    With `declared`, the names are exactly those, in that order; otherwise the sorted distinct values (numerically
    when every value is an integer, so that "2" comes before "10"), and values that mix numbers and words are
    refused. `lines` (the file line of each value, the header being line 1) lets errors point into the file.
    """
    names = [str(v).strip() for v in values]
    empty = [row for row, name in enumerate(names, 1) if not name or name == "None"]
    if empty:
        raise DataError(f"{where}: {len(empty)} examples have no label (rows {_rows(empty)}); every example needs one")
    if declared is not None:
        label_names = tuple(str(d).strip() for d in declared)
        if len(set(label_names)) != len(label_names) or not label_names:
            raise DataError(f"labels={list(declared)} must be a non-empty list of distinct label names")
        index = {name: i for i, name in enumerate(label_names)}
        bad = [(row, name) for row, name in enumerate(names, 1) if name not in index]
        if bad:
            shown = "; ".join(f"row {row}: {name!r}" for row, name in bad[:5])
            raise DataError(f"{where}: {len(bad)} labels are outside the declared set {list(label_names)} ({shown}"
                            f"{'; ...' if len(bad) > 5 else ''}); add them to labels= or fix those rows")
    else:
        _refuse_mixed_labels(names, where, lines)
        distinct = set(names)
        numeric = all(_INT.fullmatch(name) for name in distinct)
        label_names = tuple(sorted(distinct, key=int if numeric else None))
        index = {name: i for i, name in enumerate(label_names)}
    return tuple(index[name] for name in names), label_names


def _refuse_mixed_labels(names: Sequence[str], where: str, lines: Sequence[int] | None) -> None:
    """Numbers and words in one label column are most often two codings of the same classes (1 and "positive"),
    which would silently become separate classes."""
    numeric = [bool(_NUMBER.fullmatch(name)) for name in names]
    if all(numeric) or not any(numeric):
        return
    place = (lambda i: f"line {lines[i]}") if lines is not None else (lambda i: f"row {i + 1}")  # noqa: E731

    def some(kind: bool) -> str:
        found = [i for i, is_number in enumerate(numeric) if is_number == kind]
        shown = ", ".join(f"{place(i)}: {names[i]!r}" for i in found[:3])
        noun = ("number" if kind else "word") + ("s" if len(found) > 1 else "")
        return f"{len(found)} {noun} ({shown}{', ...' if len(found) > 3 else ''})"

    raise DataError(f"{where}: the labels mix numbers and words: {some(True)} and {some(False)}; write every label "
                    "the same way (all words or all numbers), or declare the label set (labels= / data.labels) if "
                    "each value is a class of its own")


def _rows(rows: list[int]) -> str:
    return ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")


def check_texts(texts: Sequence[object], where: str) -> tuple[str, ...]:
    """The texts as a tuple, or an error naming the rows whose text is empty or not a string."""
    if not texts:
        raise DataError(f"{where} has no examples; it needs at least one row of text and label")
    empty = [row for row, text in enumerate(texts, 1) if not isinstance(text, str) or not text.strip()]
    if empty:
        raise DataError(f"{where}: {len(empty)} examples have an empty or non-string text (rows {_rows(empty)}); "
                        "every example needs some text")
    return tuple(texts)


def columns_of(records: list[dict], available: Sequence[str], wanted: dict[str, str | None], where: str) -> list[list]:
    """The values of each wanted column (None -> skipped), or one error naming every missing column."""
    missing = [f"{role} column {column!r}" for role, column in wanted.items() if column and column not in available]
    if missing:
        raise DataError(f"{where} has no {' and no '.join(missing)}; its columns are {list(available)} "
                        "(choose them with text_column= / label_column=)")
    return [[record.get(column) for record in records] if column else None for column in wanted.values()]


__all__ = ["SPLIT_ALIASES", "SPLIT_NAMES", "DataError", "TextDataset", "check_texts", "columns_of",
           "encode_labels"]
