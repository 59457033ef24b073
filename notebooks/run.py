"""Executes the notebooks at a budget and writes HTML copies with their outputs.

    python -m notebooks                                   # every notebook, English and Portuguese, at the full
                                                          # budget (a GPU), HTML copies in docs/notebooks/
    python -m notebooks --budget cpu --only 02,03 --language en --html /tmp/notebooks-cpu

Each notebook runs in a kernel of its own (the `python3` kernel of this environment, started with
TLJAX_NOTEBOOK_BUDGET set to the budget), in order, in one working folder, `--workdir`, as a reader runs them in one
folder (their runs and harness results go there: notebook 6 probes the run notebook 4 trained), and stops at the
first error. Both languages run there: the Portuguese notebooks' code cells are the English ones', so they find the
runs and harness results the English ones computed and load them (`tljax.fine_tune` loads a finished run of the
same settings; the harness caches what it scored), and each copy says at its top how many it loaded. The notebooks
in notebooks/ are never written: they stay without outputs (tests/test_notebooks.py checks it); the outputs go into
the HTML copies only.
"""

from __future__ import annotations

import argparse
import datetime
import html
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = Path(__file__).parent
LANGUAGES = ("en", "pt")
BUDGETS = ("tiny", "cpu", "full")
# the cell that starts every notebook after the first in a shared kernel: a clean namespace, in the working folder
_BETWEEN = "%reset -f\nimport os\nos.chdir({folder!r})"


def notebook_paths(language: str = "en", only: Sequence[str] = ()) -> list[Path]:
    """The notebooks of a language in their order (01_..., 02_...), or those whose number is in `only`."""
    paths = sorted((HERE / language).glob("[0-9][0-9]_*.ipynb"))
    return [path for path in paths if not only or path.name[:2] in only]


def execute(paths: Sequence[Path], budget: str, workdir: Path, *, env: Mapping[str, str] | None = None,
            shared_kernel: bool = False, timeout: int | None = None, say=print) -> list[nbformat.NotebookNode]:
    """Each notebook executed at `budget` (a copy: the files are not written), in `workdir`; returns the executed
    copies in order. `env` adds to the kernel's environment. `shared_kernel` runs them all in
    one kernel, one after the other, each from a clean namespace (`%reset -f`): the imports and
    compiled programs of the first serve the others (the test's way; a fresh kernel each is the reader's way).
    A failing cell raises `CellExecutionError`, its message naming the notebook."""
    if budget not in BUDGETS:
        raise ValueError(f"budget {budget!r} is not one of {', '.join(BUDGETS)}")
    kernel_env = {**os.environ, **(env or {}), "TLJAX_NOTEBOOK_BUDGET": budget}
    machine = kernel_machine(kernel_env)
    folder = Path(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    notebooks = [nbformat.read(path, as_version=4) for path in paths]
    if not shared_kernel:
        executed = []
        for path, notebook in zip(paths, notebooks):
            started = time.monotonic()
            _run(notebook, folder, kernel_env, timeout, path)
            seconds = time.monotonic() - started
            say(f"{path.parent.name}/{path.name}: {seconds:.0f} s")
            notebook.metadata["tljax"] = executed_on(budget, seconds, machine, loaded_results(_printed(notebook)))
            executed.append(notebook)
        return executed
    # one notebook of all of them, each one's cells tagged with its index, a reset cell before each but the first
    merged = nbformat.v4.new_notebook(metadata=notebooks[0].metadata)
    for index, notebook in enumerate(notebooks):
        if index:
            merged.cells.append(nbformat.v4.new_code_cell(_BETWEEN.format(folder=str(folder)),
                                                          metadata={"tljax_between": index}))
        for cell in notebook.cells:
            cell.metadata["tljax_notebook"] = index
            merged.cells.append(cell)
    started = time.monotonic()
    try:
        _run(merged, folder, kernel_env, timeout, None)
    except CellExecutionError as error:
        failed = next((paths[cell.metadata["tljax_notebook"]] for cell in reversed(merged.cells)
                       if cell.cell_type == "code" and cell.get("outputs") and "tljax_notebook" in cell.metadata
                       and any(output.output_type == "error" for output in cell.outputs)), None)
        raise CellExecutionError(f"in {failed}:\n{error}", error.ename, error.evalue) from None
    say(f"{len(paths)} notebooks in one kernel: {time.monotonic() - started:.0f} s")
    for notebook in notebooks:
        for cell in notebook.cells:
            del cell.metadata["tljax_notebook"]
        notebook.metadata["tljax"] = executed_on(budget, None, machine)
    return notebooks


def executed_on(budget: str, seconds: float | None, machine: dict, loaded: int = 0) -> dict:
    """How a notebook was executed (its copy says it at the top): the budget, on what (`machine`), when, how long
    (None: not measured alone, as in a shared kernel), and how many runs and evaluations it `loaded`."""
    return {"budget": budget, **machine, "date": datetime.date.today().isoformat(),
            "seconds": None if seconds is None else round(seconds), "loaded": loaded}


# what a cell prints where it finds its result already computed in the folder: tljax.fine_tune's finished run of the
# same settings, and the harness's cached evaluation
_LOADED = re.compile(r"already holds this run, finished|\(seed \d+\): cached$", re.M)


def loaded_results(printed: str) -> int:
    """How many runs and harness evaluations a notebook loaded (computed by an earlier execution of the same code in
    its folder) rather than computed, from what its cells `printed`."""
    return len(_LOADED.findall(printed))


def _printed(notebook: nbformat.NotebookNode) -> str:
    return "\n".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for output in cell.get("outputs", ()) if output.get("output_type") == "stream")


