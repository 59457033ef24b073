"""What the GPU check runs, as data: the test files, the workload specs of each section, the end-to-end command
and the model FLOPs that MFU divides. Runs nothing and imports neither JAX nor PyTorch, so that
`python -m benchmarks.gpu_check --plan` (and the tests) can list the real run's plan on any machine.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from benchmarks.gpu_inputs import FAMILIES, Inputs, batch_shape, shape

SECTIONS = ("environment", "tests", "attention", "train", "generate", "end-to-end")
INPUT_READERS = ("train", "generate", "end-to-end")  # the sections that read the made inputs (models, CSV, batches)
# The test files that run on a device from the repository alone: no packaged model or corpus (the `real`
# tests are deselected), none of the packages the GPU image lacks (datasets, tensorflow-datasets, gradio, gguf).
# Not tests/test_sharding.py: its layouts need 8 devices and the lent machines have one GPU (it runs on the
# CPU's 8 simulated devices in the suite).
TEST_FILES = ("tests/test_attention.py", "tests/test_encoder.py", "tests/test_decoder.py", "tests/test_methods.py")
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


def planned_test_paths(root: Path) -> list[Path]:
    """TEST_FILES under `root`, the repository."""
    return [root / name for name in TEST_FILES]


def attention_shape(smoke: bool) -> tuple[int, int, int, int, int]:
    """(batch, heads, key/value heads, length, head size) of the attention comparison: SmolLM2's attention at
    its train batch."""
    config = shape("smollm2", smoke)
    batch, length = batch_shape("smollm2", smoke)
    heads = config["num_attention_heads"]
    return batch, heads, config["num_key_value_heads"], length, config["hidden_size"] // heads


def train_configs(family: str, smoke: bool, inputs: Inputs) -> list[dict[str, Any]]:
    """The train-step configs of `family`: {"name", "method", "overrides"} (`python -m tljax.train --set`
    assignments). Full fine-tuning and LoRA, float32 and bfloat16; SmolLM2 in bfloat16 only (its 30 unscanned
    layers compile for tens of seconds per config). Smoke: one config per family, to check the plumbing."""
    dtypes = ("float32", "bfloat16") if family == "minilm" else ("bfloat16",)
    methods = ("full", "lora")
    if smoke:
        dtypes, methods = dtypes[-1:], ("lora",) if family == "minilm" else ("full",)
    targets = [] if family == "minilm" else ["method.targets=[q_proj, v_proj]"]
    batch, length = batch_shape(family, smoke)
    return [{"name": f"{method} {dtype}", "method": method,
             "overrides": [f"model={inputs.model(family)}", f"data.source={inputs.csv}", f"data.max_length={length}",
                           f"training.dtype={dtype}", f"training.per_device_train_batch_size={batch}"]
                          + (targets if method == "lora" else [])}
            for method in methods for dtype in dtypes]


def train_spec(family: str, smoke: bool, inputs: Inputs) -> dict[str, Any]:
    """The "train" workload of `benchmarks.gpu_side` for `family` (both sides take the same spec)."""
    return {"workload": "train", "configs": train_configs(family, smoke, inputs),
            "batches": str(inputs.batches(family)), "repeats": 2 if smoke else 5}


def generate_spec(smoke: bool, inputs: Inputs) -> dict[str, Any]:
    """The "generate" workload: greedy, SmolLM2-shaped, bfloat16."""
    return {"workload": "generate", "model": str(inputs.model("smollm2")), "batch": 1 if smoke else 8,
            "prompt": 16 if smoke else 64, "new_tokens": 8 if smoke else 128, "repeats": 2}


def end_to_end_command(smoke: bool, inputs: Inputs) -> list[str]:
    """`python -m tljax.train` on the generated CSV with the MiniLM-shaped model (the default run: LoRA)."""
    steps = 4 if smoke else 60
    assignments = [f"model={inputs.model('minilm')}", f"data.source={inputs.csv}", f"output_dir={inputs.run}",
                   f"training.max_steps={steps}", f"training.eval_steps={steps}", "data.max_eval_examples=64"]
    return [sys.executable, "-m", "tljax.train", *(part for one in assignments for part in ("--set", one))]


def plan(smoke: bool, inputs: Inputs, sections: tuple[str, ...] = SECTIONS) -> dict[str, Any]:
    """Everything the chosen `sections` would run, by section (the environment probe needs no plan)."""
    steps = {"tests": lambda: list(TEST_FILES),
             "attention": lambda: {"workload": "attention", "shape": attention_shape(smoke)},
             "train": lambda: {family: train_spec(family, smoke, inputs) for family in FAMILIES},
             "generate": lambda: generate_spec(smoke, inputs),
             "end-to-end": lambda: end_to_end_command(smoke, inputs)}
    return {"smoke": smoke, **{name: steps[name]() for name in sections if name in steps}}
