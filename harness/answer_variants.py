"""The variants on an answer task (harness/answers.py), each giving every question's answer:

    {kind: zero-shot, model: smollm2-135m-instruct}       # a decoder asked the question about the passage
    {kind: zero-shot, model: a-base-decoder, prompt: plain}   # ... continuing a plain prompt
    {kind: few-shot, model: smollm2-135m-instruct, k: 2}  # ... after k answered questions about short passages
    {kind: zero-shot, model: e5-small}                    # encoder: the passage sentence most similar to the
                                                          #   question (never "no answer")
    {kind: run, run: runs/qa}                             # a finished question-answering run
    {kind: train, config: configs/qa.yaml, lr_scales: [0.3, 1, 3]}   # trained by the suite, then a run

A record per question: id, question, context, language, the gold answers' texts, the predicted answer ("" for
none) and its span in the passage (-1 where it is not there), the prompt or reply, the latency.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from harness.answers import (AnswerItem, AnswerTask, answer_messages, answer_plain_context,
                             draw_answer_demonstrations, read_answer)
from harness.entity_variants import generate_replies
from harness.evaluation import (Evaluation, VariantError, encoder_prefixes, run_costs, size_mb,
                                training_overlap)
from harness.tasks import load_task
from tljax.data.chat import chat_context
from tljax.models.transforms import CallShapes
from tljax.predict import AnswerFinder
from tljax.train.qa import sentence_spans

ANSWER_MAX_NEW_TOKENS = 24  # a short span: a name, a number, a date, a phrase


def _record(item: AnswerItem, text: str, start: int, end: int, latency: float, **extra: Any) -> dict:
    return {"id": item.id, "question": item.question, "context": item.context, "text": item.question,
            "language": item.language, "gold": [t for t, _ in item.answers], "predicted": text, "start": start,
            "end": end, "prompt": "", "latency_s": round(latency, 5), **extra}


def answer_pool(variant, task: AnswerTask) -> list[AnswerItem]:
    """Where a few-shot variant draws its questions from: the task's demonstrations, or another answer task's."""
    source = load_task(variant.demonstrations) if variant.demonstrations else task
    if getattr(source, "kind", "") != "answers":
        raise VariantError(f"demonstrations {variant.demonstrations}: an answer task is needed")
    return list(source.demonstration_items)


def _decoder(variant, task: AnswerTask, items: Sequence[AnswerItem], seed: int, model, tokenizer) -> list[dict]:
    template = task.template(variant.language)
    pool = answer_pool(variant, task) if variant.kind == "few-shot" else []
    prompts = []
    for item in items:
        demos = draw_answer_demonstrations(pool, item, variant.k, seed) if pool else []
        if variant.prompt == "plain":
            prompts.append(answer_plain_context(template, item, demos))
        else:
            prompts.append(chat_context(tokenizer, answer_messages(template, item, demos, variant.form)))
    started = time.perf_counter()
    replies = generate_replies(model, tokenizer, prompts, variant.max_new_tokens or ANSWER_MAX_NEW_TOKENS,
                               plain=variant.prompt == "plain")
    latency = (time.perf_counter() - started) / max(len(items), 1)
    records = []
    for item, prompt, reply in zip(items, prompts, replies):
        answer = read_answer(reply, template, item.context)
        records.append(_record(item, answer.text, answer.start, answer.end, latency, prompt=prompt, reply=reply))
    return records


def _most_similar_sentence(variant, items: Sequence[AnswerItem], loaded) -> list[dict]:
    """Each question's answer: the passage sentence whose embedding is nearest the question's (cosine)."""
    question_prefix, passage_prefix = encoder_prefixes(variant)
    embed = loaded.embedder(variant.model)
    embed.embed_batch.shapes = CallShapes()
    started = time.perf_counter()
    questions = embed([i.question for i in items], question_prefix) if items else np.zeros((0, 1))
    spans = [sentence_spans(i.context) for i in items]
    sentences = [i.context[a:b] for i, found in zip(items, spans) for a, b in found]
    vectors = embed(sentences, passage_prefix) if sentences else np.zeros((0, 1))
    latency = (time.perf_counter() - started) / max(len(items), 1)
    records, at = [], 0
    for item, question, found in zip(items, questions, spans):
        similarity = vectors[at: at + len(found)] @ question
        best = int(np.argmax(similarity))
        a, b = found[best]
        records.append(_record(item, item.context[a:b], a, b, latency, similarity=round(float(similarity[best]), 4)))
        at += len(found)
    return records


def _run(variant, items: Sequence[AnswerItem], run) -> list[dict]:
    if not isinstance(run.predictor, AnswerFinder):
        raise VariantError(f"run {variant.run} is a {run.info.task} run; an answer task needs a question-answering "
                           "run (python -m tljax.train --config configs/qa.yaml)")
    finder = run.predictor
    finder.logits.shapes = CallShapes()
    started = time.perf_counter()
    found = finder([i.question for i in items], [i.context for i in items]) if items else []
    latency = (time.perf_counter() - started) / max(len(items), 1)
    return [_record(item, answer["answer"], answer["start"], answer["end"], latency, score=answer["score"])
            for item, answer in zip(items, found)]


def evaluate_answers(variant, task: AnswerTask, items: Sequence[AnswerItem], seed: int, loaded, *,
                     measure_costs: bool = True) -> Evaluation:
    """Every question's record under `variant` (seed: the few-shot draw); see `harness.variants.evaluate`."""
    started = time.perf_counter()
    if variant.kind == "run":
        run = loaded.run(variant.run)
        # a QA run's training texts are its passages: a question about one of them is not held out
        overlap, notes = training_overlap(variant, run, [i.context for i in items], task.name, "questions",
                                          "held-out passages")
        records = _run(variant, items, run)
        costs = run_costs(run, overlap, run.predictor.logits.typical_cost() if measure_costs else None)
    else:
        model, tokenizer, is_decoder, directory = loaded.get(variant.model)
        costs = {"trainable_parameters": 0, "training_seconds": 0.0,
                 "size_mb": size_mb(directory / "model.safetensors")}
        notes = []
        if is_decoder and variant.kind in ("zero-shot", "few-shot"):
            records = _decoder(variant, task, items, seed, model, tokenizer)
        elif is_decoder:
            raise VariantError(f"a {variant.kind} variant does not apply to an answer task; a decoder is asked the "
                               "question by zero-shot or few-shot (its reply is read)")
        elif variant.kind == "zero-shot":
            if variant.prompt == "plain":
                raise VariantError(f"prompt: plain is for decoders; {variant.model} is an encoder")
            records = _most_similar_sentence(variant, items, loaded)
            notes.append("the passage sentence most similar to the question (an encoder never answers none)")
        else:
            raise VariantError(f"{variant.model} is an encoder: on an answer task it takes zero-shot (the passage "
                               f"sentence most similar to the question), a run or a train variant, not "
                               f"{variant.kind}")
    costs["examples_per_second"] = round(len(items) / max(time.perf_counter() - started, 1e-9), 2)
    return Evaluation(records, costs, notes)
