"""tljax against PyTorch (`transformers` + `peft`) on the same workloads: `python -m benchmarks`.

Each measurement runs in its own process (`python -m benchmarks.jax_side SPEC` / `benchmarks.torch_side
SPEC`), the two sides alternated A B A B, because this kind of machine's speed drifts by about 20% over
tens of seconds: ratios are taken within a round, and the report gives their median. Nothing here is a test;
`tests/test_benchmarks.py` runs a few steps of each workload so that the benchmark keeps working.
"""
