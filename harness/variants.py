"""Variants: the ways to get a prediction for a task's items from a base model, all reporting the same record.

    {kind: zero-shot, model: smollm2-135m-instruct}      # decoder: each answer's log-likelihood after the chat prompt
    {kind: zero-shot, model: path/to/base-decoder, prompt: plain}   # a plain prompt (lm-eval's defaults): base models
    {kind: zero-shot, model: e5-small}                   # encoder: similarity to each label's description
    {kind: few-shot, model: smollm2-135m-instruct, k: 4, seeds: [0, 1, 2], form: multi-turn}
    {kind: few-shot, model: minilm-l6, k: 8, classifier: logistic}   # encoder: a classifier on k examples per class
    {kind: chat, model: smollm2-135m-instruct}           # the decoder answers freely; the reply is parsed
    {kind: run, run: runs/lora}                          # a finished `python -m tljax.train` run
    {kind: train, config: configs/lora.yaml, lr_scales: [0.3, 1, 3]}   # trained by the suite (harness/training.py)

A record per item: id, text, gold, each label's scores under each rule (`acc`: the summed log-probability;
`acc_norm`: per character of the answer; `calibrated`: divided by the probabilities of a content-free input),
the prediction by each rule (-1: none could be read), each label's probability (the softmax of the `acc`
scores; of similarities / 0.05 for encoders' similarities, the scale their contrastive training used), the
prompt (or transcript) and the latency.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

import tljax
from harness.answer_variants import evaluate_answers
from harness.entity_variants import evaluate_entities
from harness.evaluation import (Evaluation, VariantError, compiled_costs, encoder_prefixes, run_costs, size_mb,
                                training_overlap)
from harness.encoders import CLASSIFIERS, Embedder, logistic_regression, nearest_centroid
from harness.prompts import (CONTENT_FREE, FORMS, PROMPTS, answer_continuation, chat_messages, draw_demonstrations,
                             item_rng, plain_context)
from harness.scoring import DecoderScorer
from harness.tasks import Item, Task, load_task
from tljax import models, zoo
from tljax.data.chat import chat_context
from tljax.models.transforms import CallShapes
from tljax.predict import PREDICTORS, EntityTagger, Predictor
from tljax.runs import find_export, load_exported
from tljax.train.config import load_config
from tljax.train.run import training_texts

KINDS = ("zero-shot", "few-shot", "chat", "run", "train")
KEYS = ("kind", "name", "model", "run", "language", "k", "seeds", "prompt", "form", "demonstrations", "classifier",
        "max_new_tokens", "allow_overlap", "text_prefix", "description_prefix", "calibrate", "config", "lr_scales",
        "overrides", "tasks")
CHAT_MAX_NEW_TOKENS = 8  # a reply naming a label
SIMILARITY_TEMPERATURE = 0.05  # cosine similarities -> probabilities (sentence-transformers' contrastive scale 20)


@dataclasses.dataclass(frozen=True)
class Variant:
    kind: str
    model: str | None = None  # a packaged name, Hugging Face id or directory (zero-shot, few-shot, chat)
    run: str | None = None  # a finished run directory (kind run)
    name: str | None = None  # shown in tables; default: derived from the settings
    language: str | None = None  # the prompt's language (a task template); default: the task's
    k: int = 4  # few-shot: demonstrations in all (decoders), examples per class (encoders)
    seeds: tuple[int, ...] = (0,)
    prompt: str = "chat"  # decoders (zero-shot, few-shot, a decoder run or train): chat (its chat template) | plain
    form: str = "multi-turn"  # few-shot on a decoder with chat prompts: multi-turn | one-message
    demonstrations: str | None = None  # few-shot: another task to draw them from (cross-lingual); default: the task
    classifier: str = "logistic"  # few-shot on an encoder: logistic | centroid
    max_new_tokens: int | None = None  # chat: the reply's length (8 tokens; 64 listing an entity task's entities)
    allow_overlap: bool = False  # run: evaluate even where the run trained on some of the items (flagged)
    text_prefix: str | None = None  # encoders: before each text / each description (default: the model's own)
    description_prefix: str | None = None
    # decoders: also score a content-free input for the calibrated rule (few-shot: one per item, twice the cost)
    calibrate: bool = True
    config: str | None = None  # train: a run config (configs/*.yaml)
    lr_scales: tuple[float, ...] = (1.0,)  # train: each multiplies the config's learning rates; best on validation
    overrides: dict[str, Any] | None = None  # train: `--set` values, e.g. {model: e5-small}
    # in a suite: only these of its tasks (a few-shot k per kind of task, a classifier kept off entity tasks); None: all
    tasks: tuple[str, ...] | None = None

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.kind == "run":
            return f"run {Path(self.run).name}" + (f" {self.prompt}" if self.prompt != "chat" else "")
        if self.kind == "train":
            model = (self.overrides or {}).get("model")
            return f"train {Path(self.config).stem}" + (f" {model}" if model else "") + \
                (f" {self.prompt}" if self.prompt != "chat" else "")
        parts = [self.kind, self.model]
        if self.kind == "few-shot":
            parts.append(f"k={self.k}")
            if self.demonstrations:
                parts.append(f"demos={self.demonstrations}")
        if self.prompt != "chat":
            parts.append(self.prompt)
        if self.language:
            parts.append(f"prompt={self.language}")
        return " ".join(str(p) for p in parts)

    def settings(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def parse_variant(raw: Any, where: str = "variant") -> Variant:
    if not isinstance(raw, dict) or "kind" not in raw:
        raise VariantError(f"{where} must be a mapping with a kind ({', '.join(KINDS)}), got {raw!r}")
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise VariantError(f"{where}: unknown keys {unknown}; valid: {', '.join(KEYS)}")
    if raw["kind"] not in KINDS:
        raise VariantError(f"{where}: unknown variant kind {raw['kind']!r}; valid: {', '.join(KINDS)}")
    values = dict(raw)
    if "lr_scales" in values:
        scales = values["lr_scales"] if isinstance(values["lr_scales"], list) else [values["lr_scales"]]
        values["lr_scales"] = tuple(float(s) for s in scales)
    if "overrides" in values and not isinstance(values["overrides"], dict):
        raise VariantError(f"{where}: overrides must map config keys to values, e.g. {{model: e5-small}}")
    if "tasks" in values:
        if not isinstance(values["tasks"], list) or not values["tasks"]:
            raise VariantError(f"{where}: tasks must list some of the suite's tasks, e.g. [qa-en, qa-pt]")
        values["tasks"] = tuple(str(t) for t in values["tasks"])
    if "seeds" in values:
        values["seeds"] = tuple(int(s) for s in (values["seeds"] if isinstance(values["seeds"], list)
                                                  else [values["seeds"]]))
    variant = Variant(**values)
    if variant.kind == "run" and not variant.run:
        raise VariantError(f"{where}: a run variant needs run: a finished run directory")
    if variant.kind == "train":
        if not variant.config:
            raise VariantError(f"{where}: a train variant needs config: a run config, e.g. configs/lora.yaml")
        if not variant.lr_scales or min(variant.lr_scales) <= 0:
            raise VariantError(f"{where}: lr_scales must be one or more positive numbers, got {list(variant.lr_scales)}")
    elif variant.kind != "run" and not variant.model:
        raise VariantError(f"{where}: a {variant.kind} variant needs model: a packaged name or a directory")
    if variant.form not in FORMS:
        raise VariantError(f"{where}: form {variant.form!r} is unknown; valid: {', '.join(FORMS)}")
    if variant.prompt not in PROMPTS:
        raise VariantError(f"{where}: prompt {variant.prompt!r} is unknown; valid: {', '.join(PROMPTS)}")
    if variant.prompt == "plain" and variant.kind not in ("zero-shot", "few-shot", "run", "train"):
        raise VariantError(f"{where}: prompt: plain is for scored decoder variants (zero-shot, few-shot, run, train); "
                           f"a {variant.kind} variant has no prompt setting")
    if variant.prompt == "plain" and "form" in raw:  # a plain prompt is one text: nothing to split into turns
        raise VariantError(f"{where}: form applies to chat prompts only; drop it, or use prompt: chat")
    if variant.classifier not in CLASSIFIERS:
        raise VariantError(f"{where}: classifier {variant.classifier!r} is unknown; valid: {', '.join(CLASSIFIERS)}")
    if variant.kind == "few-shot" and not 1 <= variant.k <= 64:
        raise VariantError(f"{where}: k must be between 1 and 64, got {variant.k}")
    return variant


class Models:
    """Loaded base models and the compiled functions that use them, shared by every variant of a suite (and by
    the app's users): at most `capacity` models are held, the least recently used is dropped first.

    Thread-safe: the app calls it from several request threads; a model is loaded once however many ask."""

    def __init__(self, capacity: int = 8):
        self.capacity = capacity
        # (kind, name) of a model or run -> {key: value}: the model and everything built on it, dropped together
        self._held: collections.OrderedDict[tuple, dict[tuple, Any]] = collections.OrderedDict()
        self._lock = threading.RLock()
        self._loading: dict[tuple, threading.Lock] = {}

    def _lookup(self, key: tuple) -> tuple[bool, Any]:
        entries = self._held.get(key[:2])
        if entries is None or key not in entries:
            return False, None
        self._held.move_to_end(key[:2])  # a use of anything built on a model is a use of the model
        return True, entries[key]

    def _cached(self, key: tuple, factory):
        with self._lock:
            found, value = self._lookup(key)
            if found:
                return value
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # one thread builds it; the others wait for that one instead of building it again
            with self._lock:
                found, value = self._lookup(key)
                if found:
                    return value
            value = factory()
            with self._lock:
                self._held.setdefault(key[:2], {})[key] = value
                self._held.move_to_end(key[:2])
                self._loading.pop(key, None)
                while len(self._held) > self.capacity:  # the least recently used model, never the one just used
                    self._held.popitem(last=False)
            return value

    def get(self, name: str):
        """(model, tokenizer, is_decoder, directory) of a packaged name, Hugging Face id or directory."""
        def load():
            directory = zoo.resolve(name)
            model_type = models.read_config_dict(directory).get("model_type", "")
            model, tokenizer = tljax.load(str(directory))
            return model, tokenizer, models.is_decoder(model_type), directory
        return self._cached(("model", name), load)

    def embedder(self, name: str) -> Embedder:
        model, tokenizer, _, _ = self.get(name)
        return self._cached(("model", name, "embedder"), lambda: Embedder(model, tokenizer))

    def scorer(self, name: str) -> DecoderScorer:
        model, tokenizer, _, _ = self.get(name)
        return self._cached(("model", name, "scorer"), lambda: DecoderScorer(model, tokenizer))

    def run(self, run: str | Path) -> LoadedRun:
        """A finished run's export, loaded with what scores it (a classifier's predictor or a decoder's scorer)."""
        return self._cached(("run", str(Path(run).resolve())), lambda: LoadedRun.load(run))

    def memo(self, key: tuple, factory):
        """`factory()` computed once per key while the model `key[1]` is held (e.g. a fitted few-shot head)."""
        return self._cached(("model", *key), factory)


@dataclasses.dataclass
class LoadedRun:
    """A finished run's export: the model, its tokenizer and run.json, and what scores it."""

    directory: Path  # the run directory
    export: Path
    model: Any
    tokenizer: Any
    info: Any  # tljax.runs.RunInfo
    predictor: Predictor | EntityTagger | None  # classifiers, token classifiers
    scorer: DecoderScorer | None  # chat-tuned decoders
    trained_texts: frozenset[str] | None  # the texts it trained on (normalised), if its config is there

    @classmethod
    def load(cls, run: str | Path) -> LoadedRun:
        export = find_export(run)
        model, tokenizer, info = load_exported(export)
        run_dir = export.parent if export.name == "export" else export.parent.parent
        trained = training_texts(load_config(run_dir / "config.yaml")) if (run_dir / "config.yaml").is_file() \
            else None
        causal = info.task == "causal-lm"
        predictor = None if causal else PREDICTORS[info.task](model, tokenizer, info)
        return cls(run_dir, export, model, tokenizer, info, predictor,
                   DecoderScorer(model, tokenizer) if causal else None, trained)


def _rule_records(items: Sequence[Item], scores: dict[str, np.ndarray], prompts: Sequence[str],
                  latency: float, temperature: float = 1.0) -> list[dict[str, Any]]:
    """Records from each rule's scores [N, L]; probabilities: softmax(acc scores / temperature)."""
    per_item = latency / max(len(items), 1)
    probabilities = np.asarray(jax.nn.softmax(np.asarray(scores["acc"], np.float64) / temperature, -1))
    records = []
    for i, item in enumerate(items):
        rules = {rule: values[i] for rule, values in scores.items()}
        records.append({"id": item.id, "text": item.text, "language": item.language, "gold": item.label,
                        "scores": {r: [round(float(x), 6) for x in v] for r, v in rules.items()},
                        "prediction": {r: int(np.argmax(v)) for r, v in rules.items()},
                        "probabilities": [round(float(x), 6) for x in probabilities[i]],
                        "prompt": prompts[i], "latency_s": round(per_item, 5)})
    return records


def _decoder_scores(logprob: np.ndarray, content_free: np.ndarray | None,
                    verbalisers: Sequence[str]) -> dict[str, np.ndarray]:
    """The rules from the answers' log-probabilities [N, L] and the content-free ones [N or 1, L] (if scored)."""
    lengths = np.asarray([max(len(v), 1) for v in verbalisers], np.float64)
    scores = {"acc": logprob, "acc_norm": logprob / lengths}
    if content_free is not None:
        normalised = jax.nn.log_softmax(logprob.astype(np.float64), -1)
        scores["calibrated"] = np.asarray(normalised - jax.nn.log_softmax(content_free.astype(np.float64), -1))
    return scores


def decoder_prompts(variant: Variant, task: Task, items: Sequence[Item], tokenizer, seed: int,
                    pool: Sequence[Item] = ()) -> tuple[list[str], list[str]]:
    """(context, content-free context) per item: the chat or plain prompt (`variant.prompt`), after the item's
    demonstrations if any."""
    contexts, free = [], []
    for item in items:
        if variant.prompt == "plain":
            demos = draw_demonstrations(pool, item, variant.k, len(task.labels), seed) \
                if variant.kind == "few-shot" else []
            template = task.template(variant.language)
            contexts.append(plain_context(template, item.text, demos))
            free.append(plain_context(template, CONTENT_FREE, demos))
            continue
        contexts.append(chat_context(tokenizer, conversation(variant, task, item, seed, pool)))
        free.append(chat_context(tokenizer, conversation(variant, task, item, seed, pool, CONTENT_FREE)))
    return contexts, free


def decoder_answers(variant: Variant, task: Task) -> list[str]:
    """The continuations scored after a decoder prompt, one per label (the answer words, with the plain
    prompt's target delimiter)."""
    return [answer_continuation(variant.prompt, word) for word in task.template(variant.language).verbalisers]


def conversation(variant: Variant, task: Task, item: Item, seed: int, pool: Sequence[Item] = (),
                 text: str | None = None) -> list[dict[str, str]]:
    """The chat messages that ask a decoder about `item` (after its few-shot demonstrations from `pool`, drawn
    for the item); `text` replaces the item's text (the content-free input) with the same demonstrations."""
    demos = draw_demonstrations(pool, item, variant.k, len(task.labels), seed) if variant.kind == "few-shot" else []
    return chat_messages(task.template(variant.language), item.text if text is None else text, demos, variant.form)


def demonstration_pool(variant: Variant, task: Task) -> list[Item]:
    """Where a few-shot variant draws its examples from: the task's demonstrations, or another task's."""
    source = load_task(variant.demonstrations) if variant.demonstrations else task
    if source.labels != task.labels:
        raise VariantError(f"demonstrations {variant.demonstrations}: labels {list(source.labels)} differ from the "
                           f"task's {list(task.labels)}")
    return list(source.demonstration_items)


def evaluate(variant: Variant, task: Task, items: Sequence[Item], seed: int, loaded: Models, *,
             measure_costs: bool = True) -> Evaluation:
    """Every item's record under `variant` (seed: the few-shot draw). `measure_costs`: also cost the compiled
    programs (FLOPs, memory; a compile of the median shape, so the app, answering one text, leaves it off).
    An entity task's variants are `harness.entity_variants`', an answer task's `harness.answer_variants`'."""
    if task.kind == "entities":
        return evaluate_entities(variant, task, items, seed, loaded, measure_costs=measure_costs)
    if task.kind == "answers":
        return evaluate_answers(variant, task, items, seed, loaded, measure_costs=measure_costs)
    if variant.kind == "run":
        return _evaluate_run(variant, task, items, loaded, measure_costs)
    model, tokenizer, is_decoder, directory = loaded.get(variant.model)
    costs: dict[str, Any] = {"trainable_parameters": 0, "training_seconds": 0.0,
                             "size_mb": size_mb(directory / "model.safetensors")}
    template = task.template(variant.language)
    started = time.perf_counter()
    if is_decoder and variant.kind in ("zero-shot", "few-shot"):
        pool = demonstration_pool(variant, task) if variant.kind == "few-shot" else []
        contexts, free = decoder_prompts(variant, task, items, tokenizer, seed, pool)
        scorer = loaded.scorer(variant.model)
        scorer.shapes = CallShapes()  # this evaluation's calls only
        answers, plain = decoder_answers(variant, task), variant.prompt == "plain"
        logprob = scorer([(c, answers) for c in contexts], plain=plain).logprob
        # zero-shot: one content-free prompt serves every item; few-shot: each item's demonstrations have their own
        free_requests = [(free[0], answers)] if variant.kind == "zero-shot" else [(c, answers) for c in free]
        scores = _decoder_scores(logprob, scorer(free_requests, plain=plain).logprob if variant.calibrate else None,
                                 template.verbalisers)
        records = _rule_records(items, scores, contexts, time.perf_counter() - started)
        compiled = scorer.typical_cost() if measure_costs else None
    elif is_decoder and variant.kind == "chat":
        records, compiled = _chat(variant, task, items, model, tokenizer), None
    elif variant.prompt == "plain":
        raise VariantError(f"prompt: plain is for decoders; {variant.model} is an encoder (drop the prompt setting)")
    elif variant.kind == "zero-shot":
        text_prefix, description_prefix = encoder_prefixes(variant)
        embed = loaded.embedder(variant.model)
        embed.embed_batch.shapes = CallShapes()
        texts = embed([i.text for i in items], text_prefix)
        descriptions = loaded.memo((variant.model, "descriptions", template.descriptions, description_prefix),
                                   lambda: embed(list(template.descriptions), description_prefix))
        records = _rule_records(items, {"acc": texts @ descriptions.T}, [""] * len(items),
                                time.perf_counter() - started, SIMILARITY_TEMPERATURE)
        compiled = embed.embed_batch.typical_cost() if measure_costs else None
    elif variant.kind == "few-shot":
        embed = loaded.embedder(variant.model)
        embed.embed_batch.shapes = CallShapes()
        records, classifier_size = _encoder_few_shot(variant, task, items, seed, embed, loaded)
        costs["trainable_parameters"] = classifier_size
        compiled = embed.embed_batch.typical_cost() if measure_costs else None
    else:
        raise VariantError(f"a {variant.kind} variant needs a chat decoder; {variant.model} is an encoder")
    costs["examples_per_second"] = round(len(items) / max(time.perf_counter() - started, 1e-9), 2)
    return Evaluation(records, {**costs, **compiled_costs(compiled)})


def _encoder_few_shot(variant: Variant, task: Task, items: Sequence[Item], seed: int, embed: Embedder,
                      loaded: Models) -> tuple[list[dict[str, Any]], int]:
    """k examples per class (drawn with `seed`, none of them an evaluated item), a classifier on their frozen
    embeddings; items used as examples are left out of the evaluation. (records, the classifier's size)"""
    pool = demonstration_pool(variant, task)
    rng = item_rng(seed, f"{task.name}/encoder-few-shot")
    chosen = []
    for label in range(len(task.labels)):
        of_label = [d for d in pool if d.label == label]
        chosen += [of_label[i] for i in rng.choice(len(of_label), min(variant.k, len(of_label)), replace=False)]
    used = {d.id for d in chosen} | {d.text for d in chosen}
    items = [i for i in items if i.id not in used and i.text not in used]
    prefix = encoder_prefixes(variant)[0]
    started = time.perf_counter()

    def fit():
        train, labels = embed([d.text for d in chosen], prefix), np.asarray([d.label for d in chosen])
        if variant.classifier == "centroid":
            return nearest_centroid(train, labels, len(task.labels)).T, np.zeros(len(task.labels)), 0
        weights, bias = logistic_regression(train, labels, len(task.labels))
        return weights, bias, weights.size + bias.size

    # the same examples give the same classifier: fitted once per (task, k, seed, classifier) while the model is held
    weights, bias, size = loaded.memo((variant.model, "few-shot", task.name, variant.demonstrations,
                                       tuple((d.id, d.text, d.label) for d in chosen), variant.classifier, prefix),
                                      fit)
    texts = embed([i.text for i in items], prefix) if items else np.zeros((0, weights.shape[0]), np.float32)
    temperature = SIMILARITY_TEMPERATURE if variant.classifier == "centroid" else 1.0
    examples = "; ".join(f"{task.labels[d.label]}: {d.text[:60]}" for d in chosen)
    return _rule_records(items, {"acc": texts @ weights + bias}, [examples] * len(items),
                         time.perf_counter() - started, temperature), size


def parse_reply(reply: str, verbalisers: Sequence[str]) -> int:
    """The label whose answer word occurs first in `reply` (whole words, any case); -1 if none does."""
    found = []
    for label, word in enumerate(verbalisers):
        match = re.search(rf"(?<!\w){re.escape(word.strip().lower())}(?!\w)", reply.lower())
        if match:
            found.append((match.start(), label))
    return min(found)[1] if found else -1


def _chat(variant: Variant, task: Task, items: Sequence[Item], model, tokenizer) -> list[dict[str, Any]]:
    template = task.template(variant.language)
    records = []
    for start in range(0, len(items), 16):
        batch = items[start: start + 16]
        began = time.perf_counter()
        replies = models.chat(model, tokenizer, [chat_messages(template, i.text) for i in batch],
                              max_new_tokens=variant.max_new_tokens or CHAT_MAX_NEW_TOKENS)
        latency = (time.perf_counter() - began) / len(batch)
        for item, reply in zip(batch, replies):
            label = parse_reply(reply, template.verbalisers)
            records.append({"id": item.id, "text": item.text, "language": item.language, "gold": item.label,
                            "scores": {}, "prediction": {"acc": label}, "prompt": template.question(item.text),
                            "reply": reply, "latency_s": round(latency, 5)})
    return records


def _evaluate_run(variant: Variant, task: Task, items: Sequence[Item], loaded: Models,
                  measure_costs: bool) -> Evaluation:
    run = loaded.run(variant.run)
    info = run.info
    if isinstance(run.predictor, EntityTagger):
        raise VariantError(f"run {variant.run} tags entities; evaluate it on an entity task (e.g. ner-en), not on "
                           f"{task.name}")
    if info.task == "question-answering":
        raise VariantError(f"run {variant.run} is a question-answering run; evaluate it on an answer task (e.g. "
                           f"qa-en), not on {task.name}")
    if set(info.labels) != set(task.labels):
        raise VariantError(f"run {variant.run} predicts labels {list(info.labels)}, the task {task.name} has "
                           f"{list(task.labels)}; evaluate a run trained for the task's labels")
    overlap, notes = training_overlap(variant, run, [i.text for i in items], task.name, "items", "held-out items")
    started = time.perf_counter()
    if run.scorer is not None:  # a tuned decoder: scored as zero-shot, in the chat form (or plain, as asked)
        if not info.chat and variant.prompt != "plain":
            raise VariantError(f"run {variant.run} is continued pre-training, not a classifier nor chat-tuned; "
                               "score it with prompt: plain")
        zero_shot = Variant(kind="zero-shot", model=variant.run, language=variant.language, prompt=variant.prompt)
        contexts, free = decoder_prompts(zero_shot, task, items, run.tokenizer, 0)
        scorer = run.scorer
        scorer.shapes = CallShapes()
        answers, plain = decoder_answers(zero_shot, task), variant.prompt == "plain"
        scores = _decoder_scores(scorer([(c, answers) for c in contexts], plain=plain).logprob,
                                 scorer([(free[0], answers)], plain=plain).logprob,
                                 task.template(variant.language).verbalisers)
        prompts, measured = contexts, scorer
    else:
        if variant.prompt == "plain":
            raise VariantError(f"run {variant.run} is a classifier: prompt: plain is for decoder runs (drop it)")
        predictor = run.predictor
        predictor.probabilities.shapes = CallShapes()
        order = [predictor.labels.index(name) for name in task.labels]
        predicted = predictor([i.text for i in items])
        scores = {"acc": np.log(np.asarray([[p[predictor.labels[j]] for j in order] for _, p in predicted]) + 1e-12)}
        prompts, measured = [""] * len(items), predictor.probabilities
    latency = time.perf_counter() - started
    costs = {**run_costs(run, overlap, measured.typical_cost() if measure_costs else None),
             "examples_per_second": round(len(items) / max(latency, 1e-9), 2)}
    return Evaluation(_rule_records(items, scores, prompts, latency), costs, notes)
