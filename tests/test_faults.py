"""Fault injection: a tiny run SIGKILLed at a named point (`tljax.faults`) or at a random moment, then continued
with `--resume`, ends bit-identical to one uninterrupted run, and its log holds every step once. Also: two runs
racing for one output folder, and a refused run that leaves nothing behind.

Every run is a real `python -m tljax.train` process (a SIGKILL cannot be simulated in-process). The trials run
two at a time; the whole file takes about three minutes on two cores.
"""

import concurrent.futures
import json
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from conftest import cli_env, shared_folder, shared_value, write_reviews
from safetensors.numpy import load_file

MAX_STEPS, EVAL_STEPS = 20, 4  # a checkpoint (latest, and best when it improved) every 4 steps
# never a fault the test did not ask for; one CPU device (not conftest's 8 simulated ones: these runs are only
# compared with each other, and a launch with 8 costs twice the time on two cores)
ENV = cli_env(devices=1)
BUSY = "another run is using"
# a --resume that finds no saved checkpoint in a folder its run started must say it starts again
RESTART = re.compile(r"from the (beginning|start)|from scratch|afresh|start(s|ing)? (over|again)", re.IGNORECASE)
LAUNCH_TIMEOUT = 180


def write_config(directory: Path, tiny_model: Path) -> Path:
    """The tiny run (as tests/test_train.py's run_config): full fine-tuning with the model's dropout (0.1) on,
    so the per-step random keys matter, and a validation accuracy that improves, stalls and improves again,
    so that `best` and `latest` part ways (best saved at steps 4 and 20 only)."""
    config = {
        "model": str(tiny_model),
        "data": {"source": str(write_reviews(directory / "reviews.csv")), "text_column": "review",
                 "label_column": "sentiment", "labels": ["neg", "pos"], "max_length": 16},
        "method": {"name": "full"},
        "training": {"learning_rate": 1e-2, "max_steps": MAX_STEPS, "per_device_train_batch_size": 32,
                     "eval_steps": EVAL_STEPS, "logging_steps": 1, "early_stopping_patience": None},
        "output_dir": str(directory / "unused"),  # each launch names its own (--set output_dir=...)
    }
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass(frozen=True)
class Trial:
    name: str
    fault: str | None = None  # TLJAX_FAULTS for the first launch
    moment: float | None = None  # or a SIGKILL from the test, at this fraction of the reference run's life


def _trials() -> list[Trial]:
    """8 trials, the same every time. Checkpoint writes of the reference run, in order: 1 latest@4 (the first
    save), 2 best@4, 3 latest@8, 4 latest@12, 5 latest@16, 6 latest@20, 7 best@20 (the last one).
    Export passes: 1 the Hugging Face model folder (inside the export's staging folder), 2 the export.
    A kill during a step: one before the first checkpoint, one after it. Each trial is two processes that import
    and compile (about 15 s of a core): the named points cover every kind of moment, two kills at random times
    the moments between them."""
    rng = random.Random(0)
    steps = [rng.choice(range(1, EVAL_STEPS + 1)), rng.choice(range(EVAL_STEPS + 1, MAX_STEPS + 1))]
    writes = [1, 7]  # the first save (nothing to fall back on), the last (a best beside a complete latest)
    named = [f"step={n}:kill" for n in steps] + [f"checkpoint-write={n}:kill" for n in writes] + \
        ["export=1:kill", "export=2:kill"]
    moments = [rng.uniform(0.02, 0.9) for _ in range(2)]  # the last tenth is the export: named points cover it
    return [Trial(f, fault=f) for f in named] + [Trial(f"sigkill-at-{m:.4f}", moment=m) for m in moments]


TRIALS = _trials()
assert len(TRIALS) == 8 and len({t.name for t in TRIALS}) == 8


@dataclass
class Launch:
    args: list[str]
    returncode: int
    stderr: str
    seconds: float

    def tail(self, lines: int = 6) -> str:
        """The last lines of stderr, without the progress bar's redraws."""
        kept = [line.split("\r")[-1].rstrip() for line in self.stderr.splitlines()]
        kept = [line for line in kept if line and not line.startswith("training:")]
        return "\n    ".join(kept[-lines:])


@dataclass
class Outcome:
    run_dir: Path
    launches: list[Launch] = field(default_factory=list)
    locked: bool = False  # after the kill: the run had made its folder (the .lock file is there)
    checkpointed: bool = False  # after the kill: a checkpoint's save had completed
    delay: float | None = None

    def describe(self) -> str:
        return "\n".join(f"  launch {i} ({' '.join(l.args) or 'start'}): exit {l.returncode} after {l.seconds:.1f}s"
                         f"\n    {l.tail()}" for i, l in enumerate(self.launches))