_DEVICES = ("import jax, os; d = jax.devices(); cpu = d[0].platform == 'cpu'; "
            "print(os.cpu_count() if cpu else len(d), 'CPU' if cpu else d[0].device_kind)")


def kernel_machine(env: Mapping[str, str]) -> dict:
    """The devices a kernel started with `env` sees (CPU cores, or the accelerators and their kind), asked of a
    short-lived process of its own: JAX started in this one would hold the GPU's memory the kernel needs."""
    done = subprocess.run([sys.executable, "-c", _DEVICES], env=dict(env), capture_output=True, text=True, check=True)
    count, kind = done.stdout.strip().splitlines()[-1].split(" ", 1)
    return {"devices": int(count), "device_kind": kind}


def _run(notebook: nbformat.NotebookNode, folder: Path, env: Mapping[str, str], timeout: int | None,
         path: Path | None) -> None:
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources={
        "metadata": {"path": str(folder)}})
    try:
        client.execute(env=dict(env))
    except CellExecutionError as error:
        if path is None:
            raise
        raise CellExecutionError(f"in {path}:\n{error}", error.ename, error.evalue) from None


def write_html(notebooks: Sequence[nbformat.NotebookNode], paths: Sequence[Path], folder: Path) -> list[Path]:
    """Each executed notebook as <folder>/<language>/<name>.html; returns the files written."""
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import CoalesceStreamsPreprocessor

    exporter = HTMLExporter()
    # a progress bar arrives as hundreds of outputs ending in "\r": a page shows its last state, as Jupyter does
    exporter.register_preprocessor(CoalesceStreamsPreprocessor(), enabled=True)
    written = []
    for notebook, path in zip(notebooks, paths):
        body, _ = exporter.from_notebook_node(notebook)
        body = with_execution_line(body, notebook.metadata.get("tljax"), path.parent.name)
        target = Path(folder) / path.parent.name / f"{path.stem}.html"
        target.parent.mkdir(parents=True, exist_ok=True)
        page, styles = shared_styles(body)
        (Path(folder) / STYLES).write_text(styles, encoding="utf-8")
        target.write_text(page, encoding="utf-8")
        written.append(target)
    return written


# the line at the top of each copy, in the notebook's language
_EXECUTED = {"en": "Executed with {command} on {devices}{took}, {date}.{loaded}",
             "pt": "Executado com {command} em {devices}{took}, {date}.{loaded}"}
_LOADED_LINE = {"en": " {n} of its runs and evaluations were loaded from an earlier execution of the same code in the "
                      "same folder, not computed again.",
                "pt": " {n} de seus treinos e avaliações foram carregados de uma execução anterior do mesmo código na "
                      "mesma pasta, não calculados de novo."}
