"""`python -m benchmarks.gpu_check --out DIR [--smoke] [--budget SECONDS] [--only SECTION,...]`

The check to run on a machine with a GPU (no network needed; about 5 minutes on an H100/H200), or on a CPU
with `--smoke` (tiny shapes, a minute). Everything it needs is made in code: random-weight models of
MiniLM-L6's and SmolLM2-135M's shapes, a WordPiece tokenizer, a review CSV (`benchmarks.gpu_inputs`).
Sections, each in its own processes, each recorded as ok / failed / skipped (a failure never stops the
others):

* environment: JAX's devices and backend, the packages' versions, the peak bfloat16 dense FLOP/s of the card;
* tests: pytest on the files that run on a device (models' parity, attention, methods, sharding), each file
  alone, float32 matmuls at full precision (`JAX_DEFAULT_MATMUL_PRECISION=highest`: the parity tolerances
  assume it); a file whose imports are missing is skipped with the reason;
* attention: the fused attention (cuDNN where it applies) against the einsums, bfloat16;
* train: the train step of full fine-tuning and LoRA, float32 and bfloat16, tljax against PyTorch on the
  same device: steps/s, the ratio, MFU (model FLOPs per step / the card's peak bfloat16 dense FLOP/s);
* generate: greedy generation with the KV cache, bfloat16, tokens/s on both sides;
* end-to-end: `python -m tljax.train` on the generated CSV, the MiniLM-shaped model, LoRA.

Writes DIR/gpu-check.json and DIR/gpu-check.md (rewritten after every section: a run cut short keeps what
it measured). `--budget` (default 270 s) is the wall clock the sections may use: a section that would start
past it is skipped and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULT_PREFIX, ROOT
from benchmarks.gpu_inputs import random_batch, read_texts, save_batches, shape, write_model, write_reviews

SECTIONS = ("environment", "tests", "attention", "train", "generate", "end-to-end")
TEST_FILES = ("tests/test_attention.py", "tests/test_encoder.py", "tests/test_decoder.py", "tests/test_methods.py",
              "tests/test_sharding.py")
SMOKE_TESTS = ("tests/test_attention.py::test_an_unknown_attention_path_is_refused",)
# Peak dense bfloat16 tensor FLOP/s (NVIDIA's data sheets, without sparsity), by a part of the device's name;
# the first that the name contains wins (so "H100 PCIe" before "H100").
PEAK_BF16_FLOPS = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H200", 989e12), ("H100", 989e12),
                   ("A100", 312e12))


def peak_flops(device: str) -> float | None:
    """The card's peak dense bfloat16 FLOP/s, or None for a device the table does not know (a CPU)."""
    return next((flops for part, flops in PEAK_BF16_FLOPS if part.lower() in device.lower()), None)


