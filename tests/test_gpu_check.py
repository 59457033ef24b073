"""The GPU check on the CPU: its command at smoke sizes (environment, the test files, a side process, the
report), its inputs, the train-step comparison and generation of both sides on the smoke inputs (run in this
process: a process per side would cost seconds of imports each), the real run's plan, and the figures MFU
rests on."""

import ast
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.common import method_config
from benchmarks.gpu_check import file_outcome, main
from benchmarks.gpu_inputs import FAMILIES, MINILM, Inputs, batch_shape, make_inputs, read_texts, shape
from benchmarks.gpu_plan import (PEAK_BF16_FLOPS, SECTIONS, TEST_FILES, forward_flops_per_token, generate_spec,
                                 peak_flops, planned_test_paths, train_configs, train_flops, train_spec)
from benchmarks.gpu_report import markdown, train_rows
from tljax.train.config import load_config

ROOT = Path(__file__).resolve().parent.parent
MISSING_ON_THE_GPU = ("datasets", "tensorflow_datasets", "gradio", "gguf")  # not in the GPU machine's image


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Inputs:
    """The smoke inputs, as the command makes them: the CSV, both model directories, their batches."""
    return make_inputs(tmp_path_factory.mktemp("gpu-inputs"), smoke=True)


def test_the_inputs_are_what_the_sides_read(inputs):
    import transformers

    from benchmarks.common import load_batches

    assert read_texts(inputs.csv)[:1] and len(read_texts(inputs.csv)) == 200
    for family in FAMILIES:
        tokenizer = transformers.AutoTokenizer.from_pretrained(inputs.model(family))
        assert tokenizer("a moving film")["input_ids"], family
        batches = load_batches(inputs.batches(family))
        assert len(batches) == 2 and batches[0]["input_ids"].shape == batch_shape(family, True)
        assert batches[0]["input_ids"].max() < shape(family, True)["vocab_size"]


def finite(value: float) -> bool:
    """A float, neither NaN nor infinite."""
    return isinstance(value, float) and math.isfinite(value)


def test_the_smoke_command_writes_a_report_of_every_section(tmp_path):
    # The train, generate and end-to-end sections start 7 processes that each import JAX, tljax or PyTorch
    # (over a minute on 2 cores); their inputs and workloads are tested in this process below.
    env = {k: v for k, v in os.environ.items() if k != "TLJAX_ATTENTION"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", str(tmp_path), "--smoke",
                           "--only", "tests,attention"], cwd=ROOT, capture_output=True, text=True,
                          env={**env, "JAX_PLATFORMS": "cpu"})
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    sections = report["sections"]
    statuses = {name: section["status"] for name, section in sections.items()}
    assert done.returncode == 0, (statuses, done.stdout[-3000:], done.stderr[-3000:])
    assert statuses == {"environment": "ok", "tests": "ok", "attention": "ok", "train": "skipped",
                        "generate": "skipped", "end-to-end": "skipped"}
    assert sections["environment"]["backend"] == "cpu" and sections["environment"]["peak_bf16_flops"] is None
    assert sections["tests"]["files"] == {name: {"status": "not run", "summary": "smoke"} for name in TEST_FILES}
    attention = sections["attention"]
    assert attention["max_abs_difference"] < 0.05  # bfloat16 outputs of order 1
    assert all(finite(s) and s > 0 for s in attention["grad_step_s"].values())
    assert not (tmp_path / "work").exists()  # no chosen section reads the made inputs
    text = (tmp_path / "gpu-check.md").read_text()
    assert "smoke sizes" in text and "max /fused - einsum/" in text
    assert all(f"| {name} | {statuses[name]} |" in text for name in SECTIONS)
    assert "| train | skipped |  | not chosen (--only) |" in text


def test_the_train_step_of_both_sides_on_the_same_batches(inputs):
    # MiniLM's smoke config alone: each JAX train step compiles for seconds here, and the decoder's sides are
    # built below (every config of the real plan) and run in generation.
    from benchmarks.gpu_side import jax_train, torch_train

    spec = {**train_spec("minilm", True, inputs), "warmup": 1, "repeats": 1}  # the figures are not checked
    measured = {"jax": jax_train(spec), "torch": torch_train(spec)}
    (row,) = train_rows("minilm", True, spec["configs"], measured, peak_flops("NVIDIA H200"))
    assert (row["model"], row["config"], row["batch"]) == ("minilm", "lora bfloat16", "8 x 32")
    numbers = [row[k] for k in ("jax_steps_per_s", "torch_steps_per_s", "speed_ratio", "jax_first_step_s",
                                "jax_mfu", "torch_mfu")]
    assert all(finite(n) and n > 0 for n in numbers), row
    # A fresh two-label head on random weights: both sides' first loss on the same batch is near ln 2.
    assert all(abs(loss - math.log(2)) < 0.15 for loss in row["first_loss"]), row
    text = markdown({"smoke": True, "minutes": 0.5, "command": "c",
                     "sections": {"train": {"status": "ok", "seconds": 9.0, "rows": [row]}}})
    assert "## Train step" in text and "| minilm | lora bfloat16 | 8 x 32 |" in text