_CPU_CORES = {"en": "{n} CPU cores", "pt": "{n} núcleos de CPU"}


def with_execution_line(page: str, executed: dict | None, language: str) -> str:
    """The page with a line at the top of its content saying at which budget, on what and when it was executed
    (the copies in one folder may come from different budgets: a reader compares their figures knowing it)."""
    if not executed:
        return page
    n, kind = executed["devices"], executed["device_kind"]
    devices = _CPU_CORES[language].format(n=n) if kind == "CPU" else f"{n} x {html.escape(kind)}"
    seconds = executed.get("seconds")
    took = "" if seconds is None else f", {seconds} s" if seconds < 120 else f", {seconds / 60:.0f} min"
    command = f"<code>python -m notebooks --budget {executed['budget']}</code>"
    loaded = _LOADED_LINE[language].format(n=executed["loaded"]) if executed.get("loaded") else ""
    text = _EXECUTED[language].format(command=command, devices=devices, took=took, date=executed["date"],
                                      loaded=loaded)
    opening = re.search(r"<main[^>]*>\n?", page) or re.search(r"<body[^>]*>\n?", page)
    # as a markdown cell without a prompt, so that it sits in the content column in the page's own type
    line = ('<div class="jp-Cell jp-MarkdownCell jp-Notebook-cell tljax-executed"><div class="jp-Cell-inputWrapper">'
            '<div class="jp-InputArea jp-Cell-inputArea"><div class="jp-InputPrompt jp-InputArea-prompt"></div>'
            '<div class="jp-RenderedHTMLCommon jp-RenderedMarkdown jp-MarkdownOutput">'
            f'<p><em>{text}</em></p></div></div></div></div>\n')
    return page[:opening.end()] + line + page[opening.end():] if opening else page


STYLES = "notebook.css"  # beside the language folders: every copy links it


def shared_styles(page: str) -> tuple[str, str]:
    """The page with the template's style sheets (in <head>, 7,000 lines the same in every copy) replaced by a link
    to ../notebook.css, and those style sheets; the page's own styles (its tables') stay in it."""
    head_end = page.index("</head>")
    head, rest = page[:head_end], page[head_end:]
    sheet = re.compile(r'<style type="text/css">(.*?)</style>\n?', re.S)
    styles = "\n".join(block.strip("\n") for block in sheet.findall(head)) + "\n"
    head = sheet.sub("", head, count=0)
    head = head.replace("</title>", f'</title><link rel="stylesheet" href="../{STYLES}">', 1)
    return head + rest, styles


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m notebooks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=BUDGETS, default="full",
                        help="how much each notebook trains: full (a GPU; the default), cpu (2 CPU cores), tiny "
                             "(the tests' tiny model, named by TLJAX_NOTEBOOK_MODEL)")
    parser.add_argument("--language", choices=(*LANGUAGES, "both"), default="both")
    parser.add_argument("--only", default="", help="notebook numbers, comma-separated (e.g. 02,03); default: all")
    parser.add_argument("--html", type=Path, default=HERE.parent / "docs" / "notebooks",
                        help="where the HTML copies go (<language>/<notebook>.html); default: docs/notebooks")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the notebooks run (their runs and results); default: a new temporary folder")
    parser.add_argument("--timeout", type=int, default=None, help="seconds a cell may take (default: no limit)")
    args = parser.parse_args(argv)
    only = [number.strip().zfill(2) for number in args.only.split(",") if number.strip()]
    languages = LANGUAGES if args.language == "both" else (args.language,)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tljax-notebooks-"))
    print(f"running in {workdir}", flush=True)
    for language in languages:
        for path in notebook_paths(language, only):  # one at a time: each copy is written as soon as it ran
            try:
                executed = execute([path], args.budget, workdir, timeout=args.timeout,
                                   say=lambda line: print(line, flush=True))
            except CellExecutionError as error:
                print(f"error: {error}", file=sys.stderr)
                return 1
            for written in write_html(executed, [path], args.html):
                print(f"wrote {written}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
