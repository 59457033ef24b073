"""The GPU check's report: the train table's rows from both sides' measurements, and the markdown that
`benchmarks.gpu_check` writes beside its JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.gpu_inputs import batch_shape, shape
from benchmarks.gpu_plan import train_flops


def train_rows(family: str, smoke: bool, configs: list[dict[str, Any]], measured: dict[str, dict[str, Any]],
               peak: float | None) -> list[dict[str, Any]]:
    """One row per config of `family`: each side's steps/s, their ratio, MFU against `peak` (None: unknown),
    the trainable parameter counts and the first step's losses ([tljax, PyTorch]: the same batch, so both near
    ln 2 with a fresh two-label head); `measured` is {"jax": result, "torch": result} of the "train" workload."""
    batch, length = batch_shape(family, smoke)
    rows = []
    for one in configs:
        jax_row, torch_row = (measured[side]["rows"][one["name"]] for side in ("jax", "torch"))
        flops = train_flops(shape(family, smoke), batch, length, one["method"])
        rows.append({"model": family, "config": one["name"], "batch": f"{batch} x {length}",
                     "jax_steps_per_s": 1 / jax_row["step_s"], "torch_steps_per_s": 1 / torch_row["step_s"],
                     "speed_ratio": torch_row["step_s"] / jax_row["step_s"],
                     "jax_first_step_s": jax_row["first_step_s"], "model_flops_per_step": flops,
                     "jax_mfu": flops / jax_row["step_s"] / peak if peak else None,
                     "torch_mfu": flops / torch_row["step_s"] / peak if peak else None,
                     "trainable": [jax_row["trainable"], torch_row["trainable"]],
                     "first_loss": [jax_row["first_loss"], torch_row["first_loss"]]})
    return rows


def _number(value: Any, digits: int = 3) -> str:
    return "-" if value is None else (f"{value:.{digits}g}" if isinstance(value, float) else str(value))


def _note(name: str, section: dict[str, Any]) -> str:
    """The table's note on a section: its error or reason, the test files' outcomes, attention's findings."""
    if name == "tests" and "files" in section:
        return "; ".join(f"{Path(f).name}: {r['status']} {r.get('summary', '')}".strip()
                         for f, r in section["files"].items())
    if name == "attention" and section.get("status") == "ok":
        return (f"max |fused - einsum| {section['max_abs_difference']:.3g}, implementation "
                f"{section['implementation']}, cuDNN called {section['calls_cudnn']['fused']}, grad step s "
                + ", ".join(f"{k} {v:.3g}" for k, v in section["grad_step_s"].items()))
    return section.get("error") or section.get("reason") or ""


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown: the device, a status line per section, then the train and generation tables."""
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
        note = _note(name, section).replace("|", "/")[:600]
        lines.append(f"| {name} | {section.get('status')} | {section.get('seconds', '')} | {note} |")
    rows = sections.get("train", {}).get("rows", [])
    if rows:
        lines += ["", "## Train step", "", "| model | config | batch | tljax steps/s | PyTorch steps/s | "
                  "tljax / PyTorch speed | tljax MFU | PyTorch MFU | tljax first step s | trainable (tljax, PyTorch) | "
                  "first loss (tljax, PyTorch) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['config']} | {r['batch']} | {_number(r['jax_steps_per_s'])} | "
                  f"{_number(r['torch_steps_per_s'])} | {_number(r['speed_ratio'])} | {_number(r['jax_mfu'])} | "
                  f"{_number(r['torch_mfu'])} | {_number(r['jax_first_step_s'])} | "
                  f"{r['trainable'][0]:,}, {r['trainable'][1]:,} | "
                  f"{_number(r['first_loss'][0], 4)}, {_number(r['first_loss'][1], 4)} |" for r in rows]
    generation = sections.get("generate", {})
    if generation.get("status") == "ok":
        lines += ["", "## Generation", "", f"Greedy, KV cache, bfloat16, batch {generation['batch']}, "
                  f"{generation['new_tokens']} new tokens: tljax {_number(generation['jax']['tokens_per_s'])} "
                  f"tokens/s, PyTorch {_number(generation['torch']['tokens_per_s'])} tokens/s (ratio "
                  f"{_number(generation['speed_ratio'])})."]
    return "\n".join(lines) + "\n"
