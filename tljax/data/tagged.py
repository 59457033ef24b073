"""Texts with a tag per word (named entities): `TaggedDataset`, and the readers of the formats users have.

`tljax.data.sources.load_tagged(source, scheme=...)` accepts:

* a bundled corpus by name (`ner-pt`, `ner-en`: `tljax/data/bundled/ner/`);
* a CoNLL-style column file (`.conll`, `.txt`, `.iob`, `.bio`, `.bioes`, `.tsv`, `.col`): one word per line, its
  tag in the last column, blank lines between sentences, `-DOCSTART-` lines between documents (CoNLL-2003,
  LeNER-Br, HAREM in its usual CoNLL conversion); tags in IOB1, IOB2 or BIOES (`scheme`, detected by default);
* a JSON Lines file of texts with character spans, as annotation tools export them:
  `{"text": ..., "entities": [{"start": 0, "end": 11, "label": "PER"}]}` (or doccano's
  `"label": [[0, 11, "PER"]]`), with an optional `document` (or `doc_id`) that keeps a document in one split;
* `hf:DIR`, a Hugging Face `datasets` directory (`save_to_disk`) with `tokens` and `ner_tags` columns (the
  tag names from the `ner_tags` feature), its own splits kept.

Every example keeps its original text and the character span of each word, so predictions go back to the
text. Tags are IOB2 inside tljax (`tljax.tagging`). A malformed file is refused with its file and line.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from tljax.data.dataset import SPLIT_ALIASES, SPLIT_NAMES, DataError
from tljax.tagging import OUTSIDE, TagError, detect_scheme, entities, split_tag, tag_names, to_iob2

CONLL_SUFFIXES = (".conll", ".conllu", ".txt", ".iob", ".iob1", ".iob2", ".bio", ".bioes", ".tsv", ".col")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
# words of a raw text: runs of letters / digits (with inner hyphens and apostrophes: "guarda-chuva", "d'água"),
# or one punctuation mark
WORD = re.compile(r"\w+(?:[-'’]\w+)*|[^\w\s]")

Span = tuple[int, int]


@dataclasses.dataclass(frozen=True)
class TaggedDataset:
    """Texts, the character span of each word in its text, and each word's IOB2 tag."""

    name: str
    texts: tuple[str, ...]
    words: tuple[tuple[Span, ...], ...]  # per text: (start, end) of each word
    tags: tuple[tuple[str, ...], ...]  # per text: one IOB2 tag per word
    types: tuple[str, ...]  # the entity types, in the model's label order
    groups: tuple[str, ...] | None = None  # a document: never split across train / validation / test
    predefined_split: tuple[str, ...] | None = None
    language: str = "und"

    def __post_init__(self) -> None:
        for field in ("texts", "words", "tags", "types", "groups", "predefined_split"):
            value = getattr(self, field)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, field, tuple(value))
        n = len(self.texts)
        for field in ("words", "tags", "groups", "predefined_split"):
            value = getattr(self, field)
            if value is not None and len(value) != n:
                raise DataError(f"{self.name}: {field} has {len(value)} entries but there are {n} texts")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def label_names(self) -> tuple[str, ...]:
        """The model's labels: O, then B- and I- of each type."""
        return tag_names(self.types)

    def word_texts(self, index: int) -> list[str]:
        text = self.texts[index]
        return [text[start:end] for start, end in self.words[index]]

    def subset(self, indices: Iterable[int], name: str | None = None) -> TaggedDataset:
        idx = list(indices)
        pick = lambda values: None if values is None else tuple(values[i] for i in idx)  # noqa: E731
        return dataclasses.replace(self, name=name or self.name, texts=pick(self.texts), words=pick(self.words),
                                   tags=pick(self.tags), groups=pick(self.groups),
                                   predefined_split=pick(self.predefined_split))

    def entity_counts(self) -> dict[str, int]:
        """Entities per type, in `types` order."""
        counts = Counter(e.label for tags in self.tags for e in entities(tags))
        return {t: counts.get(t, 0) for t in self.types}

    def class_counts(self) -> dict[str, int]:
        """Words per tag (what a split description shows)."""
        counts = Counter(tag for tags in self.tags for tag in tags)
        return {name: counts.get(name, 0) for name in self.label_names}