def launch(config: Path, run_dir: Path, *args: str, env: dict = ENV, kill_after: float | None = None) -> Launch:
    """One `python -m tljax.train` process into `run_dir`, SIGKILLed (if `kill_after` is given) that many
    seconds after it has made its folder (counting from there, not from the start, leaves out the import
    time, which varies most with the machine's load)."""
    err_path = run_dir.parent / f"{run_dir.name}.{time.monotonic_ns()}.stderr"
    started = time.perf_counter()
    with err_path.open("w") as err:
        process = subprocess.Popen([sys.executable, "-m", "tljax.train", "--config", str(config), "--set",
                                    f"output_dir={run_dir}", *args], env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            if kill_after is not None:
                while not (run_dir / ".lock").exists() and process.poll() is None:
                    time.sleep(0.005)
                try:
                    process.wait(kill_after)
                except subprocess.TimeoutExpired:
                    process.send_signal(signal.SIGKILL)
            process.wait(LAUNCH_TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return Launch(list(args), process.returncode, err_path.read_text(errors="replace"), time.perf_counter() - started)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def config(tmp_path_factory, tiny_model) -> Path:
    """The trials' config, in a folder the test workers share (the trials run once per session, by whichever
    worker asks first: `shared_value`)."""
    root = shared_folder(tmp_path_factory)
    return shared_value(tmp_path_factory, "faults-config", lambda: write_config(mkdir(root / "faults"), tiny_model))


def mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, config) -> dict:
    """The uninterrupted run, trained twice at once: the twin shows the runs are deterministic (else no
    comparison below means anything), and the pair measures, under the load of two trials at a time, the
    life of a run in which a random kill lands: from the moment it has made its folder (a kill before that
    leaves nothing to resume) to its exit."""
    return shared_value(tmp_path_factory, "faults-reference", lambda: uninterrupted(config))


def uninterrupted(config: Path) -> dict:
    run_dirs = [config.parent / "reference", config.parent / "reference-twin"]
    started = time.perf_counter()
    processes = [subprocess.Popen([sys.executable, "-m", "tljax.train", "--config", str(config), "--set",
                                   f"output_dir={run_dir}"], env=ENV, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for run_dir in run_dirs]
    # stderr is read after the exit: the tiny run writes far less than a pipe holds
    made, ended = [None, None], [None, None]
    while None in ended:
        for i, (run_dir, process) in enumerate(zip(run_dirs, processes)):
            if made[i] is None and (run_dir / ".lock").exists():
                made[i] = time.perf_counter() - started
            if ended[i] is None and process.poll() is not None:
                ended[i] = time.perf_counter() - started
        assert time.perf_counter() - started < LAUNCH_TIMEOUT
        time.sleep(0.01)
    for process in processes:
        err = process.stderr.read()
        assert process.returncode == 0, err[-3000:]
    assert None not in made
    run_dir = run_dirs[0]
    log = records(run_dir)
    assert [r["step"] for r in log if r["split"] == "train"] == list(range(1, MAX_STEPS + 1))
    assert records(run_dirs[1]) == log, "two uninterrupted runs logged different records"
    assert not export_problems(run_dir / "export", run_dirs[1] / "export"), "two uninterrupted runs differ"
    return {"run_dir": run_dir, "life": (sum(ended) - sum(made)) / 2, "records": log,
            "summary": json.loads((run_dir / "summary.json").read_text())}


@pytest.fixture(scope="module")
def trees(config):
    """The run's (trainable, opt_state) trees, as templates to read its checkpoints with tljax's own class."""
    from tljax.train.config import load_config
    from tljax.train.loop import build_engine
    from tljax.train.run import prepare
    from tljax.train.sharding import data_mesh

    engine = build_engine(prepare(load_config(config)), MAX_STEPS, data_mesh())
    return engine.trainable, engine.opt_state


@pytest.fixture(scope="module")
def reference_latest(reference, trees) -> tuple[list[np.ndarray], dict]:
    return read_latest(reference["run_dir"], trees)


def read_latest(run_dir: Path, trees) -> tuple[list[np.ndarray], dict]:
    from tljax.train.checkpoints import Checkpoints

    checkpoints = Checkpoints(run_dir / "checkpoints")
    try:
        restored = checkpoints.restore("latest", *trees)
    finally:
        checkpoints.close()
    assert restored is not None, f"{run_dir} has no latest checkpoint"
    trainable, opt_state, meta = restored
    return [np.asarray(leaf) for leaf in jax.tree.leaves((trainable, opt_state))], meta


def run_trial(trial: Trial, config: Path, life: float) -> Outcome:
    """The first launch dies (a fault point, or the test's SIGKILL); then --resume until it exits 0 (at most
    three times; a refusal, exit 2, is final)."""
    outcome = Outcome(config.parent / re.sub(r"[^\w.-]", "_", trial.name))
    if trial.fault:
        outcome.launches.append(launch(config, outcome.run_dir, env={**ENV, "TLJAX_FAULTS": trial.fault}))
    else:
        outcome.delay = trial.moment * life
        outcome.launches.append(launch(config, outcome.run_dir, kill_after=outcome.delay))
    from tljax.train.rundir import has_checkpoint

    outcome.locked = (outcome.run_dir / ".lock").is_file()
    outcome.checkpointed = outcome.run_dir.is_dir() and has_checkpoint(outcome.run_dir)
    # a run killed before it made its folder left nothing to resume: it is simply started again
    again = ("--resume",) if outcome.locked else ()
    for _ in range(3):
        if outcome.launches[-1].returncode in (0, 2):
            break
        outcome.launches.append(launch(config, outcome.run_dir, *again))
    return outcome


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, config, reference) -> dict[str, Outcome]:
    """Every trial, two at a time (each is mostly a process importing and compiling on one core), once per
    session."""
    def run_all() -> dict[str, Outcome]:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            futures = {t.name: pool.submit(run_trial, t, config, reference["life"]) for t in TRIALS}
            return {name: future.result() for name, future in futures.items()}

    return shared_value(tmp_path_factory, "faults-outcomes", run_all)


def log_problems(reference: list[dict], log: list[dict]) -> list[str]:
    """How a run's metrics.jsonl differs from the reference's: a step missing or logged twice, a loss that
    differs (compared exactly: the runs must be bit-identical)."""
    problems = []
    for split in ("train", "validation", "test"):
        want, got = [r for r in reference if r["split"] == split], [r for r in log if r["split"] == split]
        want_steps, got_steps = [r["step"] for r in want], [r["step"] for r in got]
        if got_steps != want_steps:
            twice = sorted({s for s in got_steps if got_steps.count(s) > 1})
            missing = sorted(set(want_steps) - set(got_steps))
            problems.append(f"{split} steps {got_steps}, the reference's {want_steps} (twice: {twice}, "
                            f"missing: {missing})")
        elif got != want:
            problems.append(f"{split} records differ from the reference's at steps "
                            f"{[w['step'] for w, g in zip(want, got) if w != g]}")
    if not problems and log != reference:
        problems.append("the records are in another order than the reference's")
    return problems


def export_problems(reference: Path, run: Path) -> list[str]:
    """How a run's export differs from the reference's: every tensor of every safetensors file compared bit
    for bit (dtype, shape, bytes), every other file byte for byte."""
    files = lambda root: {p.relative_to(root) for p in root.rglob("*") if p.is_file()}
    want, got = files(reference), files(run)
    problems = [f"export files missing: {sorted(map(str, want - got))}, extra: {sorted(map(str, got - want))}"] \
        if want != got else []
    for name in sorted(want & got):
        if name.suffix == ".safetensors":
            a, b = load_file(reference / name), load_file(run / name)
            changed = sorted(k for k in a.keys() & b.keys() if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape
                             or a[k].tobytes() != b[k].tobytes())
            if a.keys() != b.keys() or changed:
                problems.append(f"{name}: tensors {changed[:5]} differ ({len(changed)} of {len(a)}); "
                                f"missing {sorted(a.keys() - b.keys())[:5]}, extra {sorted(b.keys() - a.keys())[:5]}")
        elif (reference / name).read_bytes() != (run / name).read_bytes():
            problems.append(f"{name} differs")
    return problems


@pytest.mark.parametrize("trial", TRIALS, ids=[t.name for t in TRIALS])
def test_a_killed_run_resumes_to_the_reference(trial, outcomes, reference, reference_latest, trees):
    """What is compared: (1) the export, every tensor bit for bit: it is what the user gets, it is read
    without tljax, and it holds the *best* checkpoint's parameters, so a lost or stale `best` shows there;
    (2) the final `latest` checkpoint read back with tljax's own Checkpoints class: the last step's parameters
    and optimiser state, which the export does not hold; (3) summary.json's steps, best step and test
    metrics; (4) metrics.jsonl, record for record."""
    outcome = outcomes[trial.name]
    first, last = outcome.launches[0], outcome.launches[-1]
    delay = f" (the test's SIGKILL {outcome.delay:.1f}s after the folder was made)" if outcome.delay is not None else ""
    story = f"{trial.name}{delay}:\n{outcome.describe()}"
    print(f"{story}\n  after the kill: folder made {outcome.locked}, a checkpoint saved {outcome.checkpointed}")

    def fail(what: str) -> None:
        pytest.fail(f"{what}\n{story}", pytrace=False)

    if trial.fault and first.returncode != -signal.SIGKILL:
        fail("the fault point did not kill the run")
    if first.returncode not in (-signal.SIGKILL, 0):  # a random kill may come after the run finished
        fail(f"the first launch exited {first.returncode}")
    if any(BUSY in attempt.stderr for attempt in outcome.launches):
        fail("a killed run left its folder locked")
    if first.returncode == -signal.SIGKILL and outcome.locked and not outcome.checkpointed and \
            not (len(outcome.launches) > 1 and RESTART.search(outcome.launches[1].stderr)):
        fail("killed before its first checkpoint was saved, the --resume did not start again from the beginning "
             "(saying so on stderr)")
    if last.returncode != 0:
        fail("the run never finished")
    run_dir = outcome.run_dir

    problems = export_problems(reference["run_dir"] / "export", run_dir / "export")
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("steps", "best_step", "test"):
        if summary[key] != reference["summary"][key]:
            problems.append(f"summary.json {key}: {summary[key]}, the reference's {reference['summary'][key]}")
    (want, want_meta), (got, got_meta) = reference_latest, read_latest(run_dir, trees)
    changed = [i for i, (a, b) in enumerate(zip(want, got)) if a.dtype != b.dtype or a.tobytes() != b.tobytes()]
    if len(want) != len(got) or changed:
        problems.append(f"the latest checkpoint's leaves {changed[:8]} differ ({len(changed)} of {len(want)})")
    for key in ("step", "position", "best", "best_step"):
        if got_meta.get(key) != want_meta.get(key):
            problems.append(f"the latest checkpoint's {key}: {got_meta.get(key)}, the reference's "
                            f"{want_meta.get(key)}")
    problems += log_problems(reference["records"], records(run_dir))
    if problems:
        fail("the resumed run differs from the uninterrupted one:\n  " + "\n  ".join(problems))


def test_two_runs_into_one_folder_at_once_one_trains_the_other_is_refused(config):
    """Started together: one takes the folder and trains, the other exits 2 at once with one line, and the
    log is the one run's alone (a longer run than the trials', so that the two surely overlap)."""
    run_dir = config.parent / "race"
    steps = 200
    args = ["--config", str(config), "--set", f"output_dir={run_dir}", "--set", f"training.max_steps={steps}",
            "--set", "training.eval_steps=100"]
    processes = [subprocess.Popen([sys.executable, "-m", "tljax.train", *args], env=ENV, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errs = [p.communicate(timeout=LAUNCH_TIMEOUT)[1] for p in processes]
    codes = [p.returncode for p in processes]
    assert sorted(codes) == [0, 2], f"exit codes {codes}:\n" + "\n---\n".join(e[-1500:] for e in errs)
    refused = errs[codes.index(2)].strip().splitlines()
    assert BUSY in refused[-1] and refused[-1].startswith("error: ") and "Traceback" not in errs[codes.index(2)], \
        errs[codes.index(2)][-1500:]
    log = records(run_dir)  # every line whole JSON
    assert [r["step"] for r in log if r["split"] == "train"] == list(range(1, steps + 1))
    assert [r["step"] for r in log if r["split"] == "validation"] == [100, 200]
    assert [r["split"] for r in log].count("test") == 1
    assert (run_dir / "summary.json").is_file()


def test_a_refused_setting_leaves_no_folder_and_a_correct_rerun_works(config, reference, capsys):
    from tljax.train.__main__ import main

    run_dir = config.parent / "refused"
    for setting, says in (("training.learning_rate=-1", "learning_rate must be > 0"),
                          ("data.max_length=0", "max_length must be at least 8")):
        assert main(["--config", str(config), "--set", f"output_dir={run_dir}", "--set", setting]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and says in err and "\n" not in err, err
        assert not run_dir.exists(), f"{setting} left {sorted(p.name for p in run_dir.iterdir())}"
    rerun = launch(config, run_dir)
    assert rerun.returncode == 0, rerun.tail(20)
    assert not export_problems(reference["run_dir"] / "export", run_dir / "export")
    assert records(run_dir) == reference["records"]
