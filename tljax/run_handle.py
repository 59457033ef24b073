"""`tljax.Run`: a finished run in Python, as `tljax.fine_tune` returns it and `Run.load(path)` opens it.

    run = tljax.Run.load("runs/lora")
    run.metrics["test"]["accuracy"]          # the summary's figures
    run.curves()                             # a matplotlib Figure (a notebook shows it)
    run.predict(["a delightful film"])      # [{"text": ..., "label": "positive", "probabilities": {...}}]
    run.compare(other)                       # a pandas DataFrame, a row per run

Everything is read from the run folder as `python -m tljax.train` wrote it (summary.json, metrics.jsonl,
curves.json, diagnosis.txt, export/); predictions go through `tljax.predict`, the PyTorch lines are the ones the
command's report prints (`tljax.train.outcome`), the figure is `tljax.train.curves`'.
"""

from __future__ import annotations

import html
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tljax.errors import InputError
from tljax.progress import quiet_libraries
from tljax.predict import AnswerFinder, EntityTagger, TextGenerator, load_predictor
from tljax.report import methods_text
from tljax.runs import find_export
from tljax.train import curves as learning_curves
from tljax.train.outcome import export_of, metrics_line, pytorch_loading

if TYPE_CHECKING:
    import pandas
    from matplotlib.figure import Figure