def word_spans(text: str, cuts: Iterable[int] = ()) -> list[Span]:
    """The words of `text` (`WORD`), also cut at the character offsets `cuts` (entity boundaries)."""
    cuts = sorted(set(cuts))
    spans = []
    for match in WORD.finditer(text):
        start = match.start()
        for cut in cuts:
            if match.start() < cut < match.end() and cut > start:
                spans.append((start, cut))
                start = cut
        spans.append((start, match.end()))
    return spans


def tags_from_spans(words: Sequence[Span], spans: Sequence[tuple[int, int, str]]) -> list[str]:
    """IOB2 tags of `words` for entity character `spans` (start, end, type); words must not straddle a span
    boundary (`word_spans(text, cuts=...)` ensures it)."""
    tags = [OUTSIDE] * len(words)
    for start, end, label in spans:
        inside = [i for i, (s, e) in enumerate(words) if s >= start and e <= end]
        for n, i in enumerate(inside):
            tags[i] = f"{'B' if n == 0 else 'I'}-{label}"
    return tags


def from_entity_spans(name: str, rows: Sequence[tuple[str, Sequence[tuple[int, int, str]]]],
                      types: Sequence[str] | None = None, **fields) -> TaggedDataset:
    """A dataset from (text, [(start, end, type), ...]) rows whose spans were checked (`check_spans`)."""
    texts, words, tags = [], [], []
    for text, spans in rows:
        spans_of_words = word_spans(text, [x for s, e, _ in spans for x in (s, e)])
        texts.append(text)
        words.append(tuple(spans_of_words))
        tags.append(tuple(tags_from_spans(spans_of_words, spans)))
    found = sorted({label for _, spans in rows for _, _, label in spans})
    return TaggedDataset(name, tuple(texts), tuple(words), tuple(tags), declared_types(found, types, name), **fields)


def declared_types(found: Sequence[str], declared: Sequence[str] | None, where: str) -> tuple[str, ...]:
    """The declared entity types (checked to cover `found`), or those found, sorted."""
    if declared is None:
        if not found:
            raise DataError(f"{where} has no entities at all; a tagger needs examples of the entities it should "
                            "find")
        return tuple(sorted(found))
    declared = tuple(str(t) for t in declared)
    unknown = sorted(set(found) - set(declared))
    if unknown:
        raise DataError(f"{where} has entity types {unknown} outside the declared data.labels {list(declared)}; add "
                        "them to data.labels or fix those entities")
    return declared


def check_spans(text: str, spans: Sequence[tuple[int, int, str]], where: str) -> None:
    """Refuses a span outside its text, an empty one, one that overlaps another, or a span with spaces at its
    ends (a common off-by-one of annotation exports)."""
    previous = None
    for start, end, label in sorted(spans):
        if not (0 <= start < end <= len(text)):
            raise DataError(f"{where}: entity {label} at {start}..{end} lies outside its text (0..{len(text)}); "
                            "start and end are character offsets with start < end <= len(text)")
        if text[start:end] != text[start:end].strip():
            raise DataError(f"{where}: entity {label} at {start}..{end} ({text[start:end]!r}) starts or ends with "
                            "whitespace; its offsets are probably off by one")
        if previous is not None and start < previous[1]:
            raise DataError(f"{where}: entity {label} at {start}..{end} ({text[start:end]!r}) overlaps entity "
                            f"{previous[2]} at {previous[0]}..{previous[1]} ({text[previous[0]:previous[1]]!r}); "
                            "nested or overlapping entities are not supported: keep one of them")
        previous = (start, end, label)


# ---------------------------------------------------------------- CoNLL column files


