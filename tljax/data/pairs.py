"""Text pairs for sequence-to-sequence tasks (input text -> output text): `PairDataset` and its readers.

`load_pairs(source, text_column, target_column)` accepts:

* a bundled parallel set by name (`PARALLEL_CORPORA`): English <-> Portuguese translation of the bundled reviews
  (`reviews-en-pt`, `reviews-pt-en`), of the named-entity corpus's sentences (`ner-en-pt`, `ner-pt-en`) and of the
  question-answering set's questions (`questions-en-pt`, `questions-pt-en`), each with its fixed splits;
* a JSON Lines or CSV / TSV file with an input column and a target column (a record with an empty or non-text
  input or target is refused, naming the file and its line);
* `hf:DIR`, a Hugging Face `datasets` directory (`save_to_disk`, or of data files), its train / validation / test
  splits kept;
* any labelled source `load_source` reads (a packaged corpus, a bundled review set), the label's name as the target:
  a classification task asked as text to text (`sentiment: <review>` -> `positive`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from functools import cache
from pathlib import Path

from tljax.data.bundled import BUNDLED_CORPORA, records
from tljax.data.bundled.ner_corpus import sentences
from tljax.data.bundled.qa_corpus import questions
from tljax.data.dataset import SPLIT_ALIASES, DataError
from tljax.data.frameworks import _hub_offline
from tljax.data.packaged import PACKAGED_CORPORA
from tljax.data.sources import _FORMATS, _read_file, load_source

LANGUAGES = {"en": "en", "pt": "pt-BR"}


@dataclasses.dataclass(frozen=True)
class PairDataset:
    """Inputs with one target text each, plus what splitting must respect (as `TextDataset`)."""

    name: str
    inputs: tuple[str, ...]
    targets: tuple[str, ...]
    groups: tuple[str, ...] | None = None  # one group (e.g. a document) never straddles train/validation/test
    predefined_split: tuple[str, ...] | None = None
    language: str = "und"  # of the targets

    def __post_init__(self) -> None:
        for field in ("inputs", "targets", "groups", "predefined_split"):
            value = getattr(self, field)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, field, tuple(value))
        for field in ("targets", "groups", "predefined_split"):
            value = getattr(self, field)
            if value is not None and len(value) != len(self.inputs):
                raise DataError(f"{self.name}: {field} has {len(value)} entries but there are {len(self.inputs)} "
                                "inputs; every input needs exactly one")

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def texts(self) -> tuple[str, ...]:
        """The inputs: what splitting keys on and checks for leakage (an input seen in training is no test)."""
        return self.inputs

    def subset(self, indices: Iterable[int], name: str | None = None) -> PairDataset:
        idx = list(indices)
        pick = lambda values: None if values is None else tuple(values[i] for i in idx)  # noqa: E731
        return dataclasses.replace(self, name=name or self.name, inputs=pick(self.inputs), targets=pick(self.targets),
                                   groups=pick(self.groups), predefined_split=pick(self.predefined_split))


def _review_split(number: int) -> str:
    """The fixed split of the `number`-th translated review (from 0): every 8th is test, the 4th of every 8
    validation (16 / 16 / 96 of the 128)."""
    return {0: "test", 4: "validation"}.get(number % 8, "train")


@cache
def _parallel(corpus: str) -> tuple[tuple[str, dict[str, str], str], ...]:
    """(group, {language: text}, split) of every item of a bundled parallel corpus: reviews, ner or questions."""
    if corpus == "reviews":
        portuguese = {r["id"]: r["text"] for r in records("reviews-pt")}
        return tuple((r["id"], {"pt": portuguese[r["id"]], "en": r["text"]}, _review_split(n))
                     for n, r in enumerate(records("reviews-pt-en")))
    if corpus == "ner":
        return tuple((s.document, dict(s.text), s.split) for s in sentences())
    return tuple((q.passage, dict(q.text), q.split) for q in questions())


PARALLEL_CORPORA = {f"{corpus}-{a}-{b}": (corpus, a, b) for corpus in ("reviews", "ner", "questions")
                    for a, b in (("en", "pt"), ("pt", "en"))}
PARALLEL_DESCRIPTIONS = {"reviews": "the 128 bundled reviews with an English translation",
                         "ner": "the 842 sentences of the bundled named-entity corpus",
                         "questions": "the 789 questions of the bundled question-answering set"}


def load_parallel(name: str) -> PairDataset:
    """A bundled parallel corpus translated from its first language to its second, e.g. `reviews-en-pt`."""
    corpus, source, target = PARALLEL_CORPORA[name]
    items = _parallel(corpus)
    return PairDataset(name, tuple(text[source] for _, text, _ in items), tuple(text[target] for _, text, _ in items),
                       groups=tuple(group for group, _, _ in items), predefined_split=tuple(s for _, _, s in items),
                       language=LANGUAGES[target])


def _text(value: object) -> str | None:
    """A record's value as text (numbers too: a label may be one), or None when it is none."""
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        return None
    if isinstance(value, (int, float)):
        return str(value)
    return value if isinstance(value, str) and value.strip() else None