def test_every_train_config_of_the_real_plan_builds_on_both_sides(inputs):
    """The real run's configs on the smoke models (a config that fails to build loses its family's rows)."""
    from benchmarks.torch_side import classifier
    from tljax.runs import FINAL_STEP
    from tljax.train.run import prepare

    for family in FAMILIES:
        for one in train_configs(family, False, inputs):
            config = load_config(method_config(one["method"]), one["overrides"])
            (jax_count, total), (_, torch_count) = prepare(config).objective.count(FINAL_STEP), classifier(config)
            # full: everything; LoRA: the adapters and the head (with an encoder's pooler), the same on both sides
            assert jax_count == torch_count and (jax_count == total) == (one["method"] == "full"), (family, one)


def test_generation_on_both_sides(inputs):
    from benchmarks.gpu_side import jax_generate, torch_generate

    spec = generate_spec(True, inputs)
    measured = {"jax": jax_generate(spec), "torch": torch_generate(spec)}
    assert all(finite(m["tokens_per_s"]) and m["tokens_per_s"] > 0 for m in measured.values())
    section = {"status": "ok", "batch": spec["batch"], "new_tokens": spec["new_tokens"], **measured,
               "speed_ratio": measured["jax"]["tokens_per_s"] / measured["torch"]["tokens_per_s"]}
    text = markdown({"smoke": True, "minutes": 0.5, "command": "c", "sections": {"generate": section}})
    assert "## Generation" in text and "batch 1, 8 new tokens" in text


def test_the_real_plan(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--plan"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert not list(tmp_path.iterdir())  # nothing ran, nothing written
    assert not planned["smoke"] and planned["tests"] == list(TEST_FILES)
    assert planned["attention"]["shape"] == [8, 9, 3, 256, 64]  # SmolLM2's attention at its train batch
    train = planned["train"]
    assert [c["name"] for c in train["minilm"]["configs"]] == ["full float32", "full bfloat16", "lora float32",
                                                               "lora bfloat16"]
    assert [c["name"] for c in train["smollm2"]["configs"]] == ["full bfloat16", "lora bfloat16"]
    for family, (batch, length) in {"minilm": (32, 128), "smollm2": (8, 256)}.items():
        assert train[family]["repeats"] == 5 and train[family]["batches"] == str(tmp_path / "work" / f"{family}.npz")
        for one in train[family]["configs"]:  # each override is a run config key, with the value meant
            config = load_config(method_config(one["method"]), one["overrides"])
            assert (config.model, config.data.source) == (str(tmp_path / "work" / family),
                                                          str(tmp_path / "work" / "reviews.csv"))
            assert (config.training.per_device_train_batch_size, config.data.max_length) == (batch, length)
            assert config.training.dtype == one["name"].split()[1] and config.method["name"] == one["method"]
            if (family, one["method"]) == ("smollm2", "lora"):  # Llama's projections, not BERT's query / value
                assert config.method["targets"] == ["q_proj", "v_proj"]
    assert {k: planned["generate"][k] for k in ("batch", "prompt", "new_tokens")} == {"batch": 8, "prompt": 64,
                                                                                      "new_tokens": 128}
    command = planned["end-to-end"]
    assert command[1:3] == ["-m", "tljax.train"]
    config = load_config(None, command[4::2])
    assert (config.training.max_steps, config.output_dir) == (60, str(tmp_path / "work" / "run"))


def test_the_smoke_plan_is_the_tiny_one(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--plan", "--smoke", "--only", "train,generate"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert set(planned) == {"smoke", "train", "generate"} and planned["smoke"]
    assert planned["train"]["minilm"]["repeats"] == 2 and planned["generate"]["new_tokens"] == 8


def top_level_imports(path: Path) -> set[str]:
    """The top packages a module imports when it loads (imports inside functions left out)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_planned_test_files_exist_and_load_on_the_gpu_image():
    paths = planned_test_paths(ROOT)
    assert [p.name for p in paths] == ["test_attention.py", "test_encoder.py", "test_decoder.py",
                                       "test_methods.py"]
    seen, todo = set(), list(paths)
    while todo:  # the test files and the test modules they import (conftest, test_train, ...)
        path = todo.pop()
        assert path.is_file(), path
        seen.add(path)
        imported = top_level_imports(path)
        assert not imported & set(MISSING_ON_THE_GPU), (path, imported & set(MISSING_ON_THE_GPU))
        local = {ROOT / "tests" / f"{name}.py" for name in imported | {"conftest"}}
        todo += [p for p in local if p.is_file() and p not in seen]


def test_a_test_file_s_outcome_is_read_from_pytest_s_output():
    assert file_outcome(0, "....\n4 passed in 1.2s\n") == {"status": "passed", "summary": "4 passed in 1.2s",
                                                           "output_tail": ""}
    failed = file_outcome(1, "F.\nFAILED tests/x.py::t\n1 failed, 1 passed in 3.0s\n")
    assert failed["status"] == "failed" and failed["summary"] == "1 failed, 1 passed in 3.0s"
    assert "FAILED tests/x.py::t" in failed["output_tail"]
    missing = "E   ModuleNotFoundError: No module named 'datasets'\n1 error in 0.5s\n"
    assert file_outcome(2, missing)["status"] == "skipped"  # an import the image lacks: not a failure of tljax
    assert file_outcome(1, missing)["status"] == "failed"  # a test that ran and failed is a failure


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
