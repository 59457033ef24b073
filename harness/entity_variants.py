"""The variants on an entity task (harness/entities.py), each giving every text's predicted entities:

    {kind: zero-shot, model: smollm2-135m-instruct}       # a decoder asked to list the entities (chat template)
    {kind: zero-shot, model: a-base-decoder, prompt: plain}   # ... continuing a plain prompt
    {kind: few-shot, model: smollm2-135m-instruct, k: 4}  # ... after k answered texts (one with each type first)
    {kind: few-shot, model: minilm-l6, k: 8}              # encoder: a tag classifier on the frozen words of k
                                                          #   texts per type (logistic regression)
    {kind: run, run: runs/ner}                            # a finished token-classification run
    {kind: train, config: configs/ner.yaml, lr_scales: [0.3, 1, 3]}   # trained by the suite, then a run

A record per text: id, text, language, gold and predicted entities ([start, end, type]), what a reply named that
is not in the text (`unfound`), whether the reply could be read, the prompt or reply, the latency.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from harness.encoders import logistic_regression
from harness.entities import (EntityItem, EntityTask, draw_entity_demonstrations, entity_messages,
                              entity_plain_context, parse_entity_reply)
from harness.prompts import FEWSHOT_DELIMITER, item_rng
from harness.tasks import load_task
from harness.evaluation import Evaluation, VariantError, encoder_prefixes, run_costs, size_mb, training_overlap
from tljax import models
from tljax.data import normalise
from tljax.data.batches import evaluation_batches
from tljax.data.chat import chat_context
from tljax.data.tagged import tags_from_spans
from tljax.data.windows import encode_words, score_words, word_tags
from tljax.models.transforms import CallShapes, backbone, jit_bound
from tljax.predict import EntityTagger
from tljax.tagging import entities, tag_names

ENTITY_MAX_NEW_TOKENS = 64  # a reply listing a sentence's entities (about 6 tokens each)
GENERATION_BATCH = 16
PROMPT_STEP = 32  # prompts left-padded to a multiple of this: a few compiled shapes
MAX_LENGTH = 128  # encoder few-shot: tokens per window (longer texts are read in windows)


def _record(item: EntityItem, predicted: Sequence[tuple[int, int, str]], latency: float, **extra: Any) -> dict:
    return {"id": item.id, "text": item.text, "language": item.language,
            "gold": [list(e) for e in item.entities], "predicted": [list(e) for e in predicted],
            "unfound": [], "readable": True, "prompt": "", "latency_s": round(latency, 5), **extra}


def entity_pool(variant, task: EntityTask) -> list[EntityItem]:
    """Where a few-shot variant draws its texts from: the task's demonstrations, or another entity task's."""
    source = load_task(variant.demonstrations) if variant.demonstrations else task
    if getattr(source, "kind", "") != "entities" or set(source.labels) != set(task.labels):
        raise VariantError(f"demonstrations {variant.demonstrations}: an entity task with the types "
                           f"{list(task.labels)} is needed")
    return list(source.demonstration_items)


def generate_replies(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, *, plain: bool) -> list[str]:
    """Greedy replies to full prompt texts (a chat template's rendering, or a plain prompt tokenised with the
    tokenizer's own special tokens); a plain reply ends at its first blank line (the next demonstration)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    encoded = [tokenizer(p, add_special_tokens=plain)["input_ids"] for p in prompts]
    order = np.argsort([len(ids) for ids in encoded], kind="stable")
    replies = [""] * len(prompts)
    for start in range(0, len(order), GENERATION_BATCH):
        rows = order[start: start + GENERATION_BATCH]
        width = -(-max(len(encoded[r]) for r in rows) // PROMPT_STEP) * PROMPT_STEP
        ids = np.full((GENERATION_BATCH, width), pad, np.int32)
        mask = np.zeros((GENERATION_BATCH, width), np.int32)
        mask[len(rows):, -1] = 1  # padding rows: one real token, so attention has a key
        for row, r in enumerate(rows):
            ids[row, width - len(encoded[r]):] = encoded[r]
            mask[row, width - len(encoded[r]):] = 1
        tokens = np.asarray(models.generate(model, ids, mask, max_new_tokens=max_new_tokens, pad_token_id=pad))
        for row, r in enumerate(rows):
            reply = tokenizer.decode(tokens[row].tolist(), skip_special_tokens=True)
            replies[r] = reply.split(FEWSHOT_DELIMITER)[0].strip() if plain else reply.strip()
    return replies


def _decoder(variant, task: EntityTask, items: Sequence[EntityItem], seed: int, model, tokenizer) -> list[dict]:
    template = task.template(variant.language)
    pool = entity_pool(variant, task) if variant.kind == "few-shot" else []
    prompts = []
    for item in items:
        demos = draw_entity_demonstrations(pool, item, variant.k, task.labels, seed) if pool else []
        if variant.prompt == "plain":
            prompts.append(entity_plain_context(template, task.labels, item.text, demos))
        else:
            prompts.append(chat_context(tokenizer, entity_messages(template, task.labels, item.text, demos,
                                                                   variant.form)))
    started = time.perf_counter()
    replies = generate_replies(model, tokenizer, prompts, variant.max_new_tokens or ENTITY_MAX_NEW_TOKENS,
                               plain=variant.prompt == "plain")
    latency = (time.perf_counter() - started) / max(len(items), 1)
    records = []
    for item, prompt, reply in zip(items, prompts, replies):
        parsed = parse_entity_reply(reply, template, task.labels, item.text)
        records.append(_record(item, parsed.spans, latency, unfound=[list(u) for u in parsed.unfound],
                               readable=parsed.readable, prompt=prompt, reply=reply))
    return records


class WordFeatures:
    """texts and their words -> each word's first-token hidden state of a frozen encoder, L2-normalised."""

    def __init__(self, model, tokenizer):
        self.tokenizer = tokenizer
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.max_length = min(MAX_LENGTH, getattr(backbone(model).config, "max_position_embeddings", MAX_LENGTH))
        self.states = jit_bound(backbone(model), lambda m, ids, mask: m.text_states(ids, mask))

    def __call__(self, texts: Sequence[str], words: Sequence[Sequence[tuple[int, int]]], prefix: str = ""):
        """(features [words, H] per text, followers per text: see `tljax.data.windows.followers`)."""
        windows = encode_words(list(texts), words, None, self.tokenizer, self.max_length, prefix=prefix)
        batches = evaluation_batches(windows.encoded, 32, self.pad, self.max_length)
        features = score_words(lambda b: self.states(b["input_ids"], b["attention_mask"]), batches, windows,
                               log_softmax=False)
        return [f / np.maximum(np.linalg.norm(f, axis=-1, keepdims=True), 1e-12) for f in features], windows.followers


def few_shot_texts(pool: Sequence[EntityItem], k: int, labels: Sequence[str], seed: int,
                   task: str) -> list[EntityItem]:
    """k texts with each type (drawn with `seed`; a text may count for several types), in pool order."""
    rng = item_rng(seed, f"{task}/encoder-few-shot")
    chosen: set[int] = set()
    for label in labels:
        having = [i for i, d in enumerate(pool) if any(e[2] == label for e in d.entities)]
        chosen |= {having[i] for i in rng.choice(len(having), min(k, len(having)), replace=False)}
    return [pool[i] for i in sorted(chosen)]


def _encoder_few_shot(variant, task: EntityTask, items: Sequence[EntityItem], seed: int, model, tokenizer,
                      loaded) -> tuple[list[dict], int]:
    """A tag classifier (logistic regression over IOB2 tags) on the frozen first-token states of the words of k
    texts per type; texts used for it are left out of the evaluation. (records, the classifier's size)"""
    prefix = encoder_prefixes(variant)[0]
    chosen = few_shot_texts(entity_pool(variant, task), variant.k, task.labels, seed, task.name)
    used = {normalise(d.text) for d in chosen}
    items = [i for i in items if normalise(i.text) not in used]
    names = tag_names(task.labels)
    features = loaded.memo((variant.model, "word-features"), lambda: WordFeatures(model, tokenizer))

    def fit():
        train, _ = features([d.text for d in chosen], [d.words for d in chosen], prefix)
        train = np.concatenate(train)
        tags = np.asarray([names.index(t) for d in chosen for t in tags_from_spans(d.words, d.entities)])
        own = np.isfinite(train).all(-1)  # a word that shares its first token with the word before has no state
        return logistic_regression(train[own], tags[own], len(names))

    weights, bias = loaded.memo((variant.model, "entity-few-shot", task.name, variant.demonstrations,
                                 tuple(d.id for d in chosen), prefix), fit)
    started = time.perf_counter()
    found, follow = features([i.text for i in items], [i.words for i in items], prefix) if items else ([], [])
    latency = (time.perf_counter() - started) / max(len(items), 1)
    examples = f"{len(chosen)} texts: " + "; ".join(d.text[:40] for d in chosen[:4])
    records = []
    for item, x, followers in zip(items, found, follow):
        tags = word_tags(x @ weights + bias, followers, names)  # each word's best tag
        spans = [(item.words[e.start][0], item.words[e.end - 1][1], e.label) for e in entities(tags)]
        records.append(_record(item, spans, latency, prompt=examples))
    return records, int(weights.size + bias.size)


def _run(variant, task: EntityTask, items: Sequence[EntityItem], run) -> list[dict]:
    if not isinstance(run.predictor, EntityTagger):
        raise VariantError(f"run {variant.run} is a {run.info.task} run; an entity task needs a token-classification "
                           "run (python -m tljax.train --config configs/ner.yaml)")
    types = sorted({name.split("-", 1)[1] for name in run.info.labels if name != "O"})
    if set(types) != set(task.labels):
        raise VariantError(f"run {variant.run} tags the types {types}, the task {task.name} has "
                           f"{list(task.labels)}; evaluate a run trained for the task's types")
    tagger = run.predictor
    tagger.logits.shapes = CallShapes()
    started = time.perf_counter()
    found = tagger([i.text for i in items], words=[list(i.words) for i in items]) if items else []
    latency = (time.perf_counter() - started) / max(len(items), 1)
    return [_record(item, [(e["start"], e["end"], e["label"]) for e in entities_of], latency,
                    scores=[e["score"] for e in entities_of]) for item, entities_of in zip(items, found)]


def evaluate_entities(variant, task: EntityTask, items: Sequence[EntityItem], seed: int, loaded, *,
                      measure_costs: bool = True):
    """Every text's record under `variant` (seed: the few-shot draw); see `harness.variants.evaluate`."""
    started = time.perf_counter()
    if variant.kind == "run":
        run = loaded.run(variant.run)
        overlap, notes = training_overlap(variant, run, [i.text for i in items], task.name, "texts", "held-out texts")
        records = _run(variant, task, items, run)
        costs = run_costs(run, overlap, run.predictor.logits.typical_cost() if measure_costs else None)
    else:
        model, tokenizer, is_decoder, directory = loaded.get(variant.model)
        costs = {"trainable_parameters": 0, "training_seconds": 0.0, "size_mb": size_mb(directory / "model.safetensors")}
        notes = []
        if is_decoder and variant.kind in ("zero-shot", "few-shot"):
            records = _decoder(variant, task, items, seed, model, tokenizer)
        elif is_decoder:
            raise VariantError(f"a {variant.kind} variant does not apply to an entity task; a decoder is asked for "
                               "the entities by zero-shot or few-shot (its reply is read)")
        elif variant.kind == "few-shot":
            records, costs["trainable_parameters"] = _encoder_few_shot(variant, task, items, seed, model, tokenizer,
                                                                       loaded)
        else:
            raise VariantError(f"{variant.model} is an encoder: on an entity task it takes few-shot (a tag classifier "
                               f"on k texts per type), a run or a train variant, not {variant.kind}")
    costs["examples_per_second"] = round(len(items) / max(time.perf_counter() - started, 1e-9), 2)
    return Evaluation(records, costs, notes)