def read_conll(path: Path, text: str, scheme: str = "auto", types: Sequence[str] | None = None) -> TaggedDataset:
    """A CoNLL-style column file (see the module's docstring); `scheme` "auto" detects IOB1 / IOB2 / BIOES over the
    whole file."""
    sentences: list[list[tuple[int, str, str]]] = []  # (line, word, tag)
    documents: list[int] = []
    current: list[tuple[int, str, str]] = []
    document, columns = 0, None
    for number, line in enumerate(text.split("\n"), 1):
        fields = line.split()
        if not fields:
            if current:
                sentences.append(current)
                documents.append(document)
                current = []
            continue
        if fields[0] == "-DOCSTART-":
            if current:
                sentences.append(current)
                documents.append(document)
                current = []
            document += 1
            continue
        if len(fields) < 2:
            raise DataError(f"{path}, line {number}: {line.strip()!r} has one column; a CoNLL line is the word, any "
                            "other columns, then its tag (e.g. 'Recife B-LOC'), separated by spaces or tabs")
        if columns is None:
            columns = (len(fields), number)
        elif len(fields) != columns[0]:
            raise DataError(f"{path}, line {number}: {len(fields)} columns, but line {columns[1]} has {columns[0]}; "
                            "every line of a column file has the same columns (a word with a space in it?)")
        current.append((number, fields[0], fields[-1]))
    if current:
        sentences.append(current)
        documents.append(document)
    if not sentences:
        raise DataError(f"{path} holds no tagged words; a CoNLL file has one word and its tag per line")
    for sentence in sentences:
        for number, _, tag in sentence:
            try:
                split_tag(tag)
            except TagError as error:
                raise DataError(f"{path}, line {number}: {error}") from None
    if scheme == "auto":
        scheme = detect_scheme([tag for sentence in sentences for _, _, tag in sentence])
    texts, words, tags = [], [], []
    for sentence in sentences:
        try:
            converted = to_iob2([tag for _, _, tag in sentence], scheme)
        except TagError as error:
            raise DataError(f"{path}, line {sentence[error.position][0]}: {error}") from None
        spans, offset = [], 0
        for _, word, _ in sentence:
            spans.append((offset, offset + len(word)))
            offset += len(word) + 1
        texts.append(" ".join(word for _, word, _ in sentence))
        words.append(tuple(spans))
        tags.append(tuple(converted))
    found = sorted({split_tag(t)[1] for sentence in tags for t in sentence if t != OUTSIDE})
    groups = tuple(f"doc{d}" for d in documents) if document else None  # -DOCSTART- lines: split by document
    return TaggedDataset(str(path), tuple(texts), tuple(words), tuple(tags), declared_types(found, types, str(path)),
                         groups=groups)


# ---------------------------------------------------------------- JSON Lines with character spans


def _record_spans(record: dict, where: str) -> list[tuple[int, int, str]]:
    if "entities" in record:
        raw = record["entities"]
        if not isinstance(raw, list) or not all(isinstance(e, dict) and {"start", "end", "label"} <= set(e)
                                                for e in raw):
            raise DataError(f"{where}: entities must be a list of {{\"start\": ..., \"end\": ..., \"label\": ...}}")
        spans = [(e["start"], e["end"], e["label"]) for e in raw]
    elif "label" in record and isinstance(record["label"], list):  # doccano: [[start, end, label], ...]
        raw = record["label"]
        if not all(isinstance(e, list) and len(e) == 3 for e in raw):
            raise DataError(f"{where}: label must be a list of [start, end, label] triples (doccano's export)")
        spans = [tuple(e) for e in raw]
    else:
        raise DataError(f"{where} has no entities; each line needs \"text\" and \"entities\": [{{\"start\", \"end\", "
                        f"\"label\"}}, ...] (keys found: {', '.join(record)})")
    for start, end, label in spans:
        if not (isinstance(start, int) and isinstance(end, int)) or isinstance(start, bool) \
                or not isinstance(label, str) or not label.strip():
            raise DataError(f"{where}: entity {[start, end, label]} needs whole-number start and end and a label")
        if any(c.isspace() for c in label):
            raise DataError(f"{where}: entity label {label!r} has a space in it; use a single word such as PER")
    return spans