class Run:
    """A finished run: its folder (config.yaml, summary.json, metrics, curves, export/), or an export alone."""

    def __init__(self, path: str | Path):
        """Opens the finished run at `path`: a run folder or its export directory (`Run.load`)."""
        path = Path(path).expanduser()
        if (path / "summary.json").is_file():  # a run folder
            self.path, self.export_dir = path, export_of(path)
        else:  # an export: its run folder is where the loop wrote it, if it is still there
            self.export_dir = find_export(path)  # refuses what is not a finished run, in one line
            folder = self.export_dir.parent
            folder = folder if (folder / "summary.json").is_file() else folder.parent
            self.path = folder if (folder / "summary.json").is_file() else self.export_dir
        if not (self.export_dir / "run.json").is_file():
            find_export(self.path)  # says why there is no export to read (a multi-task run names its tasks)
        self.summary: dict[str, Any] | None = _read_json(self.path / "summary.json")
        config = self.path / "config.yaml"
        self.config: dict[str, Any] = yaml.safe_load(config.read_text()) if config.is_file() else {}
        self.info: dict[str, Any] = json.loads((self.export_dir / "run.json").read_text())
        self._predictor = None

    @classmethod
    def load(cls, path: str | Path) -> Run:
        """The finished run at `path` (a run folder, or its export directory)."""
        try:
            return cls(path)
        except InputError as error:  # the one line, not a traceback from deep inside
            raise error.with_traceback(None) from None

    # -- what the run measured ------------------------------------------------------------------------------

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        """{"test": the test figures of the best checkpoint, "validation": the validation figures at that
        checkpoint's step}, as summary.json and metrics.jsonl hold them (accuracy, f1, ... as the task measures)."""
        summary = self._needs_folder("metrics")
        validation = {}
        for line in (self.path / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            if record.get("split") == "validation" and record.get("step") == summary["best_step"]:
                validation = {k: v for k, v in record.items() if k not in ("split", "step")}
        return {"test": summary["test"], "validation": validation}

    @property
    def diagnosis(self) -> str:
        """The curves read as a person would (under-fitting, over-fitting, a good fit) and what to try."""
        return self._needs_folder("diagnosis")["diagnosis"]

    def curves(self) -> Figure:
        """The learning curves (train and validation loss; the validation metric) as a matplotlib Figure, drawn as
        the run drew curves.png; a notebook displays it when it is a cell's value."""
        self._needs_folder("curves")
        points = learning_curves.load(self.path)
        if points is None:
            raise InputError(f"{self.path} finished before runs kept their curves' points (curves.json); its curves "
                             f"are the picture {self.path / 'curves.png'}")
        return learning_curves.figure(points)

    # -- using the result -------------------------------------------------------------------------------------

    def predict(self, texts: str | Sequence[str], contexts: str | Sequence[str] | None = None, *,
                task: str | None = None) -> dict[str, Any] | list[dict[str, Any]]:
        """What the run says about each text, as `python -m tljax.predict --json` prints it: a classifier's
        {"text", "label", "probabilities"}, a tagger's {"text", "entities": [{"label", "start", "end", "text",
        "score"}]}, a seq2seq run's {"text", "output"} (`task`: a multi-task run's task); a question-answering run
        takes the questions as `texts` and their `contexts` (one for all, or one each) and gives {"question",
        "answer", "start", "end", "score", "answered"}. One text gives one record; a list, a list."""
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        try:
            with quiet_libraries():  # loading imports transformers and its tqdm
                predictor = self._load_predictor()
            if isinstance(predictor, AnswerFinder):
                if contexts is None:
                    raise InputError("this is a question-answering run: give the questions and their contexts, "
                                     "run.predict(questions, contexts)")
                contexts = [contexts] * len(texts) if isinstance(contexts, str) else list(contexts)
                found = [{"question": q, **a} for q, a in zip(texts, predictor(texts, contexts))]
            elif contexts is not None:
                raise InputError(f"this is a {self.info.get('task')} run: give only the texts, not contexts")
            elif isinstance(predictor, TextGenerator):
                found = [{"text": t, "output": o} for t, o in zip(texts, predictor(texts, task=task))]
            elif isinstance(predictor, EntityTagger):
                found = [{"text": t, "entities": e} for t, e in zip(texts, predictor(texts))]
            else:
                found = [{"text": t, "label": label, "probabilities": p} for t, (label, p) in zip(texts, predictor(texts))]
        except InputError as error:
            raise error.with_traceback(None) from None
        return found[0] if single else found

    def export(self, path: str | Path | None = None) -> Path:
        """The export directory (trainable.safetensors, run.json, and where the methods allow them a Hugging Face
        directory `model/` and a PEFT adapter `adapter/`); with `path`, a copy of it there, which is returned."""
        if path is None:
            return self.export_dir
        target = Path(path).expanduser()
        if target.exists():
            raise InputError(f"{target} already exists; give export() a new folder to copy the export into")
        shutil.copytree(self.export_dir, target)
        return target

    @property
    def pytorch_code(self) -> str:
        """Python that loads the export in PyTorch (`transformers`, and `peft` for an adapter): the lines the run's
        report prints ("in PyTorch: ..."); empty where PyTorch has no class for it."""
        lines = []
        for number, (code, note) in enumerate(pytorch_loading(self.export_dir)):
            library = code.split(".", 1)[0]
            if number:
                lines.append("# or" + (" the PEFT adapter on its base model:" if library == "peft" else ":"))
            lines += [f"import {library}", f"model = {code}"] + ([f"# {note}"] if note else [])
        return "\n".join(lines)

    def compare(self, *others: Run | str | Path) -> pandas.DataFrame:
        """This run and `others` (runs or their paths) side by side: a row per run (its folder's name) with the
        model, methods, task, trainable and total parameters, steps, training seconds and every test figure."""
        import pandas

        runs = [self, *(other if isinstance(other, Run) else Run.load(other) for other in others)]
        return pandas.DataFrame([run._row() for run in runs]).set_index("run")

    # -- showing it -----------------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}: {self._headline()})"

    def _repr_html_(self) -> str:
        """A notebook's view: the headline, the test figures, the diagnosis and the export."""
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{_shown(v)}</td></tr>"
                       for k, v in (self.summary or {}).get("test", {}).items() if _scalar(v))
        diagnosis = html.escape((self.summary or {}).get("diagnosis", "")).replace("\n", "<br>")
        return (f"<div><b>{html.escape(str(self.path))}</b>: {html.escape(self._headline())}"
                + (f"<table><tr><th>test</th><th></th></tr>{rows}</table>" if rows else "")
                + (f"<p>{diagnosis}</p>" if diagnosis else "")
                + f"<p>export: <code>{html.escape(str(self.export_dir))}</code></p></div>")

    def _headline(self) -> str:
        what = f"{self.info.get('model')} + {methods_text({'method': list(self.info.get('method', ()))})}, " \
               f"{self.info.get('task')}"
        if self.summary is None:
            return f"{what} (an export without its run folder)"
        summary = self.summary
        return (f"{what}; test {metrics_line(summary['test'])}; {summary['trainable_parameters']:,} of "
                f"{summary['total_parameters']:,} parameters trained, {summary['steps']} steps")

    def _row(self) -> dict[str, Any]:
        summary = self.summary or {}
        row = {"run": self.path.name, "model": self.info.get("model"),
               "method": methods_text({"method": list(self.info.get("method", ()))}), "task": self.info.get("task"),
               "trainable parameters": summary.get("trainable_parameters"),
               "total parameters": summary.get("total_parameters"), "steps": summary.get("steps"),
               "training seconds": summary.get("training_seconds")}
        return {**row, **{f"test {k}": v for k, v in summary.get("test", {}).items() if _scalar(v)}}

    def _needs_folder(self, what: str) -> dict[str, Any]:
        if self.summary is None:
            raise InputError(f"{self.path} is an export without its run folder, which holds the run's {what} "
                             "(summary.json, metrics.jsonl, curves.json): open the folder the run wrote")
        return self.summary

    def _load_predictor(self):
        if self._predictor is None:  # the model is built once, on first use
            self._predictor = load_predictor(self.export_dir)
        return self._predictor


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shown(value: float | int) -> str:
    return f"{value:.4f}" if isinstance(value, float) else f"{value:,}"
