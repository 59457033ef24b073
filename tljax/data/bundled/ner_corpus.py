"""The named-entity corpus written for tljax: Brazilian Portuguese documents and their English translations,
entity for entity (`ner/*.yaml`, one file per register; `ner/README.md` says how it was made).

Each sentence is kept as readable inline markup, `[Maria Souza]{PER} chegou a [Recife]{LOC}.`, from which
`parse_markup` takes the plain text and the character span of each entity. Loaded by name: `ner-pt` and
`ner-en` (one example per sentence, a document's sentences in one split). `python -m tljax.data export ner-pt
DIR` writes the offsets as JSON Lines and the tags as a CoNLL file; `check_corpus` is what the tests hold the
files to.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections import Counter
from functools import cache
from importlib import resources

import yaml

from tljax.data.dataset import DataError
from tljax.data.tagged import TaggedDataset, check_spans, from_entity_spans, word_spans
from tljax.tagging import entities

TYPES = ("DATE", "LOC", "MISC", "ORG", "PER")
REGISTERS = ("news", "legal", "medical", "reviews", "everyday")
NER_CORPORA = {"ner-pt": "pt-BR", "ner-en": "en"}
LICENCE = "CC BY 4.0, written for tljax (tljax/data/bundled/ner/README.md)"
_ENTITY = re.compile(r"\[([^\[\]{}]+)\]\{([A-Z]+)\}")
_BRACKETS = re.compile(r"[\[\]{}]")
NEAR_DUPLICATE = 0.85  # difflib ratio at which two sentences count as one written twice


@dataclasses.dataclass(frozen=True)
class Sentence:
    document: str
    register: str
    split: str
    number: int  # within its document, from 1
    text: dict[str, str]  # language ("pt", "en") -> plain text
    spans: dict[str, tuple[tuple[int, int, str], ...]]  # language -> (start, end, type) of each entity

    @property
    def id(self) -> str:
        return f"{self.document}/{self.number}"


def parse_markup(markup: str, where: str = "markup") -> tuple[str, list[tuple[int, int, str]]]:
    """`[words]{TYPE}` markup -> (plain text, [(start, end, TYPE), ...]); a stray bracket or an unknown type is
    an error naming `where`."""
    text, spans, position = [], [], 0
    length = 0
    for match in _ENTITY.finditer(markup):
        before = markup[position:match.start()]
        surface, label = match.group(1), match.group(2)
        if label not in TYPES:
            raise DataError(f"{where}: entity type {label!r} of [{surface}] is not one of {', '.join(TYPES)}")
        text.append(before)
        length += len(before)
        spans.append((length, length + len(surface), label))
        text.append(surface)
        length += len(surface)
        position = match.end()
    text.append(markup[position:])
    plain = "".join(text)
    stray = _BRACKETS.search(_ENTITY.sub("", markup))
    if stray:
        raise DataError(f"{where}: a stray {stray.group()!r} outside [words]{{TYPE}} markup in {markup!r}")
    check_spans(plain, spans, where)
    return plain, spans


def split_of(document_number: int) -> str:
    """The fixed split of a register's `document_number`-th document (from 1): every 8th is test, every 8th
    counted from the 4th is validation, the rest train (75 / 12.5 / 12.5 of each register)."""
    return "test" if document_number % 8 == 0 else "validation" if document_number % 8 == 4 else "train"


@cache
def sentences() -> tuple[Sentence, ...]:
    """Every sentence of every register, in file order."""
    found = []
    folder = resources.files(__package__).joinpath("ner")
    for register in REGISTERS:
        where = f"ner/{register}.yaml"
        documents = yaml.safe_load(folder.joinpath(f"{register}.yaml").read_text(encoding="utf-8"))
        for number, document in enumerate(documents, 1):
            for position, pair in enumerate(document["sentences"], 1):
                text, spans = {}, {}
                for language in ("pt", "en"):
                    text[language], parsed = parse_markup(pair[language], f"{where}, {document['id']}/{position}")
                    spans[language] = tuple(parsed)
                found.append(Sentence(document["id"], register, split_of(number), position, text, spans))
    return tuple(found)


def load_ner(name: str) -> TaggedDataset:
    """`ner-pt` or `ner-en`: one example per sentence, grouped by document, with the corpus's fixed splits."""
    if name not in NER_CORPORA:
        raise DataError(f"unknown tagged corpus {name!r}; known: {', '.join(NER_CORPORA)}")
    language = name.split("-")[1]
    rows = [(s.text[language], s.spans[language]) for s in sentences()]
    return from_entity_spans(name, rows, TYPES, groups=tuple(s.document for s in sentences()),
                             predefined_split=tuple(s.split for s in sentences()), language=NER_CORPORA[name])


