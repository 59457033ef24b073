"""`python -m benchmarks.gpu_check --out DIR [--smoke] [--budget SECONDS] [--only SECTION,...] [--plan]`

The check to run on a machine with a GPU (no network needed; about 5 minutes on an H100/H200), or on a CPU
with `--smoke` (tiny shapes, no test files run). Everything it needs is made in code: random-weight models of
MiniLM-L6's and SmolLM2-135M's shapes, a WordPiece tokenizer, a review CSV (`benchmarks.gpu_inputs`).
Sections, each in its own processes, each recorded as ok / failed / skipped (a failure never stops the
others):

* environment: JAX's devices and backend, the packages' versions, the peak bfloat16 dense FLOP/s of the card;
* tests: pytest on the files that run on a device (models' parity, attention, methods, sharding), each file
  alone, float32 matmuls at full precision (`JAX_DEFAULT_MATMUL_PRECISION=highest`: the parity tolerances
  assume it); a file whose imports are missing is skipped with the reason. `--smoke` only checks that each
  file exists (the suite runs them on the CPU anyway);
* attention: the fused attention (cuDNN where it applies) against the einsums, bfloat16;
* train: the train step of full fine-tuning and LoRA, float32 and bfloat16, tljax against PyTorch on the
  same device and batches: steps/s, the ratio, MFU (model FLOPs per step / the card's peak bfloat16 dense
  FLOP/s), each side's trainable parameters and first loss;
* generate: greedy generation with the KV cache, bfloat16, tokens/s on both sides;
* end-to-end: `python -m tljax.train` on the generated CSV, the MiniLM-shaped model, LoRA.

Writes DIR/gpu-check.json and DIR/gpu-check.md (rewritten after every section: a run cut short keeps what
it measured). `--budget` (default 270 s) is the wall clock the sections may use: a section that would start
past it is skipped and says so; so is a section left out by `--only` (the inputs are made only when a chosen
section reads them). `--plan` prints what the chosen
sections would run (`benchmarks.gpu_plan`) as JSON and runs nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import RESULT_PREFIX, ROOT
from benchmarks.gpu_inputs import FAMILIES, Inputs, make_inputs
from benchmarks.gpu_plan import (INPUT_READERS, SECTIONS, TEST_FILES, attention_shape, end_to_end_command,
                                 generate_spec, peak_flops, plan, train_spec)
from benchmarks.gpu_report import markdown, train_rows


def file_outcome(returncode: int, stdout: str) -> dict[str, str]:
    """One test file's entry in the report from its pytest run: passed, failed, or skipped where an import is
    missing (pytest exits 2 or 4 on a collection error)."""
    tail = stdout.strip().splitlines()[-1:] or [""]
    missing = "ModuleNotFoundError" in stdout and returncode in (2, 4)
    return {"status": "skipped" if missing else ("passed" if returncode == 0 else "failed"),
            "summary": tail[0], "output_tail": stdout[-2000:] if returncode else ""}


class Check:
    """The sections' runner: each section a method returning its findings, recorded by `section`."""

    def __init__(self, out: Path, smoke: bool, budget: float, command: str):
        self.out, self.smoke, self.budget, self.command = out, smoke, budget, command
        self.started = time.perf_counter()
        self.sections: dict[str, dict[str, Any]] = {}
        self.env = {**os.environ, "TLJAX_COMPILATION_CACHE": "0"}
        self.inputs = Inputs(out / "work")
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        """Seconds of the budget left."""
        return self.budget - (time.perf_counter() - self.started)

    def run(self, args: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """A child process at the repository root, its output captured."""
        return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env or self.env,
                              timeout=max(timeout, 10))

    def side(self, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
        """One `benchmarks.gpu_side` process; its result line."""
        done = self.run([sys.executable, "-m", "benchmarks.gpu_side", json.dumps(spec, default=str)], timeout)
        lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"{spec['side']} {spec['workload']} exited {done.returncode}: {done.stderr[-1500:]}")
        return json.loads(lines[-1][len(RESULT_PREFIX):])

    def skip(self, name: str, reason: str) -> None:
        """Records `name` as skipped, so that the report lists every section."""
        self.sections[name] = {"status": "skipped", "reason": reason}
        self.write()

    def section(self, name: str, fn: Callable[[], dict[str, Any]]) -> None:
        """Runs one section within the budget and records its outcome; the report is rewritten after it."""
        if self.left() <= 0:
            self.skip(name, f"the {self.budget:.0f} s budget was spent")
        else:
            started = time.perf_counter()
            try:
                self.sections[name] = {"status": "ok", **fn()}
            except Exception as error:  # a failed section is a finding, and the next sections still run
                self.sections[name] = {"status": "failed", "error": f"{type(error).__name__}: {error}"[-3000:]}
            self.sections[name]["seconds"] = round(time.perf_counter() - started, 1)
        print(f"{name}: {self.sections[name]['status']} ({self.sections[name].get('seconds', 0)} s)", flush=True)
        self.write()

    # --- the sections -------------------------------------------------------------------------------------

    def environment(self) -> dict[str, Any]:
        """JAX's backend and devices, the packages' versions, the card's peak FLOP/s; the children's platform."""
        probe = ("import json, jax; from importlib.metadata import version; d = jax.devices(); "
                 "print(json.dumps({'backend': jax.default_backend(), 'devices': len(d), 'device': d[0].device_kind,"
                 " 'packages': {p: version(p) for p in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint',"
                 " 'torch', 'transformers', 'peft', 'tokenizers')}}))")
        done = self.run([sys.executable, "-c", probe], 120)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-1500:])
        found = json.loads(done.stdout.strip().splitlines()[-1])
        platform = "cuda" if found["backend"] == "gpu" else found["backend"]
        self.env["JAX_PLATFORMS"] = platform  # the children's benchmarks.common would otherwise pick the CPU
        return {**found, "peak_bf16_flops": peak_flops(found["device"])}

    def tests(self) -> dict[str, Any]:
        """Each planned test file's pytest run (smoke: that it exists)."""
        env = {**self.env, "JAX_DEFAULT_MATMUL_PRECISION": "highest"}
        results = {}
        for target in TEST_FILES:
            if not (ROOT / target).is_file():
                results[target] = {"status": "missing"}
            elif self.smoke:  # the test suite runs these files on the CPU, and `file_outcome` on pytest's outputs
                results[target] = {"status": "not run", "summary": "smoke"}
            elif self.left() <= 0:
                results[target] = {"status": "skipped", "reason": "budget spent"}
            else:
                junit = self.out / f"junit-{Path(target).stem}.xml"
                command = [sys.executable, "-m", "pytest", target, "-q", "-p", "no:cacheprovider", "-m", "not real",
                           f"--junitxml={junit}"]
                try:
                    done = self.run(command, self.left(), env)
                except subprocess.TimeoutExpired:
                    results[target] = {"status": "timeout"}
                    continue
                results[target] = file_outcome(done.returncode, done.stdout)
        passing = ("passed", "skipped", "not run")
        return {"files": results, "all_passed": all(r["status"] in passing for r in results.values())}

    def attention(self) -> dict[str, Any]:
        """The fused attention against the einsums (`benchmarks.gpu_side.jax_attention`)."""
        return self.side({"side": "jax", "workload": "attention", "shape": attention_shape(self.smoke)}, self.left())

    def train(self) -> dict[str, Any]:
        """The train step of each family's configs on both sides; a row per config."""
        rows, devices = [], {}
        for family in FAMILIES:  # a process per family and side: one model's compiled programs at a time
            spec = train_spec(family, self.smoke, self.inputs)
            measured = {side: self.side({**spec, "side": side}, self.left()) for side in ("jax", "torch")}
            devices = {side: measured[side]["device"] for side in measured}
            rows += train_rows(family, self.smoke, spec["configs"], measured, peak_flops(devices["jax"]))
            self.sections["train"] = {"status": "running", "rows": rows}
            self.write()
        return {"rows": rows, "devices": devices}

    def generate(self) -> dict[str, Any]:
        """Greedy generation's tokens/s on both sides."""
        spec = generate_spec(self.smoke, self.inputs)
        measured = {side: self.side({**spec, "side": side}, self.left()) for side in ("jax", "torch")}
        return {"batch": spec["batch"], "new_tokens": spec["new_tokens"], **measured,
                "speed_ratio": measured["jax"]["tokens_per_s"] / measured["torch"]["tokens_per_s"]}

    def end_to_end(self) -> dict[str, Any]:
        """`python -m tljax.train` on the generated inputs; its summary's steps, test metrics and seconds."""
        started = time.perf_counter()
        done = self.run(end_to_end_command(self.smoke, self.inputs), self.left())
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"python -m tljax.train exited {done.returncode}: {done.stderr[-1500:]}")
        summary = json.loads((self.inputs.run / "summary.json").read_text())
        return {"seconds": seconds, "steps": summary.get("steps"), "test": summary.get("test"),
                "training_seconds": summary.get("training_seconds")}

    # --- the report --------------------------------------------------------------------------------------

    def write(self) -> None:
        """DIR/gpu-check.json and DIR/gpu-check.md as they stand."""
        report = {"smoke": self.smoke, "minutes": (time.perf_counter() - self.started) / 60,
                  "command": self.command, "sections": self.sections}
        (self.out / "gpu-check.json").write_text(json.dumps(report, indent=2, default=str))
        (self.out / "gpu-check.md").write_text(markdown(report))