def read_entity_jsonl(path: Path, text: str, types: Sequence[str] | None = None) -> TaggedDataset:
    rows, groups, splits = [], [], []
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{where}: not valid JSON ({error.msg} at column {error.colno}); each line of a JSON Lines "
                            "file is one object") from None
        if not isinstance(record, dict):
            raise DataError(f"{where}: each line must be a JSON object with \"text\" and \"entities\"")
        body = record.get("text")
        if not isinstance(body, str) or not body.strip():
            raise DataError(f"{where}: \"text\" is missing or empty; every line needs the text its entities are in")
        spans = _record_spans(record, where)
        check_spans(body, spans, where)
        rows.append((body, spans))
        groups.append(str(record.get("document", record.get("doc_id", ""))))
        splits.append(record.get("split"))
    if not rows:
        raise DataError(f"{path} has no examples; each line is {{\"text\": ..., \"entities\": [...]}}")
    fields = {}
    if any(groups):
        fields["groups"] = tuple(g or f"line{i}" for i, g in enumerate(groups))
    if any(s is not None for s in splits):
        fields["predefined_split"] = tuple(SPLIT_ALIASES.get(str(s), "train") for s in splits)
    return from_entity_spans(str(path), rows, types, **fields)


# ---------------------------------------------------------------- Hugging Face datasets directories


def read_hf_tokens(directory: Path, types: Sequence[str] | None = None, scheme: str = "auto") -> TaggedDataset:
    """A `save_to_disk` directory (a dataset or a dict of splits) with `tokens` and `ner_tags` (ClassLabel)."""
    import datasets  # slow to import: only for this source

    try:
        loaded = datasets.load_from_disk(str(directory))
    except (FileNotFoundError, ValueError) as error:
        raise DataError(f"hf:{directory} is not a datasets directory written by save_to_disk ({error})") from None
    parts = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(None, loaded)]
    texts, words, tags, splits = [], [], [], []
    scheme_tags = []
    for split, part in parts:
        missing = [c for c in ("tokens", "ner_tags") if c not in part.column_names]
        if missing:
            raise DataError(f"hf:{directory} has no {' and no '.join(missing)} column (its columns: "
                            f"{part.column_names}); a token-classification dataset has tokens and ner_tags")
        feature = part.features["ner_tags"].feature
        names = getattr(feature, "names", None)
        for number, row in enumerate(part):
            tokens = row["tokens"]
            row_tags = [names[t] if names else str(t) for t in row["ner_tags"]]
            if len(tokens) != len(row_tags):
                raise DataError(f"hf:{directory}, {split or 'dataset'} row {number}: {len(tokens)} tokens but "
                                f"{len(row_tags)} tags")
            spans, offset = [], 0
            for token in tokens:
                spans.append((offset, offset + len(token)))
                offset += len(token) + 1
            texts.append(" ".join(tokens))
            words.append(tuple(spans))
            scheme_tags.append((f"{split or 'dataset'} row {number}", row_tags))
            splits.append(SPLIT_ALIASES.get(split, "train") if split else None)
    if scheme == "auto":
        scheme = detect_scheme([t for _, row_tags in scheme_tags for t in row_tags])
    for where, row_tags in scheme_tags:
        try:
            tags.append(tuple(to_iob2(row_tags, scheme)))
        except TagError as error:
            raise DataError(f"hf:{directory}, {where}, word {error.position + 1}: {error}") from None
    found = sorted({split_tag(t)[1] for row in tags for t in row if t != OUTSIDE})
    predefined = tuple(splits) if all(s is not None for s in splits) else None
    return TaggedDataset(f"hf:{directory}", tuple(texts), tuple(words), tuple(tags),
                         declared_types(found, types, f"hf:{directory}"), predefined_split=predefined)


def describe_tagged_splits(splits: Mapping[str, TaggedDataset]) -> str:
    """A table: per split, its texts, words and entities of each type, and the duplicates dropped."""
    names = [name for name in SPLIT_NAMES if name in splits]
    first = splits[names[0]]
    dropped = getattr(splits, "dropped", {})
    rows = [["", *names], ["texts", *(f"{len(splits[n]):,}" for n in names)],
            ["words", *(f"{sum(len(w) for w in splits[n].words):,}" for n in names)]]
    counts = {n: splits[n].entity_counts() for n in names}
    for label in first.types:
        rows.append([f"{label} entities", *(f"{counts[n][label]:,}" for n in names)])
    rows.append(["duplicates dropped", *(f"{dropped.get(n, 0):,}" for n in names)])
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths)))
                     for row in rows)