def check_corpus() -> dict:
    """The corpus's invariants, as the tests and the README state them: unique ids, every entity's span
    re-read from the plain text, the same entity types in each sentence and its translation, no near-duplicate
    sentences in a language. Raises DataError on the first breach; returns the counts the README shows."""
    every = sentences()
    ids = Counter(s.id for s in every)
    documents = Counter(s.document for s in every)
    repeated = [i for i, n in ids.items() if n > 1]
    if repeated:
        raise DataError(f"sentence ids repeat: {repeated[:5]}")
    for s in every:
        for language in ("pt", "en"):
            tags = [label for _, _, label in s.spans[language]]
            words = word_spans(s.text[language], [x for a, b, _ in s.spans[language] for x in (a, b)])
            for start, end, _ in s.spans[language]:  # every entity is whole words
                if not any(a == start for a, _ in words) or not any(b == end for _, b in words):
                    raise DataError(f"{s.id} ({language}): entity at {start}..{end} does not fall on word bounds")
            if language == "en" and Counter(tags) != Counter(label for _, _, label in s.spans["pt"]):
                raise DataError(f"{s.id}: the English sentence has entity types {sorted(tags)}, the Portuguese "
                                f"{sorted(label for _, _, label in s.spans['pt'])}; they must match")
    for language in ("pt", "en"):
        refuse_near_duplicates([s for s in every], language)
    counts = {}
    for language in ("pt", "en"):
        dataset = load_ner(f"ner-{language}")
        per_split = {}
        for split in ("train", "validation", "test"):
            part = dataset.subset([i for i, x in enumerate(dataset.predefined_split) if x == split])
            per_split[split] = {"documents": len(set(part.groups)), "sentences": len(part),
                                "words": sum(len(w) for w in part.words), **part.entity_counts()}
        counts[language] = per_split
    counts["registers"] = dict(Counter(s.register for s in every))
    counts["documents"] = len(documents)
    # entities recovered from the tags are the entities written
    for language in ("pt", "en"):
        dataset = load_ner(f"ner-{language}")
        for s, tags in zip(every, dataset.tags):
            if len(entities(tags)) != len(s.spans[language]):
                raise DataError(f"{s.id} ({language}): {len(s.spans[language])} entities written, "
                                f"{len(entities(tags))} in its tags")
    return counts


def refuse_near_duplicates(every: list, language: str) -> None:
    """Refuses two items (each with an `id` and `text[language]`: sentences, questions) whose texts in `language`
    are near-duplicates (difflib ratio >= NEAR_DUPLICATE), naming both."""
    texts = [" ".join(s.text[language].casefold().split()) for s in every]
    by_length = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for n, i in enumerate(by_length):  # only sentences of similar length can reach the ratio
        matcher = difflib.SequenceMatcher(None, b=texts[i], autojunk=False)  # b: the side it indexes once
        for j in by_length[n + 1:]:
            if len(texts[j]) > len(texts[i]) / NEAR_DUPLICATE + 1:
                break
            matcher.set_seq1(texts[j])
            if matcher.real_quick_ratio() >= NEAR_DUPLICATE and matcher.quick_ratio() >= NEAR_DUPLICATE \
                    and matcher.ratio() >= NEAR_DUPLICATE:
                raise DataError(f"{every[i].id} and {every[j].id} ({language}) are near-duplicates: "
                                f"{texts[i]!r} / {texts[j]!r}")
