"""A test-only reference: what EleutherAI's lm-evaluation-harness (its Hugging Face `hf` backend, PyTorch)
computes for decoder log-likelihood requests, so that our JAX scoring can be checked against it.

`loglikelihoods` runs lm-eval's own `HFLM(...).loglikelihood` (CPU, float32); `encode_pair` and
`hflm_encode_pair` give the token ids lm-eval scores; `chat_context` gives the prompt string lm-eval builds
under `--apply_chat_template`; `plain_requests` gives a multiple-choice item's (context, continuation) requests
without a chat template, from lm-eval's own task code. Written against lm-eval 0.4.13 (pinned in constraints.txt).

lm-eval's conventions, as read from its 0.4.13 source:

* Tokens (`TemplateLM._encode_pair`, `HFLM.tok_encode`): trailing whitespace of the context moves to the front
  of the continuation; context + continuation are tokenised together and cut at the token length of the
  context tokenised alone, so a continuation token that merges across the boundary is cut in two (the
  context part keeps the context's own tokens, the rest is whatever follows them in the joint encoding).
  `HFLM` passes no `add_special_tokens` for causal models unless `add_bos_token=` is given, so the
  tokenizer's own default applies (`encode(..., add_special_tokens=True)`: whatever its post-processor
  adds, e.g. Llama-2's BOS, nothing for SmolLM2 or GPT-2); and a string that already starts with the text of
  `prefix_token_id` (chat prompts starting with a BOS-like token) is encoded with `add_special_tokens=False`.
* An empty context (`loglikelihood`) becomes `[prefix_token_id]` (the BOS id, else the EOS id), unless the
  continuation's first token already is that id, in which case that token is the context.
* Scoring (`HFLM._loglikelihood_tokens`): input `(context + continuation)[-(max_length + 1):][:-1]`,
  right-padded, no attention mask; the sum of `log_softmax` over the continuation's tokens, and whether
  every continuation token is the argmax.
* Delimiters (`ConfigurableTask.construct_requests`): a multiple-choice continuation is
  `target_delimiter + choice`, `target_delimiter` being " " by default in plain prompts. Under
  `--apply_chat_template` it is "" (the choice follows the assistant turn's opening directly), unless the
  task has a `gen_prefix` not ending in whitespace (then the delimiter is kept and the prompt ends with the
  partial assistant message, `add_generation_prompt=False, continue_final_message=True`).
* Plain prompts (`ConfigurableTask.fewshot_context` without `apply_chat_template`, `build_qa_turn`): each
  few-shot example is `doc_to_text + target_delimiter + choice + fewshot_delimiter` (" " and "\\n\\n" by
  default), then the item's `doc_to_text`; the continuations are " " + each choice. The tokens are as above,
  so the context starts with whatever the tokenizer adds by default (a BOS for Llama-2, nothing for SmolLM2).
* A chat prompt usually ends in a newline (SmolLM2's ends "<|im_start|>assistant\\n"); by the first rule that
  newline moves into the continuation, so lm-eval scores "\\n" + choice after a context without it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_MODELS: dict[str, Any] = {}  # resolved model directory -> a loaded HFLM


def hflm(model_dir: str | Path, batch_size: int = 8):
    """lm-eval's `HFLM` for `model_dir` on the CPU in float32, loaded once per directory."""
    from lm_eval.models.huggingface import HFLM

    key = str(Path(model_dir).resolve())
    if key not in _MODELS:
        _MODELS[key] = HFLM(pretrained=str(model_dir), device="cpu", dtype="float32", batch_size=batch_size)
    lm = _MODELS[key]
    lm.batch_size_per_gpu = int(batch_size)
    return lm