def forward_flops_per_token(config: dict[str, Any], length: int) -> float:
    """Matmul FLOPs of one token's forward pass through the layers (2 per multiply-add): the projections and
    the feed-forward (embeddings and the small classifier head left out) plus attention's two products
    against `length` keys."""
    h, f, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    if config["model_type"] == "bert":
        weights = 4 * h * h + 2 * h * f
    else:
        dim = h // heads
        kv = config["num_key_value_heads"] * dim
        weights = 2 * h * heads * dim + 2 * h * kv + 3 * h * f
    return layers * (2 * weights + 2 * 2 * length * heads * (h // heads))


def train_flops(config: dict[str, Any], batch: int, length: int, method: str) -> float:
    """Model FLOPs of one train step: 3 forwards for full fine-tuning (forward, input and weight gradients),
    2 for LoRA (the frozen weights get no gradient; the adapters' own products are negligible)."""
    return (3 if method == "full" else 2) * batch * length * forward_flops_per_token(config, length)


class Check:
    def __init__(self, out: Path, smoke: bool, budget: float):
        self.out, self.smoke, self.budget = out, smoke, budget
        self.started = time.perf_counter()
        self.sections: dict[str, dict[str, Any]] = {}
        self.env = {**os.environ, "TLJAX_COMPILATION_CACHE": "0"}
        self.work = out / "work"
        self.work.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.started)

    def run(self, args: list[str], timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env or self.env,
                              timeout=max(timeout, 10))

    def side(self, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
        """One `benchmarks.gpu_side` process; its result line."""
        done = self.run([sys.executable, "-m", "benchmarks.gpu_side", json.dumps(spec, default=str)], timeout)
        lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"{spec['side']} {spec['workload']} exited {done.returncode}: {done.stderr[-1500:]}")
        return json.loads(lines[-1][len(RESULT_PREFIX):])

    def section(self, name: str, fn) -> None:
        if self.left() <= 0:
            self.sections[name] = {"status": "skipped", "reason": f"the {self.budget:.0f} s budget was spent"}
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
        self.device, self.backend = found["device"], found["backend"]
        return {**found, "peak_bf16_flops": peak_flops(found["device"])}

    def inputs(self) -> None:
        """The CSV, the two model directories and the batches (made once, before the sections that use them)."""
        self.csv = write_reviews(self.work / "reviews.csv", 200 if self.smoke else 2000)
        texts = read_texts(self.csv)
        self.models = {family: write_model(family, self.work / family, texts, smoke=self.smoke)
                       for family in ("minilm", "smollm2")}
        self.shapes = {"minilm": (4, 32) if self.smoke else (32, 128), "smollm2": (2, 32) if self.smoke else (8, 256)}
        self.batches = {family: save_batches(self.work / f"{family}.npz",
                                             [random_batch(b, t, 500, seed=i) for i in range(2)])
                        for family, (b, t) in self.shapes.items()}

    def tests(self) -> dict[str, Any]:
        env = {**self.env, "JAX_DEFAULT_MATMUL_PRECISION": "highest"}
        results = {}
        for target in (SMOKE_TESTS if self.smoke else TEST_FILES):
            if self.left() <= 0:
                results[target] = {"status": "skipped", "reason": "budget spent"}
                continue
            junit = self.out / f"junit-{Path(target.split('::')[0]).stem}.xml"
            command = [sys.executable, "-m", "pytest", target, "-q", "-p", "no:cacheprovider", "-m", "not real",
                       f"--junitxml={junit}"]
            try:
                done = self.run(command, self.left(), env)
            except subprocess.TimeoutExpired:
                results[target] = {"status": "timeout"}
                continue
            tail = done.stdout.strip().splitlines()[-1:] or [""]
            missing = "ModuleNotFoundError" in done.stdout and done.returncode in (2, 4)
            results[target] = {"status": "skipped" if missing else ("passed" if done.returncode == 0 else "failed"),
                               "summary": tail[0], "output_tail": done.stdout[-2000:] if done.returncode else ""}
        return {"files": results, "all_passed": all(r["status"] in ("passed", "skipped") for r in results.values())}

    def attention(self) -> dict[str, Any]:
        config = shape("smollm2", self.smoke)
        batch, length = self.shapes["smollm2"]
        dims = (batch, config["num_attention_heads"], config["num_key_value_heads"], length,
                config["hidden_size"] // config["num_attention_heads"])
        return self.side({"side": "jax", "workload": "attention", "shape": dims}, self.left())

    def train(self) -> dict[str, Any]:
        rows = []
        for family in ("minilm", "smollm2"):
            # SmolLM2's 30 unscanned layers compile for tens of seconds per config: bfloat16 only there.
            dtypes = ("float32", "bfloat16") if family == "minilm" else ("bfloat16",)
            targets = [] if family == "minilm" else ["method.targets=[q_proj, v_proj]"]
            batch, length = self.shapes[family]
            if self.smoke:  # one config per family: the smoke run checks the plumbing, not the figures
                dtypes = dtypes[-1:]
            methods = ("lora",) if self.smoke and family == "minilm" else ("full",) if self.smoke else ("full", "lora")
            configs = [{"name": f"{method} {dtype}", "method": method,
                        "overrides": [f"model={self.models[family]}", f"data.source={self.csv}",
                                      f"data.max_length={length}", f"training.dtype={dtype}",
                                      f"training.per_device_train_batch_size={batch}"]
                                     + (targets if method == "lora" else [])}
                       for method in methods for dtype in dtypes]
            spec = {"workload": "train", "configs": configs, "batches": self.batches[family],
                    "repeats": 2 if self.smoke else 5}
            measured = {side: self.side({**spec, "side": side}, self.left()) for side in ("jax", "torch")}
            peak = peak_flops(measured["jax"]["device"])
            for one in configs:
                jax_row, torch_row = (measured[side]["rows"][one["name"]] for side in ("jax", "torch"))
                flops = train_flops(shape(family, self.smoke), batch, length, one["method"])
                rows.append({"model": family, "config": one["name"], "batch": f"{batch} x {length}",
                             "jax_steps_per_s": 1 / jax_row["step_s"], "torch_steps_per_s": 1 / torch_row["step_s"],
                             "speed_ratio": torch_row["step_s"] / jax_row["step_s"],
                             "jax_first_step_s": jax_row["first_step_s"], "model_flops_per_step": flops,
                             "jax_mfu": flops / jax_row["step_s"] / peak if peak else None,
                             "torch_mfu": flops / torch_row["step_s"] / peak if peak else None,
                             "trainable": [jax_row["trainable"], torch_row["trainable"]]})
                self.sections["train"] = {"status": "running", "rows": rows}
                self.write()
        return {"rows": rows, "devices": {s: measured[s]["device"] for s in measured}}

    def generate(self) -> dict[str, Any]:
        spec = {"workload": "generate", "model": self.models["smollm2"], "batch": 1 if self.smoke else 8,
                "prompt": 16 if self.smoke else 64, "new_tokens": 8 if self.smoke else 128, "repeats": 2}
        measured = {side: self.side({**spec, "side": side}, self.left()) for side in ("jax", "torch")}
        return {"batch": spec["batch"], "new_tokens": spec["new_tokens"], **measured,
                "speed_ratio": measured["jax"]["tokens_per_s"] / measured["torch"]["tokens_per_s"]}

    def end_to_end(self) -> dict[str, Any]:
        run_dir = self.work / "run"
        steps = 4 if self.smoke else 60
        command = [sys.executable, "-m", "tljax.train", "--set", f"model={self.models['minilm']}",
                   "--set", f"data.source={self.csv}", "--set", f"output_dir={run_dir}",
                   "--set", f"training.max_steps={steps}", "--set", f"training.eval_steps={steps}",
                   "--set", "data.max_eval_examples=64"]
        started = time.perf_counter()
        done = self.run(command, self.left())
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"python -m tljax.train exited {done.returncode}: {done.stderr[-1500:]}")
        summary = json.loads((run_dir / "summary.json").read_text())
        return {"seconds": seconds, "steps": summary.get("steps"), "test": summary.get("test"),
                "training_seconds": summary.get("training_seconds")}

    # --- the report --------------------------------------------------------------------------------------

    def write(self) -> None:
        report = {"smoke": self.smoke, "minutes": (time.perf_counter() - self.started) / 60,
                  "command": "python -m benchmarks.gpu_check " + " ".join(sys.argv[1:]), "sections": self.sections}
        (self.out / "gpu-check.json").write_text(json.dumps(report, indent=2, default=str))
        (self.out / "gpu-check.md").write_text(markdown(report))


def _number(value: Any, digits: int = 3) -> str:
    return "-" if value is None else (f"{value:.{digits}g}" if isinstance(value, float) else str(value))


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: a status line per section, then the train and generation tables."""
    sections = report["sections"]
    lines = ["# GPU check", "", f"`{report['command']}` ({report['minutes']:.1f} min"
             + (", smoke sizes" if report["smoke"] else "") + ")", ""]
    environment = sections.get("environment", {})
    if environment.get("status") == "ok":
        lines += [f"Device: {environment['device']} x {environment['devices']} ({environment['backend']}); "
                  f"peak bfloat16 dense {_number(environment['peak_bf16_flops'])} FLOP/s; "
                  + ", ".join(f"{k} {v}" for k, v in environment["packages"].items()), ""]
    lines += ["| section | status | seconds | note |", "|---|---|---|---|"]
    for name, section in sections.items():
        note = section.get("error") or section.get("reason") or ""
        if name == "tests" and "files" in section:
            note = "; ".join(f"{Path(f).name}: {r['status']} {r.get('summary', '')}" for f, r in section["files"].items())
        if name == "attention" and section.get("status") == "ok":
            note = (f"max |fused - einsum| {section['max_abs_difference']:.3g}, implementation "
                    f"{section['implementation']}, cuDNN called {section['calls_cudnn']['fused']}, grad step s "
                    + ", ".join(f"{k} {v:.3g}" for k, v in section["grad_step_s"].items()))
        lines.append(f"| {name} | {section.get('status')} | {section.get('seconds', '')} | {note.replace('|', '/')[:600]} |")
    rows = sections.get("train", {}).get("rows", [])
    if rows:
        lines += ["", "## Train step", "", "| model | config | batch | tljax steps/s | PyTorch steps/s | "
                  "tljax / PyTorch speed | tljax MFU | PyTorch MFU | tljax first step s |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['config']} | {r['batch']} | {_number(r['jax_steps_per_s'])} | "
                  f"{_number(r['torch_steps_per_s'])} | {_number(r['speed_ratio'])} | {_number(r['jax_mfu'])} | "
                  f"{_number(r['torch_mfu'])} | {_number(r['jax_first_step_s'])} |" for r in rows]
    generation = sections.get("generate", {})
    if generation.get("status") == "ok":
        lines += ["", "## Generation", "", f"Greedy, KV cache, bfloat16, batch {generation['batch']}, "
                  f"{generation['new_tokens']} new tokens: tljax {_number(generation['jax']['tokens_per_s'])} "
                  f"tokens/s, PyTorch {_number(generation['torch']['tokens_per_s'])} tokens/s (ratio "
                  f"{_number(generation['speed_ratio'])})."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the folder the report and its inputs are written to")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes and one test: the check of the check")
    parser.add_argument("--budget", type=float, default=270.0, help="seconds the sections may start within")
    parser.add_argument("--only", help=f"comma-separated sections: {', '.join(SECTIONS)} (environment always runs)")
    args = parser.parse_args(argv)
    chosen = set(args.only.split(",")) if args.only else set(SECTIONS)
    if chosen - set(SECTIONS):
        parser.error(f"unknown section(s) {', '.join(sorted(chosen - set(SECTIONS)))}; valid: {', '.join(SECTIONS)}")
    check = Check(Path(args.out), args.smoke, args.budget)
    check.section("environment", check.environment)
    if check.sections["environment"]["status"] != "ok":
        return 1
    check.inputs()
    for name in SECTIONS[1:]:
        if name in chosen:
            check.section(name, getattr(check, name.replace("-", "_")))
    print(f"written: {check.out / 'gpu-check.md'}")
    return 0 if all(s["status"] != "failed" for s in check.sections.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
