"""`tljax.fine_tune`: a run from Python, in the words of Hugging Face's `Trainer` (a notebook's entry point).

    run = tljax.fine_tune(model="minilm-l6", data=frame, method="lora", learning_rate=3e-3, max_steps=200,
                          output_dir="runs/reviews")
    run.metrics["test"]["accuracy"], run.curves(), run.predict(["a delightful film"])

It is `python -m tljax.train` in this process: the arguments become the same `RunConfig` the command reads (the
embedded default run, or `config=`, with the arguments set on it, as `--set` would), and the command's own
`launch` trains it. Data given in memory (a pandas DataFrame, a `datasets.Dataset` or `DatasetDict`, (texts,
labels) lists, or a mapping of split names to any of them) is written into the run folder first
(`<output_dir>/data/train.jsonl`, and `validation.jsonl` / `test.jsonl` where given), so that the saved
config.yaml reads it and `python -m tljax.train --config <output_dir>/config.yaml --set output_dir=...`
repeats the run (and `fine_tune(config=<output_dir>/config.yaml, output_dir=...)` from Python).

Bad input raises the command's one-line error (a `tljax.errors.InputError`) from here, not from deep inside; an
interrupted run (a notebook's interrupt button is SIGINT, which the loop answers as the command does: it stops
after the step and saves a checkpoint) raises `TrainingStopped`, and `fine_tune(..., resume=True)` continues it.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import yaml

from tljax.cache import enable_compilation_cache
from tljax.data.bundled import BUNDLED_CORPORA
from tljax.data.dataset import SPLIT_ALIASES, DataError
from tljax.data.packaged import PACKAGED_CORPORA
from tljax.errors import InputError
from tljax.progress import quiet_libraries
from tljax.run_handle import Run
from tljax.train.config import ConfigKeyError, RunConfig, TrainingConfig, load_config
from tljax.train.launch import launch
from tljax.train.loop import TrainingStopped, with_defaults, config_changes
from tljax.train.outcome import result_lines
from tljax.train.rundir import RUN_DATA, RunDirectoryError, check_usable, has_checkpoint

if TYPE_CHECKING:
    import datasets
    import pandas

    # What `data=` takes: a source the command reads (a packaged corpus name, a CSV / JSON Lines file, hf:DIR,
    # tfds:DIR), a table in memory ((texts, labels): two sequences of the same length; records: one mapping a
    # row), or {split name: a table}
    Table = Union[pandas.DataFrame, datasets.Dataset, tuple[Sequence[str], Sequence[Any]], Sequence[Mapping[str, Any]]]
    DataArgument = Union[str, Path, Table, datasets.DatasetDict, Mapping[str, Table]]
    MethodArgument = Union[str, Mapping[str, Any], Sequence[Union[str, Mapping[str, Any]]]]

# Hugging Face `TrainingArguments` names whose tljax setting is named otherwise (the rest are the same names:
# `TrainingConfig`'s fields)
RENAMED = {"label_smoothing_factor": "label_smoothing", "bf16": "dtype"}
# the usual names of a table's columns, by what they hold (lower case)
TEXT_NAMES = ("text", "sentence", "review", "content", "document", "tweet", "comment")
LABEL_NAMES = ("label", "labels", "sentiment", "class", "category")
INPUT_NAMES = ("text", "input", "source", "document", "article", "prompt")
TARGET_NAMES = ("target", "output", "summary", "translation", "response")
# the corpora a data source names (not files)
KNOWN_CORPORA = {*PACKAGED_CORPORA, *BUNDLED_CORPORA}
# tasks whose files hold records of their own form (text + entities spans; question, context, answers), written
# as given
RECORD_TASKS = ("token-classification", "question-answering")


def fine_tune(model: str | None = None, data: DataArgument | None = None, method: MethodArgument | None = None,
              task: str | None = None, output_dir: str | Path | None = None, *,
              config: str | Path | Mapping[str, Any] | None = None, text_column: str | None = None,
              label_column: str | None = None, resume: bool = False, **training_arguments: Any) -> Run:
    """Fine-tunes `model` on `data` with `method` for `task`, into `output_dir`, as `python -m tljax.train`
    would, and returns the finished `Run`.

    model: a packaged name (`python -m tljax.zoo list`), a Hugging Face directory or a cached id.
    data: a packaged corpus name, a .csv / .jsonl file, hf:DIR or tfds:DIR (as data.source); or a pandas
        DataFrame, a `datasets.Dataset` / `DatasetDict`, (texts, labels) lists, or {"train": ..., "validation":
        ..., "test": ...} of those (splits not given are carved out of train by the config's fractions). The
        text and label columns are found by their usual names (text, sentence, review, ...; label, sentiment,
        ...), or named with `text_column=` / `label_column=` (a seq2seq run's output: `label_column=`). A token
        classification or question answering table is written as its records are (those tasks' JSON Lines form).
    method: "lora", {"name": "lora", "rank": 8}, or a list of them (methods compose); `python -m tljax.methods`.
    task: "sequence-classification", "token-classification", "question-answering", "seq2seq", "masked-lm",
        "causal-lm".
    config: a run config (a YAML path, or a mapping of its sections) to start from; default: the embedded
        default run (`python -m tljax.train` with no --config). The other arguments are set on it.
    resume: continue the run in `output_dir` from its checkpoint (with the same arguments and data).
        Without it, an `output_dir` that holds a finished run of the same arguments and data (a notebook's cells
        run again) is loaded, not trained again; one that holds any other run is refused.
    training_arguments: Hugging Face `TrainingArguments` names (learning_rate, num_train_epochs, max_steps,
        per_device_train_batch_size, eval_steps, warmup_ratio, weight_decay, seed, bf16, label_smoothing_factor,
        metric_for_best_model, ...; `TrainingConfig`'s fields), as `training.*` settings.

    Raises the command's one-line `InputError` for bad input (nothing is left written), and `TrainingStopped`
    when the run stops early (interrupted: a checkpoint saved, continue with resume=True; a non-finite loss)."""
    try:
        planned, tables = plan(model, data, method, task, output_dir, config=config, text_column=text_column,
                               label_column=label_column, **training_arguments)
        run_dir = Path(planned.output_dir)
        if not resume and finished_same_run(run_dir, planned, tables):
            # a notebook's cells run again: the run is not trained twice, as the harness scores nothing twice
            print(f"{run_dir} already holds this run, finished (the same settings and data): loaded, not trained "
                  "again (to train it again, delete the folder or choose another output_dir)")
            return _reported(Run(run_dir))
        enable_compilation_cache()  # a rerun of the same shapes does not compile again
        written = write_data(run_dir, tables, resume=resume)
        try:
            with quiet_libraries():
                launch(planned, resume=resume, say=print)
        except InputError:
            _remove(written, run_dir)  # bad input leaves nothing behind, as the command leaves nothing
            raise
    except InputError as error:  # the one line the command prints, raised from here (not a deep traceback)
        raise error.with_traceback(None) from None
    except TrainingStopped as stopped:
        hint = ". Continue with tljax.fine_tune(..., resume=True)" if stopped.resumable else ""
        raise TrainingStopped(f"{stopped}{hint}", resumable=stopped.resumable) from None
    return _reported(Run(run_dir))


def _reported(run: Run) -> Run:
    """`run`, its results and diagnosis printed as the command prints them."""
    print("\n".join(result_lines(run.summary)).lstrip("\n") + f"\n\n{run.summary['diagnosis']}")
    return run


def plan(model: str | None = None, data: DataArgument | None = None, method: MethodArgument | None = None,
         task: str | None = None, output_dir: str | Path | None = None, *,
         config: str | Path | Mapping[str, Any] | None = None, text_column: str | None = None,
         label_column: str | None = None, **training_arguments: Any) -> tuple[RunConfig, dict[str, list[dict]]]:
    """(the `RunConfig` `fine_tune` runs with these arguments, {split: the records it writes into
    <output_dir>/data/<split>.jsonl}); every argument checked, nothing written."""
    settings = {key: value for key, value in (("model", model), ("task", task), ("output_dir", output_dir))
                if value is not None}
    if "output_dir" in settings:
        settings["output_dir"] = str(settings["output_dir"])
    if method is not None:
        settings["method"] = _method_specs(method)
    settings.update(_training_settings(training_arguments))
    base = load_config(config, settings=settings)  # its task and output_dir say how the data is written
    tables: dict[str, list[dict]] = {}
    if isinstance(data, (str, Path)):
        settings["data.source"] = str(data)
        settings.update({f"data.{name}": value for name, value in (("text_column", text_column),
                                                                   (_label_key(base.task), label_column)) if value})
    elif data is not None:
        tables, columns = _tables(data, base.task, text_column, label_column)
        folder = Path(base.output_dir) / RUN_DATA
        # one table is a file the run splits as any file; several splits are read as a directory of data files
        settings["data.source"] = str(folder / "train.jsonl") if list(tables) == ["train"] else f"hf:{folder}"
        settings.update({f"data.{name}": value for name, value in columns.items()})
    elif text_column or label_column:
        raise ConfigKeyError("text_column / label_column name columns of the data; give data= too")
    return load_config(config, settings=settings), tables


def _method_specs(method: MethodArgument) -> dict[str, Any] | list[dict[str, Any]]:
    """"lora" -> {"name": "lora"}; a mapping as it is; a list of either as a list (a bad one is refused when the
    config is checked, in the command's words)."""
    def spec(one):
        return {"name": one} if isinstance(one, str) else dict(one) if isinstance(one, Mapping) else one

    return [spec(one) for one in method] if isinstance(method, (list, tuple)) else spec(method)


def _training_settings(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """{training.<tljax name>: value} of Hugging Face `TrainingArguments`-named keyword arguments; an unknown name
    is refused in one line naming the valid ones."""
    fields = [f.name for f in dataclasses.fields(TrainingConfig)]
    unknown = sorted(name for name in arguments if name not in fields and name not in RENAMED)
    if unknown:
        raise ConfigKeyError(f"unknown training argument{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                             f"valid: {', '.join(sorted([*fields, *RENAMED]))} (other settings: config=)")
    settings = {}
    for name, value in arguments.items():
        if name == "bf16":  # Hugging Face's switch; tljax names the compute dtype
            value = "bfloat16" if value else "float32"
        elif name == "max_steps" and value == -1:  # Hugging Face's "no limit": the epochs decide
            value = None
        elif name == "metric_for_best_model" and isinstance(value, str) and value.startswith("eval_"):
            value = value[len("eval_"):]  # Hugging Face accepts either form of its evaluation metrics
        settings[f"training.{RENAMED.get(name, name)}"] = value
    return settings


def _label_key(task: str) -> str:
    return "target_column" if task == "seq2seq" else "label_column"


# -- data in memory ---------------------------------------------------------------------------------------------


def _tables(data: Any, task: str, text_column: str | None, label_column: str | None
            ) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """({split: records to write}, the data.* column settings that read them) of data given in memory."""
    parts = _splits(data)
    if task in RECORD_TASKS:
        if len(parts) > 1:
            raise DataError(f"{task} data in memory is one table; give its records a split column (train / "
                            f"validation / test) rather than the splits {list(parts)}")
        if text_column or label_column:
            raise DataError(f"{task} records are written as they are (their own JSON Lines form); drop text_column / "
                            "label_column")
        return {"train": _records(parts["train"], "the data")}, {}
    seq2seq = task == "seq2seq"
    tables, names = {}, ("text", "target" if seq2seq else "label")
    for split, table in parts.items():
        records = _records(table, f"the {split} data" if len(parts) > 1 else "the data", names)
        columns = list(dict.fromkeys(key for record in records for key in record))
        where = f"the {split} data" if len(parts) > 1 else "the data"
        text = _column("text" if not seq2seq else "input", text_column, INPUT_NAMES if seq2seq else TEXT_NAMES,
                       columns, where, "text_column")
        label = _column("target" if seq2seq else "label", label_column, TARGET_NAMES if seq2seq else LABEL_NAMES,
                        columns, where, "label_column")
        tables[split] = [{names[0]: record.get(text), names[1]: record.get(label)} for record in records]
    return tables, {"text_column": names[0], _label_key(task): names[1]}


def _splits(data: Any) -> dict[str, Any]:
    """{split name (train / validation / test): table} of the data; one table is the train split."""
    datasets = sys.modules.get("datasets")  # never imported here: data of that kind means it is loaded
    if isinstance(data, Mapping) or (datasets is not None and isinstance(data, datasets.DatasetDict)):
        unknown = [name for name in data if name not in SPLIT_ALIASES]
        if unknown or not data:
            raise DataError(f"the data's splits {list(data)} must be among train, validation, test (or valid, dev)")
        parts = {SPLIT_ALIASES[name]: table for name, table in data.items()}
        if "train" not in parts:
            raise DataError(f"the data has the splits {list(data)} but no train split; give the examples to train on "
                            "as train")
        return parts
    return {"train": data}


def _records(table: Any, where: str, pair: tuple[str, str] = ("text", "label")) -> list[dict[str, Any]]:
    """A table's rows as JSON-ready records: a DataFrame's, a Dataset's (class labels by name), (texts, labels)
    lists as `pair`'s columns, or records as they are."""
    if hasattr(table, "to_dict") and hasattr(table, "columns"):  # a pandas DataFrame
        return json.loads(table.to_json(orient="records", force_ascii=False))  # numpy scalars, NaN as null
    features = getattr(table, "features", None)
    if features is not None and hasattr(table, "to_list"):  # a datasets.Dataset
        named = {name: feature for name, feature in features.items() if hasattr(feature, "int2str")}
        return [{k: named[k].int2str(v) if k in named and v is not None else v for k, v in row.items()}
                for row in table.to_list()]
    if isinstance(table, (list, tuple)) and table and all(isinstance(row, Mapping) for row in table):
        return [dict(row) for row in table]
    if isinstance(table, (list, tuple)) and len(table) == 2 and all(
            isinstance(part, Sequence) and not isinstance(part, str) for part in table):
        texts, labels = table
        if len(texts) != len(labels):
            raise DataError(f"{where} has {len(texts)} texts and {len(labels)} labels; give each text its label")
        return [{pair[0]: text, pair[1]: _plain(label)} for text, label in zip(texts, labels)]
    raise DataError(f"{where} is a {type(table).__name__}; give a pandas DataFrame, a datasets.Dataset, (texts, labels) "
                    "lists, records, or a source name / file path")


def _plain(value: Any) -> Any:
    """A NumPy scalar as the Python number it holds (what JSON writes)."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes)) else value


def _column(role: str, given: str | None, usual: tuple[str, ...], columns: list[str], where: str,
            argument: str) -> str:
    """The column holding the `role` (given by name, or the one column with a usual name); one line otherwise."""
    if given is not None:
        if given not in columns:
            raise DataError(f"{where} has no {role} column {given!r}; its columns are {columns}")
        return given
    found = [column for column in columns if str(column).lower() in usual]
    if len(found) == 1:
        return found[0]
    if found:
        raise DataError(f"{where} has several columns that could hold the {role}s ({', '.join(found)}); name one "
                        f"with {argument}=")
    raise DataError(f"{where} has no column named like a {role} ({', '.join(usual)}); its columns are {columns}: "
                    f"name it with {argument}=")


# -- the run folder -----------------------------------------------------------------------------------------------


def finished_same_run(run_dir: Path, config: RunConfig, tables: dict[str, list[dict]]) -> bool:
    """Whether `run_dir` holds a finished run of `config` (its config.yaml the same, but for output_dir) on the same
    data: `tables` equal to its data/ files, a data file or folder not changed since the run finished. Raises a
    one-line `RunDirectoryError` naming what differs where it holds a finished run of other settings or data;
    False where it holds no finished run (an interrupted one is `write_data`'s and `launch`'s to refuse)."""
    summary, saved = run_dir / "summary.json", run_dir / "config.yaml"
    if not (summary.is_file() and saved.is_file()):
        return False
    again = "choose another output_dir, or delete the folder to train it again"
    recorded = yaml.safe_load(saved.read_text()) or {}
    changed = config_changes(recorded, config)
    if changed:
        here, there = config.to_dict(), with_defaults(recorded)
        shown = "; ".join(f"{key}: {_setting(there, key)!r} there, {_setting(here, key)!r} here" for key in changed[:4])
        more = f" (and {len(changed) - 4} more)" if len(changed) > 4 else ""
        raise RunDirectoryError(f"{run_dir} already holds a finished run with other settings ({shown}{more}); {again}")
    differing = [path.name for path, text in _data_texts(run_dir, tables).items()
                 if not path.is_file() or path.read_text() != text]
    if differing:
        raise RunDirectoryError(f"{run_dir} already holds a finished run on other data ({run_dir / RUN_DATA}: "
                                f"{', '.join(differing)} differ); {again}")
    for source in _local_sources(config.to_dict()):
        if _modified(source) > summary.stat().st_mtime:
            raise RunDirectoryError(f"{run_dir} already holds a finished run, but {source} changed after it "
                                    f"finished; {again}")
    return True


def _local_sources(settings: Any) -> list[Path]:
    """The files and folders on this machine that a config's `source` settings (data, evaluation sets, tasks) read:
    not the packaged corpora, which a name gives."""
    if isinstance(settings, list):
        return [path for item in settings for path in _local_sources(item)]
    if not isinstance(settings, dict):
        return []
    found = []
    for key, value in settings.items():
        if key == "source" and isinstance(value, str) and value and value.lower() not in KNOWN_CORPORA:
            path = Path(value.split(":", 1)[1] if value.startswith(("hf:", "tfds:")) else value).expanduser()
            found += [path] if path.exists() else []
        else:
            found += _local_sources(value)
    return found


def _setting(config: dict, key: str) -> Any:
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def _modified(path: Path) -> float:
    """The latest modification time of a file, or of any file in a folder."""
    return max([path.stat().st_mtime, *(p.stat().st_mtime for p in path.rglob("*"))] if path.is_dir()
               else [path.stat().st_mtime])


def _data_texts(run_dir: Path, tables: dict[str, list[dict]]) -> dict[Path, str]:
    """{<run_dir>/data/<split>.jsonl: its JSON Lines text} of the tables given in memory."""
    return {run_dir / RUN_DATA / f"{split}.jsonl": "".join(json.dumps(record, ensure_ascii=False) + "\n"
                                                           for record in records)
            for split, records in tables.items()}


def write_data(run_dir: Path, tables: dict[str, list[dict]], *, resume: bool) -> list[Path]:
    """Writes each table as <run_dir>/data/<split>.jsonl (what the config's data.source reads) and returns the
    files written. Resuming a run with a checkpoint, the files must hold the same data (nothing is written)."""
    if not tables:
        return []
    check_usable(run_dir, resume=resume)  # not a folder another run holds, or a finished one: nothing written
    folder = run_dir / RUN_DATA
    texts = _data_texts(run_dir, tables)
    if resume and has_checkpoint(run_dir):
        changed = [path.name for path, text in texts.items() if not path.is_file() or path.read_text() != text]
        if changed:
            raise DataError(f"resume: the data differs from the interrupted run's ({folder}: {', '.join(changed)}); "
                            "resume with the same data, or start the run afresh in another output_dir")
        return []
    written = []
    for stale in folder.glob("*.jsonl") if folder.is_dir() else ():  # an earlier start's other splits
        if stale.stem in SPLIT_ALIASES.values() and stale not in texts:
            stale.unlink()
    for path, text in texts.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def _remove(written: list[Path], run_dir: Path) -> None:
    """Removes the data files `write_data` wrote, and the folders left empty by that (the run's too)."""
    for path in written:
        path.unlink(missing_ok=True)
    for folder in (run_dir / RUN_DATA, run_dir):
        if written and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