def loglikelihoods(model_dir: str | Path, requests: list[tuple[str, str]],
                   batch_size: int = 8) -> list[tuple[float, bool]]:
    """(sum of the continuation's log-probabilities, whether it is the greedy continuation) for each
    (context, continuation) request, in request order, as lm-eval's `HFLM.loglikelihood` computes them."""
    from lm_eval.api.instance import Instance

    lm = hflm(model_dir, batch_size)
    instances = [Instance(request_type="loglikelihood", doc={}, arguments=(context, continuation), idx=i)
                 for i, (context, continuation) in enumerate(requests)]
    return [(float(logprob), bool(greedy)) for logprob, greedy in lm.loglikelihood(instances, disable_tqdm=True)]


def _encode_requests(lm, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """`HFLM.loglikelihood`'s tokenisation of one request (its empty-context rule, else `_encode_pair`)."""
    if context == "":
        continuation_enc = lm.tok_encode(continuation, add_special_tokens=False)
        if lm.prefix_token_id != continuation_enc[0]:
            return [lm.prefix_token_id], continuation_enc
        return continuation_enc[:1], continuation_enc[1:]
    return lm._encode_pair(context, continuation)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """The (context, continuation) token ids lm-eval's `HFLM` (causal, default `add_bos_token`) scores for
    this request, from a Hugging Face tokenizer alone: lm-eval's own `_encode_pair` / `tok_encode` run on an
    `HFLM` shell that holds only the tokenizer (no model is loaded). An empty context is handled as
    `HFLM.loglikelihood` does (the prefix token)."""
    from lm_eval.models.huggingface import HFLM

    shell = object.__new__(HFLM)
    shell.tokenizer = tokenizer
    shell.backend = "causal"
    shell.add_bos_token = None
    shell.custom_prefix_token_id = None
    return _encode_requests(shell, context, continuation)


def hflm_encode_pair(model_dir: str | Path, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """`encode_pair` through the loaded `HFLM` for `model_dir` (its `_encode_pair` on its own tokenizer)."""
    return _encode_requests(hflm(model_dir), context, continuation)


def chat_context(model_dir: str | Path, messages: list[dict]) -> str:
    """The context string lm-eval builds under `--apply_chat_template` for these role/content messages:
    `HFLM.apply_chat_template`, i.e. the tokenizer's `apply_chat_template(messages, tokenize=False,
    add_generation_prompt=True, continue_final_message=False)` with nothing added (the template's own
    default system prompt, if any, stays). Continuations follow it with the delimiter "" (module docstring)."""
    return hflm(model_dir).apply_chat_template(messages)


def plain_requests(question: str, choices: list[str], demonstrations: list[tuple[str, int]] = ()
                   ) -> list[tuple[str, str]]:
    """lm-eval's (context, continuation) requests, one per choice, for a multiple-choice item whose `doc_to_text`
    is `question`, after the few-shot examples (`doc_to_text`, the index of the right choice) in the given order:
    a `ConfigurableTask` with lm-eval's default delimiters, the examples as its few-shot split taken in order
    (the `first_n` sampler), its `fewshot_context` (no chat template) and `construct_requests`."""
    import datasets
    from lm_eval.api.task import ConfigurableTask

    def data(**_):
        return datasets.DatasetDict({
            "test": datasets.Dataset.from_list([{"question": question, "label": 0}]),
            "train": datasets.Dataset.from_list([{"question": q, "label": a} for q, a in demonstrations]
                                                or [{"question": question, "label": 0}])})

    task = ConfigurableTask(config={
        "task": "plain-reference", "custom_dataset": data, "test_split": "test", "fewshot_split": "train",
        "output_type": "multiple_choice", "doc_to_text": lambda doc: doc["question"],
        "doc_to_target": lambda doc: doc["label"], "doc_to_choice": list(choices),
        "fewshot_config": {"sampler": "first_n"}})
    doc = task.test_docs()[0]
    context = task.fewshot_context(doc, num_fewshot=len(demonstrations))
    return [tuple(request.arguments) for request in task.construct_requests(doc, context, metadata=("plain", 0, 1))]