def pairs_of(records_: list[dict], columns: list[str], text_column: str, target_column: str, where: str,
             places: list[str]) -> tuple[list[str], list[str]]:
    """(inputs, targets) of `records_`; a missing column or a record without text is refused in one line that
    names `where` and the record's place (`places`: e.g. "line 4")."""
    missing = [f"{role} column {column!r}" for role, column in (("input", text_column), ("target", target_column))
               if column not in columns]
    if missing:
        raise DataError(f"{where} has no {' and no '.join(missing)}; its columns are {columns} (choose them with "
                        "data.text_column / data.target_column)")
    inputs, targets = [], []
    for record, place in zip(records_, places):
        for role, column, into in (("input", text_column, inputs), ("target", target_column, targets)):
            value = _text(record.get(column))
            if value is None:
                raise DataError(f"{where} {place}: the {role} ({column}) is {_shown(record.get(column))}; every "
                                "record needs a non-empty input and target text")
            into.append(value)
    if not inputs:
        raise DataError(f"{where} has no records; it needs at least one input with its target")
    return inputs, targets


def _shown(value: object) -> str:
    if value is None:
        return "missing"
    if isinstance(value, str):
        return "empty"
    return f"not text ({type(value).__name__} {str(value)[:40]!r})"


def read_pair_file(path: Path, text_column: str, target_column: str) -> PairDataset:
    """A JSON Lines / CSV / TSV file of records with an input and a target column."""
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"cannot tell the format of {path}: name it .jsonl, .csv or .tsv")
    rows, columns, lines = _read_file(path, fmt)
    places = [f"line {n}" for n in lines] if lines is not None else [f"record {n}" for n in range(1, len(rows) + 1)]
    inputs, targets = pairs_of(rows, columns, text_column, target_column, str(path), places)
    return PairDataset(path.stem, inputs, targets)


def read_hf_pairs(spec: str, text_column: str, target_column: str) -> PairDataset:
    """`hf:DIR`: a `datasets` directory (save_to_disk) or a directory of data files; its splits kept."""
    import datasets  # slow to import: only when a datasets directory is read

    path = Path(spec).expanduser()
    where = f"hf:{spec}"
    if not path.is_dir():
        raise DataError(f"{where} is not a directory; give a datasets directory (save_to_disk) or one of data files")
    with _hub_offline():
        try:
            if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
                loaded = datasets.load_from_disk(str(path))
            else:
                loaded = datasets.load_dataset(str(path))
        except (ValueError, FileNotFoundError) as error:
            raise DataError(f"{where} could not be read as a dataset: {error}") from None
    parts = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    unknown = [p for p in parts if p not in SPLIT_ALIASES]
    if len(parts) > 1 and unknown:
        raise DataError(f"{where} has the splits {list(parts)}; only train / validation / test are read")
    inputs, targets, split = [], [], []
    for part, rows in parts.items():
        found = pairs_of(list(rows), list(rows.column_names), text_column, target_column, f"{where} ({part})",
                         [f"record {n}" for n in range(1, len(rows) + 1)])
        inputs += found[0]
        targets += found[1]
        split += [SPLIT_ALIASES.get(part, "train")] * len(found[0])
    return PairDataset(path.name, inputs, targets, predefined_split=tuple(split) if len(parts) > 1 else None)


def load_pairs(source: str, *, text_column: str = "text", target_column: str = "target") -> PairDataset:
    """Input / target pairs from a bundled parallel set, a JSON Lines / CSV file, `hf:DIR`, or a labelled corpus
    (the label's name as the target); see the module's docstring."""
    if source in PARALLEL_CORPORA:
        return load_parallel(source)
    if source.startswith("hf:"):
        return read_hf_pairs(source[3:], text_column, target_column)
    if source.lower() in PACKAGED_CORPORA or source.lower() in BUNDLED_CORPORA:
        labelled = load_source(source)
        return PairDataset(labelled.name, labelled.texts, tuple(labelled.label_names[i] for i in labelled.labels),
                           groups=labelled.groups, predefined_split=labelled.predefined_split,
                           language=labelled.language)
    path = Path(source).expanduser()
    if not path.is_file():
        raise DataError(f"data.source {source!r} is neither a parallel set ({', '.join(PARALLEL_CORPORA)}), a labelled "
                        "corpus nor a file; for seq2seq give a .jsonl / .csv file with an input and a target column, "
                        "or hf:DIR")
    return read_pair_file(path, text_column, target_column)


__all__ = ["PARALLEL_CORPORA", "PairDataset", "load_pairs", "load_parallel", "read_pair_file"]