def main(argv: list[str] | None = None) -> int:
    """The command; exit status 1 when a section failed."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the folder the report and its inputs are written to")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, no test file run: the check of the check")
    parser.add_argument("--budget", type=float, default=270.0, help="seconds the sections may start within")
    parser.add_argument("--only", help=f"comma-separated sections: {', '.join(SECTIONS)} (environment always runs)")
    parser.add_argument("--plan", action="store_true", help="print what the sections would run, as JSON; run nothing")
    args = parser.parse_args(argv)
    chosen = set(args.only.split(",")) if args.only else set(SECTIONS)
    if chosen - set(SECTIONS):
        parser.error(f"unknown section(s) {', '.join(sorted(chosen - set(SECTIONS)))}; valid: {', '.join(SECTIONS)}")
    out = Path(args.out)
    if args.plan:
        print(json.dumps(plan(args.smoke, Inputs(out / "work"), tuple(s for s in SECTIONS if s in chosen)), indent=2))
        return 0
    check = Check(out, args.smoke, args.budget, "python -m benchmarks.gpu_check " + " ".join(argv))
    check.section("environment", check.environment)
    if check.sections["environment"]["status"] != "ok":
        return 1
    if chosen & set(INPUT_READERS):
        make_inputs(check.inputs.work, args.smoke)
    for name in SECTIONS[1:]:
        if name in chosen:
            check.section(name, getattr(check, name.replace("-", "_")))
        else:
            check.skip(name, "not chosen (--only)")
    print(f"written: {check.out / 'gpu-check.md'}")
    return 0 if all(s["status"] != "failed" for s in check.sections.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
