"""Training runs started from the page: each a `python -m tljax.train` process, watched through its files.

The process owns the run folder (the engine's lock: a second start into the same folder is refused), writes
`metrics.jsonl` as it goes (the page's progress bar and curve), saves a checkpoint and exits when stopped
(SIGTERM), and can be resumed. A finished run has `summary.json` and `export/`, so the page lists it as a
variant at the next refresh.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from harness.app.access import check_corpus, check_listed, check_run_name
from harness.app.catalogue import learning_curves
from harness.training import NER_HEAD_RATE, NER_METHODS, QA_HEAD_RATE, QA_METHODS
from tljax import zoo
from tljax.data import PACKAGED_CORPORA, load_source
from tljax.data.bundled.ner_corpus import NER_CORPORA
from tljax.data.bundled.qa_corpus import QA_CORPORA
from tljax.data.qa import QA_SUFFIXES
from tljax.data.sources import load_questions, load_tagged
from tljax.data.tagged import CONLL_SUFFIXES, JSONL_SUFFIXES
from tljax.errors import InputError
from tljax.methods import METHODS
from tljax.train.__main__ import EXIT_STOPPED
from tljax.train.rundir import RunDirectoryError, check_usable, has_checkpoint

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# each method's run config (its learning rates); the page sets the model, data, budget and folder
METHOD_CONFIGS = {name: CONFIGS / f"{name.replace('-', '_')}.yaml" for name in METHODS}
TEXT_PREFIXES = {"e5-small": "query: ", "e5-small-enpt": "query: "}
# what the page trains, with the packaged corpora of each
TASKS = {"sequence-classification": tuple(PACKAGED_CORPORA), "token-classification": tuple(NER_CORPORA),
         "question-answering": tuple(sorted(QA_CORPORA))}
UPLOAD_SUFFIXES = {"sequence-classification": (".csv", ".tsv"),
                   "token-classification": (*CONLL_SUFFIXES, *JSONL_SUFFIXES),
                   "question-answering": QA_SUFFIXES}
# the tasks trained from their own config with the method swapped in: (config, each method's options and rate,
# gradual unfreezing's rate of the new head)
SWAPPED = {"token-classification": ("ner.yaml", NER_METHODS, NER_HEAD_RATE),
           "question-answering": ("qa.yaml", QA_METHODS, QA_HEAD_RATE)}


class TrainError(InputError):
    """A training start that cannot be made, said so the page can show it."""


def csv_columns(path: Path) -> list[str]:
    """The header of an uploaded CSV / TSV file (empty if it has none)."""
    text = Path(path).read_text(encoding="utf-8-sig", errors="replace")
    delimiter = "\t" if Path(path).suffix.lower() == ".tsv" else ","
    return next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter), [])


def check_data(source: str, text_column: str, label_column: str, labels: list[str] | None,
               task: str = "sequence-classification") -> str:
    """Loads the data as the run will (`tljax.data.load_source`, `load_tagged` for token classification,
    `load_questions` for question answering); a one-line summary, or a TrainError saying what was found (columns
    missing, labels outside the declared set, a tag that breaks its scheme, an answer not where its offset says,
    ...)."""
    try:
        if task == "question-answering":
            questions = load_questions(source)
            unanswerable = sum(not answers for answers in questions.answers)
            return (f"{len(questions)} questions about {len(set(questions.groups))} passages ({unanswerable} "
                    "unanswerable)")
        if task == "token-classification":
            tagged = load_tagged(source, types=labels or None)
            counts = ", ".join(f"{name} {count}" for name, count in tagged.entity_counts().items())
            return f"{len(tagged)} texts (entities: {counts})"
        dataset = load_source(source, text_column=text_column, label_column=label_column, labels=labels or None)
    except InputError as error:
        raise TrainError(str(error)) from None
    counts = ", ".join(f"{name} {count}" for name, count in dataset.class_counts().items())
    return f"{len(dataset)} examples ({counts})"


@dataclasses.dataclass
class Job:
    """A training process started from the page."""

    run_dir: Path
    process: subprocess.Popen
    max_steps: int
    log: Path

    @property
    def state(self) -> str:
        """running | finished | stopped (resumable) | failed"""
        code = self.process.poll()
        if code is None:
            return "running"
        if code == 0:
            return "finished"
        # stopped from the page (the engine exits 3, or dies of the SIGTERM before its handler is in place), with
        # a checkpoint to resume from; a stop for a non-finite loss, or before any checkpoint, is a failure
        stopped = code in (EXIT_STOPPED, -signal.SIGTERM) and "non-finite" not in self.message().lower()
        return "stopped" if stopped and has_checkpoint(self.run_dir) else "failed"

    def progress(self) -> tuple[int, int]:
        """(last step logged, steps in all)."""
        train, validation = learning_curves(self.run_dir)
        steps = [r["step"] for r in train + validation]
        return (max(steps) if steps else 0), self.max_steps

    def message(self) -> str:
        """The process's last line of output (its error, or where the result went)."""
        try:
            lines = [line for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return ""
        # the engine's progress bar redraws with carriage returns: show the last state of the last line
        return re.split(r"\r", lines[-1])[-1].strip() if lines else ""

    def stop(self) -> None:
        """SIGTERM: the engine saves a checkpoint at the end of the step and exits (resumable)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)


class Trainer:
    """Starts and tracks the page's training processes (one per run folder). `public`: the page listens beyond
    loopback, so a run starts only from a packaged model on a packaged corpus or an uploaded file (access.py)."""

    def __init__(self, runs_folder: Path, public: bool = False):
        self.runs_folder = Path(runs_folder)
        self.public = public
        self.jobs: dict[Path, Job] = {}
        self._lock = threading.Lock()

    def start(self, *, model: str, method: str, source: str, steps: int, name: str, text_column: str = "text",
              label_column: str = "label", labels: list[str] | None = None, resume: bool = False,
              batch_size: int = 16, task: str = "sequence-classification") -> Job:
        """Starts `python -m tljax.train` for `method` on `model` with `source` for `steps` steps into
        runs_folder/name (or resumes it). Refuses at once what the engine would refuse, and what the page may not
        open (access.py). `task`: sequence-classification (the method's config), token-classification
        (configs/ner.yaml with the method swapped in, at its NER rate; `labels`: the entity types) or
        question-answering (configs/qa.yaml with the method swapped in, at its QA rate; no labels)."""
        if task not in TASKS:
            raise TrainError(f"unknown task {task!r}; the page trains {', '.join(TASKS)}")
        if method not in METHOD_CONFIGS:
            raise TrainError(f"unknown method {method!r}; valid: {', '.join(METHOD_CONFIGS)}")
        run_dir = check_run_name(name, self.runs_folder)
        check_listed(self.public, "models", model, zoo.PACKAGED)
        check_corpus(self.public, source, TASKS[task])
        if not 1 <= steps <= 100_000:
            raise TrainError(f"steps must be between 1 and 100000, got {steps}")
        if task == "question-answering" and labels:
            raise TrainError(f"a question-answering run has no labels (its answers are spans of the passage), got "
                             f"{labels}; leave the labels empty")
        with self._lock:
            running = self.jobs.get(run_dir)
            if running is not None and running.state == "running":
                raise TrainError(f"a run is already training into {run_dir}; wait for it, stop it, or choose "
                                 "another name")
            try:
                check_usable(run_dir, resume=resume)
            except RunDirectoryError as error:
                raise TrainError(str(error)) from None
            check_data(source, text_column, label_column, labels, task)
            overrides = {"model": model, "output_dir": str(run_dir), "data.source": source,
                         "training.max_steps": steps, "training.eval_steps": max(1, steps // 4),
                         "training.logging_steps": max(1, min(10, steps // 10)),
                         "training.per_device_train_batch_size": batch_size}
            if task in SWAPPED:
                name_of_config, rates, head_rate = SWAPPED[task]
                options, rate = rates[method]
                config = CONFIGS / name_of_config
                overrides.update({"method": {"name": method, **options}, "training.learning_rate": rate})
                if method == "gradual-unfreezing":  # the new head's own rate
                    overrides["training.new_learning_rate"] = head_rate
            else:
                config = METHOD_CONFIGS[method]
                overrides.update({"data.text_column": text_column, "data.label_column": label_column})
            if labels:
                overrides["data.labels"] = list(labels)
            if model in TEXT_PREFIXES:
                overrides["data.text_prefix"] = TEXT_PREFIXES[model]
            command = [sys.executable, "-m", "tljax.train", "--config", str(config)]
            for key, value in overrides.items():
                command += ["--set", f"{key}={json.dumps(value)}"]  # JSON is YAML: "query: " stays a string
            if resume:
                command.append("--resume")
            self.runs_folder.mkdir(parents=True, exist_ok=True)
            log = self.runs_folder / f"{name}.log"
            with log.open("a") as handle:
                process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            job = Job(run_dir, process, steps, log)
            self.jobs[run_dir] = job
            return job

    def job(self, name: str) -> Job | None:
        return self.jobs.get(self.runs_folder / name)
