"""One side of a GPU check measurement, in its own process: `python -m benchmarks.gpu_side SPEC_JSON`.

`spec["side"]` is "jax" (tljax: `run.prepare` and `loop.build_engine`, the step `python -m tljax.train` runs;
`tljax.models.generate`) or "torch" (`transformers` + `peft` on the same model directory, CUDA when there is
one, bfloat16 by autocast as mixed precision: float32 parameters, bfloat16 compute, as tljax's
`training.dtype: bfloat16`). Workloads: "train" (several configs in one process: one model load, one JAX
start), "generate", "attention" (JAX only: the fused path against the einsums). The process's devices are the
parent's choice (`JAX_PLATFORMS` is set by `benchmarks.gpu_check`).
"""

from __future__ import annotations

import os
import time
from typing import Any

from benchmarks.common import load_batches, report, run_config, spec_from_argv, step_times, timed

for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402


def jax_train(spec: dict[str, Any]) -> dict[str, Any]:
    """Seconds per train step, the trainable count and the first step's loss for each {"name", "method",
    "overrides"} in `spec["configs"]`, on the batches in `spec["batches"]`."""
    import jax

    from tljax.runs import FINAL_STEP
    from tljax.train.loop import build_engine
    from tljax.train.run import prepare
    from tljax.train.sharding import data_mesh, shard_batch

    batches = load_batches(spec["batches"])
    mesh = data_mesh()
    placed = [shard_batch(b, mesh) for b in batches]
    rows = {}
    for one in spec["configs"]:
        prepared = prepare(run_config(one["method"], one["overrides"]))
        engine = build_engine(prepared, total_steps=1000, mesh=mesh)
        state = {"trainable": engine.trainable, "opt_state": engine.opt_state}
        losses = []

        def step(i: int) -> None:
            key = jax.random.fold_in(jax.random.key(0), i)
            state["trainable"], state["opt_state"], metrics = engine.train_step(
                state["trainable"], engine.frozen, state["opt_state"], placed[i], key)
            losses.append(metrics["loss"])  # kept on the device: a host read would add a transfer to each step
            metrics["loss"].block_until_ready()

        first, per_step = step_times(step, len(placed), spec.get("warmup", 2), spec.get("repeats", 5))
        count, total = prepared.objective.count(FINAL_STEP)
        rows[one["name"]] = {"first_step_s": first, "step_s": per_step, "trainable": count, "parameters": total,
                             "first_loss": float(losses[0])}
        engine = state = prepared = None  # the next config's model is built with these freed
    return {"rows": rows, "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend()}


def torch_train(spec: dict[str, Any]) -> dict[str, Any]:
    """The same configs and batches with `transformers` + `peft` (AdamW, linear warm-up, clipping at the config's
    values)."""
    import torch

    from benchmarks.torch_side import classifier, train_step

    device = "cuda" if torch.cuda.is_available() else "cpu"
    batches = [{"input_ids": torch.from_numpy(b["input_ids"]).long().to(device),
                "attention_mask": torch.from_numpy(b["attention_mask"]).long().to(device),
                "labels": torch.from_numpy(b["labels"]).long().to(device)} for b in load_batches(spec["batches"])]
    rows = {}
    for one in spec["configs"]:
        config = run_config(one["method"], one["overrides"])
        tc = config.training
        model, count = classifier(config)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = 0
        model.to(device).train()
        step, losses = train_step(model, tc, batches, device, bfloat16=tc.dtype == "bfloat16")
        first, per_step = step_times(step, len(batches), spec.get("warmup", 2), spec.get("repeats", 5))
        rows[one["name"]] = {"first_step_s": first, "step_s": per_step, "trainable": count,
                             "parameters": sum(p.numel() for p in model.parameters()), "first_loss": losses[0]}
        del model, step
        if device == "cuda":
            torch.cuda.empty_cache()
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    return {"rows": rows, "device": name, "backend": device}


def _prompt(spec: dict[str, Any]) -> np.ndarray:
    return np.random.default_rng(0).integers(5, 500, (spec["batch"], spec["prompt"]), dtype=np.int32)


def jax_generate(spec: dict[str, Any]) -> dict[str, Any]:
    """Greedy generation with the KV cache, bfloat16: new tokens/s over the batch."""
    import jax.numpy as jnp

    from tljax.models import LlamaForCausalLM, generate

    model = LlamaForCausalLM.from_pretrained(spec["model"], dtype=jnp.bfloat16)
    ids, new = _prompt(spec), spec["new_tokens"]

    def run():
        return np.asarray(generate(model, ids, max_new_tokens=new, eos_token_ids=()))

    _, first = timed(run)
    seconds = float(np.median([timed(run)[1] for _ in range(spec.get("repeats", 3))]))
    return {"first_s": first, "seconds": seconds, "tokens_per_s": new * ids.shape[0] / seconds}


def torch_generate(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = transformers.AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.bfloat16).to(device).eval()
    ids, new = torch.from_numpy(_prompt(spec)).long().to(device), spec["new_tokens"]

    @torch.inference_mode()
    def run():
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                              do_sample=False, use_cache=True, pad_token_id=0)[:, ids.shape[1]:].tolist()

    _, first = timed(run)
    seconds = float(np.median([timed(run)[1] for _ in range(spec.get("repeats", 3))]))
    return {"first_s": first, "seconds": seconds, "tokens_per_s": new * ids.shape[0] / seconds}


