"""Two local processes (CPU, JAX's collectives over loopback), two simulated devices each, train one run:
they read disjoint rows of every batch, match a one-process run on four devices, and resume together."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from safetensors.numpy import load_file

from conftest import cli_env, write_reviews

WORKER = Path(__file__).with_name("distributed_worker.py")
STEPS = 20


def config_file(folder: Path, tiny_model: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "model": str(tiny_model),
        "data": {"source": str(write_reviews(folder / "reviews.csv")), "text_column": "review",
                 "label_column": "sentiment", "labels": ["neg", "pos"], "max_length": 32},
        "method": {"name": "lora", "rank": 4},  # dropout on: every process must draw the same keys
        "training": {"learning_rate": 5e-3, "max_steps": STEPS, "per_device_train_batch_size": 4, "eval_steps": 5,
                     "logging_steps": 1, "early_stopping_patience": None, "mesh": {"data": 2, "fsdp": 2}},
        "output_dir": str(folder / "run"),
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: Path, processes: int, devices: int, *extra: str, faults: str | None = None) -> list[dict]:
    """Runs `python -m tljax.train` in `processes` processes of `devices` CPU devices each; returns each
    process's record (exit code, process count, the examples it read per batch)."""
    port = free_port()
    env = cli_env(devices, **({"TLJAX_FAULTS": faults} if faults else {}))
    running = []
    for index in range(processes):
        record = config.parent / f"record-{processes}-{index}-{len(list(config.parent.glob('record-*')))}.json"
        distributed = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes),
                       "--process-id", str(index)] if processes > 1 else []
        command = [sys.executable, str(WORKER), str(record), "--config", str(config), *distributed, *extra]
        running.append((record, subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                 text=True)))
    results = []
    for record, process in running:
        output, _ = process.communicate(timeout=600)
        result = json.loads(record.read_text()) if record.is_file() else {}
        results.append({**result, "code": process.returncode, "output": output})
    return results


def trained(run: Path) -> dict[str, np.ndarray]:
    return load_file(run / "export" / "trainable.safetensors")


def train_losses(run: Path) -> list[float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in lines if r["split"] == "train"]
    assert steps == list(range(1, STEPS + 1)), steps  # each step logged once, by one process
    return [r["loss"] for r in lines if r["split"] == "train"]


def test_two_processes_train_as_one_with_four_devices_and_resume_exactly(tmp_path, tiny_model):
    single = launch(config_file(tmp_path / "single", tiny_model), 1, 4)
    assert single[0]["code"] == 0, single[0]["output"][-3000:]
    pair = launch(config_file(tmp_path / "pair", tiny_model), 2, 2)
    for result in pair:
        assert result["code"] == 0, result["output"][-3000:]
        assert result["process_count"] == 2
    assert sorted(r["process_index"] for r in pair) == [0, 1]

    # each batch: the two processes read disjoint halves of the rows the single process read
    reference, first, second = single[0]["rows"], pair[0]["rows"], pair[1]["rows"]
    assert len(reference) == len(first) == len(second) == STEPS
    for whole, a, b in zip(reference, first, second):
        assert not set(a) & set(b)
        assert sorted(a + b) == sorted(whole) and len(a) == len(b) == len(whole) // 2

    # the same computation, its sums reduced across processes in another order: float32 rounding, which 20
    # AdamW steps carry to ~1e-6 relative; a dropped or doubled row would move the loss at ~1e-2
    np.testing.assert_allclose(train_losses(tmp_path / "pair" / "run"), train_losses(tmp_path / "single" / "run"),
                               rtol=1e-4)
    reference_params, pair_params = trained(tmp_path / "single" / "run"), trained(tmp_path / "pair" / "run")
    assert reference_params.keys() == pair_params.keys()
    for name in reference_params:
        np.testing.assert_allclose(pair_params[name], reference_params[name], rtol=1e-4, atol=1e-6, err_msg=name)
    printed = pair[0]["output"] + pair[1]["output"]
    assert printed.count("test: accuracy") == 1  # only process 0 reports

    # both processes killed at step 13 (after the checkpoint of step 10), then resumed: exactly the same run
    killed = config_file(tmp_path / "killed", tiny_model)
    stopped = launch(killed, 2, 2, faults="step=13:kill")
    assert all(r["code"] == -9 for r in stopped), [r["output"][-2000:] for r in stopped]
    assert not (tmp_path / "killed" / "run" / "summary.json").exists()
    resumed = launch(killed, 2, 2, "--resume")
    for result in resumed:
        assert result["code"] == 0, result["output"][-3000:]
        assert len(result["rows"]) == STEPS - 10  # from the checkpoint of step 10 on
    again = trained(tmp_path / "killed" / "run")
    for name in pair_params:
        np.testing.assert_array_equal(again[name], pair_params[name], err_msg=name)
    assert train_losses(tmp_path / "killed" / "run") == train_losses(tmp_path / "pair" / "run")
