"""The evaluation harness: tasks (data, label verbalisers, English and Portuguese prompts, label descriptions)
and variants of one base model (zero-shot, few-shot, free chat, any finished tljax run: fine-tuned with any
method, distilled, multi-task, cross-lingual) evaluated on the same items with the same metrics and costs.

    python -m harness list                      # built-in tasks, suites and variant kinds
    python -m harness run ci --limit 50         # a suite: predictions, results table, plots

Modules: `tasks` (task files), `prompts` (chat prompts, few-shot draws), `scoring` (decoder log-likelihoods,
lm-evaluation-harness's conventions), `encoders` (embeddings, zero-shot by description, few-shot classifiers),
`variants`, `results` (metrics, intervals, tests), `plots`, `suite` (the runner and its cache), `notebook`
(`harness.evaluate`: one task's evaluation from Python, as a DataFrame). It imports tljax; tljax never imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.notebook import evaluate

__all__ = ["evaluate"]


def __getattr__(name: str):
    """`harness.evaluate`, imported on first use (it brings JAX and the models; `python -m harness --help` does
    not wait for them)."""
    if name == "evaluate":
        from harness.notebook import evaluate

        return evaluate
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