def jax_attention(spec: dict[str, Any]) -> dict[str, Any]:
    """`attend` on the fused path (cuDNN where `fused_implementation` picks it) against the einsums, in
    bfloat16 at SmolLM2's attention shape with a left-padded causal mask: the largest output difference,
    whether the compiled program calls cuDNN's attention, and each path's forward + backward time."""
    import jax
    import jax.numpy as jnp

    from tljax.models.layers import attend, fused_implementation

    batch, heads, kv_heads, length, dim = spec["shape"]
    r = np.random.default_rng(0)
    q = jnp.asarray(r.normal(size=(batch, heads, length, dim)), jnp.bfloat16)
    k = jnp.asarray(r.normal(size=(batch, kv_heads, length, dim)), jnp.bfloat16)
    v = jnp.asarray(r.normal(size=(batch, kv_heads, length, dim)), jnp.bfloat16)
    real = np.arange(length)[None] >= (np.arange(batch) * 7 % (length // 2))[:, None]  # left padding
    mask = jnp.asarray(real[:, None, None, :] & np.tril(np.ones((length, length), bool))[None, None])
    out, calls_cudnn, seconds = {}, {}, {}
    for path in ("einsum", "fused"):
        os.environ["TLJAX_ATTENTION"] = path
        forward = jax.jit(lambda *a: attend(*a))  # a new function: the path is read when tracing
        grad = jax.jit(jax.grad(lambda q, k, v, m: attend(q, k, v, m).astype(jnp.float32).sum(), argnums=(0, 1, 2)))
        out[path] = np.asarray(forward(q, k, v, mask), np.float32)
        calls_cudnn[path] = "cudnn" in forward.lower(q, k, v, mask).compile().as_text().lower()
        jax.block_until_ready(grad(q, k, v, mask))
        seconds[path] = float(np.median([timed(lambda: jax.block_until_ready(grad(q, k, v, mask)))[1]
                                         for _ in range(spec.get("repeats", 10))]))
    rows = real.astype(bool)[:, None, :, None]  # padding queries' outputs are never read
    difference = float(np.abs(np.where(rows, out["fused"] - out["einsum"], 0)).max())
    return {"max_abs_difference": difference, "calls_cudnn": calls_cudnn, "grad_step_s": seconds,
            "implementation": fused_implementation(jnp.bfloat16, dim, length, length) or "xla"}


WORKLOADS = {("jax", "train"): jax_train, ("torch", "train"): torch_train, ("jax", "generate"): jax_generate,
             ("torch", "generate"): torch_generate, ("jax", "attention"): jax_attention}

if __name__ == "__main__":
    spec = spec_from_argv()
    started = time.perf_counter()
    result = WORKLOADS[spec["side"], spec["workload"]](spec)
    report({**result, "side": spec["side"], "seconds_in_process": time.perf_counter() - started})
