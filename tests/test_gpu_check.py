"""The GPU check's smoke mode on the CPU: every section runs and the report says what it measured."""

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.gpu_check import PEAK_BF16_FLOPS, forward_flops_per_token, peak_flops, train_flops
from benchmarks.gpu_inputs import MINILM

ROOT = Path(__file__).resolve().parent.parent


def test_the_smoke_check_runs_every_section_and_writes_its_report(tmp_path):
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", str(tmp_path), "--smoke"],
                          cwd=ROOT, capture_output=True, text=True, env={**_env(), "JAX_PLATFORMS": "cpu"})
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    statuses = {name: section["status"] for name, section in report["sections"].items()}
    assert done.returncode == 0, (statuses, done.stdout[-3000:], done.stderr[-3000:])
    assert statuses == dict.fromkeys(("environment", "tests", "attention", "train", "generate", "end-to-end"), "ok")
    rows = report["sections"]["train"]["rows"]
    assert {(r["model"], r["config"]) for r in rows} == {("minilm", "lora bfloat16"), ("smollm2", "full bfloat16")}
    assert all(r["jax_steps_per_s"] > 0 and r["torch_steps_per_s"] > 0 for r in rows)
    assert report["sections"]["attention"]["max_abs_difference"] < 0.05  # bfloat16 outputs of order 1
    markdown = (tmp_path / "gpu-check.md").read_text()
    assert "## Train step" in markdown and "## Generation" in markdown


def _env():
    import os

    return {k: v for k, v in os.environ.items() if k != "TLJAX_ATTENTION"}


def test_peak_flops_are_looked_up_by_the_device_name():
    assert peak_flops("NVIDIA H100 PCIe") == 756e12  # before the plain H100 (SXM) entry
    assert peak_flops("NVIDIA H100 80GB HBM3") == peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("cpu") is None
    assert [part for part, _ in PEAK_BF16_FLOPS].index("H100 PCIe") < [part for part, _ in PEAK_BF16_FLOPS].index("H100")


def test_model_flops_count_each_layer_s_products():
    # MiniLM-L6 at 128 tokens: 6 layers x 2 x (4 x 384^2 + 2 x 384 x 1536) + attention 6 x 4 x 128 x 384
    per_token = 6 * 2 * (4 * 384**2 + 2 * 384 * 1536) + 6 * 4 * 128 * 384
    assert forward_flops_per_token(MINILM, 128) == per_token
    assert train_flops(MINILM, 32, 128, "full") == 3 * 32 * 128 * per_token
    assert train_flops(MINILM, 32, 128, "lora") == 2 * 32 * 128 * per_token
