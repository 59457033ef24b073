"""Entity tasks: texts whose named entities a variant finds, scored by entity F1 (exact type and span).

A task file with `kind: entities`:

    name: ner-en
    kind: entities
    data: {source: ner-en, split: test}         # any tljax tagged source (CoNLL, JSON Lines spans, hf:DIR)
    demonstrations: {source: ner-en, split: train}   # few-shot examples (default: the data's train split)
    labels: [PER, ORG, LOC, DATE, MISC]          # the entity types, in the data's names
    templates:
      en:
        instruction: "List the named entities ... one per line as type: words ...\\n\\nText: {text}"
        plain: "Text: {text}\\nEntities:"       # a plain prompt's question (optional; default: the instruction)
        types: {PER: person, ORG: organisation, LOC: place, DATE: date, MISC: other}   # what a model writes
        none: none                                # what it writes when a text names nothing

An item is one text with its gold entities as character spans, and the data's words (the span of each word:
a run tags exactly those words, so its figures are its training report's). A decoder's reply is read line by
line (also split at ";"): `type: words`, the type by its template word or its code (any case), the words found
in the text as a whole-word match (the first occurrence not already taken, the exact case first); several names
after one type may be separated by commas. Words not in the text count as predicted entities that match nothing
(`unfound`); a reply with no such line that is not the `none` word could not be read (`unread`: no entities
predicted, counted as such).

The figures (`summarise_entities`) are CoNLL's: micro precision, recall and F1 over exact (start, end, type)
matches, as seqeval computes them on the data's words (`tljax.tagging.entity_metrics`), with a bootstrap interval
over texts, per type, over seeds as the classification tasks' figures are.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from functools import cached_property
from typing import Any

import numpy as np

from harness.prompts import FEWSHOT_DELIMITER, TARGET_DELIMITER, item_rng
from harness.task_parts import DataSpec, TaskError, Templated, aligned_seeds, check_keys, figure, task_head
from tljax.data import split_dataset
from tljax.data.sources import load_tagged
from tljax.data.tagged import TaggedDataset
from tljax.tagging import entities

ENTITY_TEMPLATE_KEYS = ("instruction", "plain", "types", "none")
BOOTSTRAP_ROUNDS = 1000
Span = tuple[int, int, str]  # (start, end, type): characters start..end of the text


@dataclasses.dataclass(frozen=True)
class EntityItem:
    id: str
    text: str
    entities: tuple[Span, ...]  # the gold entities
    language: str
    words: tuple[tuple[int, int], ...]  # the data's words (a run tags these)


@dataclasses.dataclass(frozen=True)
class EntityTemplate:
    """What a decoder is told in one language: the question, the word it writes for each type and for none."""

    instruction: str  # with {text}
    types: tuple[str, ...]  # one per entity type, in the task's type order
    none: str = "none"
    plain: str | None = None  # with {text}: a plain prompt's question; None: the instruction

    def question(self, text: str) -> str:
        return self.instruction.format(text=text)

    def plain_question(self, text: str) -> str:
        return (self.plain if self.plain is not None else self.instruction).format(text=text)

    def answer(self, item: EntityItem, labels: Sequence[str], separator: str = "\n") -> str:
        """The reply a demonstration shows: `type: words` per entity in text order, or the none word."""
        lines = [f"{self.types[labels.index(label)]}: {item.text[start:end]}"
                 for start, end, label in sorted(item.entities)]
        return separator.join(lines) if lines else self.none


def item_ids(dataset: TaggedDataset) -> list[str]:
    """A stable id per text: `<document>/<n>` (the n-th text of its document) where the data has documents, so
    that a sentence and its translation share it (the bundled ner-pt and ner-en), else `<data>#<index>`."""
    if dataset.groups is None:
        return [f"{dataset.name}#{i}" for i in range(len(dataset))]
    seen: dict[str, int] = {}
    ids = []
    for group in dataset.groups:
        ids.append(f"{group}/{seen.get(group, 0)}")
        seen[group] = seen.get(group, 0) + 1
    return ids


def entity_items(spec: DataSpec, types: tuple[str, ...], task: str) -> tuple[EntityItem, ...]:
    """The items of a data spec: the tagged source, split as `python -m tljax.train` splits it (by document)."""
    dataset = load_tagged(spec.source)
    unknown = sorted(set(dataset.types) - set(types))
    if unknown:
        raise TaskError(f"task {task}: the data {dataset.name} has entity types {list(dataset.types)}, the task "
                        f"declares {list(types)} (missing {unknown}); make the task's labels the data's types")
    ids = item_ids(dataset)
    if spec.split != "all":  # the split's own texts, each with its id in the whole data
        id_of = {(text, None if dataset.groups is None else dataset.groups[i]): ids[i]
                 for i, text in enumerate(dataset.texts)}
        dataset = split_dataset(dataset, validation=spec.validation, test=spec.test, seed=spec.seed)[spec.split]
        ids = [id_of[(text, None if dataset.groups is None else dataset.groups[i])]
               for i, text in enumerate(dataset.texts)]
    items = []
    for i, identifier in enumerate(ids):
        spans = dataset.words[i]
        gold = tuple((spans[e.start][0], spans[e.end - 1][1], e.label) for e in entities(dataset.tags[i]))
        items.append(EntityItem(identifier, dataset.texts[i], gold, dataset.language, tuple(spans)))
    return tuple(items)


@dataclasses.dataclass(frozen=True)
class EntityTask(Templated):
    name: str
    data: DataSpec
    demonstrations: DataSpec
    labels: tuple[str, ...]  # the entity types
    templates: dict[str, EntityTemplate]
    description: str = ""
    prompt_language: str | None = None
    kind = "entities"

    @cached_property
    def items(self) -> tuple[EntityItem, ...]:
        return entity_items(self.data, self.labels, self.name)

    @cached_property
    def demonstration_items(self) -> tuple[EntityItem, ...]:
        return entity_items(self.demonstrations, self.labels, self.name)


def parse_entity_task(raw: Any, where: str = "task") -> EntityTask:
    """An entity task from its YAML mapping; every problem is a `TaskError` naming the key."""
    raw, labels, data, demonstrations = task_head(raw, where, 1, "entity types")
    if not isinstance(raw["templates"], dict) or not raw["templates"]:
        raise TaskError(f"{where}: templates must map languages to templates, e.g. {{en: {{instruction: ...}}}}")
    templates = {}
    for language, spec in raw["templates"].items():
        at = f"{where}: templates.{language}"
        spec = check_keys(spec, ENTITY_TEMPLATE_KEYS, at)
        for key in ("instruction", "types"):
            if key not in spec:
                raise TaskError(f"{at} needs {key}")
        for key in ("instruction", "plain"):
            if key in spec and (not isinstance(spec[key], str) or "{text}" not in spec[key]):
                raise TaskError(f"{at}.{key} must be a string containing {{text}} (where the item's text goes)")
        names = check_keys(spec["types"], labels, f"{at}.types")
        if set(names) != set(labels):
            raise TaskError(f"{at}.types must name every type ({', '.join(labels)}); missing: "
                            f"{', '.join(sorted(set(labels) - set(names)))}")
        words = tuple(str(names[label]).strip() for label in labels)
        if any(not w or ":" in w for w in words) or len({w.lower() for w in words}) != len(words):
            raise TaskError(f"{at}.types: each type needs its own non-empty word without ':' "
                            f"({dict(zip(labels, words))}); a reply names the type with it")
        templates[str(language)] = EntityTemplate(str(spec["instruction"]), words, str(spec.get("none", "none")),
                                                  spec.get("plain"))
    prompt_language = raw.get("prompt_language")
    if prompt_language is not None and prompt_language not in templates:
        raise TaskError(f"{where}: prompt_language {prompt_language!r} has no template; templates: "
                        f"{', '.join(templates)}")
    return EntityTask(str(raw["name"]), data, demonstrations, labels, templates, str(raw.get("description", "")),
                      prompt_language)


# ---- decoders: the question, the demonstrations, the reply read back into spans ----

def draw_entity_demonstrations(pool: Sequence[EntityItem], item: EntityItem, k: int, labels: Sequence[str],
                               seed: int) -> list[EntityItem]:
    """k demonstrations from `pool`, never `item` nor a text sharing its id (its translation): one text with
    each type in turn (the types in a random order) while k allows, then any texts; in a random order."""
    rng = item_rng(seed, item.id)
    candidates = [d for d in pool if d.id != item.id and d.text != item.text]
    chosen: list[int] = []
    for label in [labels[i] for i in rng.permutation(len(labels))]:
        if len(chosen) == k:
            break
        having = [i for i, d in enumerate(candidates) if i not in chosen and any(e[2] == label for e in d.entities)]
        if having:
            chosen.append(having[int(rng.integers(len(having)))])
    rest = [i for i in range(len(candidates)) if i not in chosen]
    chosen += [rest[i] for i in rng.choice(len(rest), min(k - len(chosen), len(rest)), replace=False)]
    return [candidates[chosen[i]] for i in rng.permutation(len(chosen))]


def entity_messages(template: EntityTemplate, labels: Sequence[str], text: str,
                    demonstrations: Sequence[EntityItem] = (), form: str = "multi-turn") -> list[dict[str, str]]:
    """The conversation that asks for the entities of `text` after the demonstrations (each a user and an
    assistant turn in the multi-turn form; all in the one user message otherwise)."""
    if form == "multi-turn":
        messages = []
        for demo in demonstrations:
            messages += [{"role": "user", "content": template.question(demo.text)},
                         {"role": "assistant", "content": template.answer(demo, labels)}]
        return messages + [{"role": "user", "content": template.question(text)}]
    shown = "".join(f"{template.question(d.text)}\n{template.answer(d, labels)}\n\n" for d in demonstrations)
    return [{"role": "user", "content": shown + template.question(text)}]


def entity_plain_context(template: EntityTemplate, labels: Sequence[str], text: str,
                         demonstrations: Sequence[EntityItem] = ()) -> str:
    """The plain prompt: "{question} {type: words; ...}\\n\\n" per demonstration, then the text's question; the
    reply is read up to the first blank line."""
    shown = "".join(f"{template.plain_question(d.text)}{TARGET_DELIMITER}{template.answer(d, labels, '; ')}"
                    f"{FEWSHOT_DELIMITER}" for d in demonstrations)
    return shown + template.plain_question(text)


LINE = re.compile(r"^\s*(?:[-*•]|\d+[.)])?\s*\**([^:]{1,40}?)\**\s*:\s*(.*?)\s*$")
QUOTES = "\"'`“”‘’«»"


@dataclasses.dataclass(frozen=True)
class ParsedReply:
    spans: tuple[Span, ...]  # the entities found in the text
    unfound: tuple[tuple[str, str], ...]  # (words, type) the reply named that are not in the text
    readable: bool  # a `type: words` line, or the none word


def _locate(text: str, mention: str, taken: list[tuple[int, int]]) -> tuple[int, int] | None:
    for flags in (0, re.IGNORECASE):  # the exact case first
        for match in re.finditer(rf"(?<!\w){re.escape(mention)}(?!\w)", text, flags):
            if all(match.end() <= a or match.start() >= b for a, b in taken):
                return match.start(), match.end()
    return None


def parse_entity_reply(reply: str, template: EntityTemplate, labels: Sequence[str], text: str) -> ParsedReply:
    """The entities a decoder's reply names, as spans of `text` (see the module's docstring)."""
    names = {word.lower(): label for word, label in zip(template.types, labels)}
    names.update({label.lower(): label for label in labels})
    spans: list[Span] = []
    unfound: list[tuple[str, str]] = []
    taken: list[tuple[int, int]] = []
    readable = reply.strip().strip(".").lower() == template.none.lower()
    for line in re.split(r"[\n;]", reply):
        match = LINE.match(line)
        if not match or match.group(1).strip().lower() not in names:
            continue
        readable = True
        label = names[match.group(1).strip().lower()]
        mention = match.group(2).strip(QUOTES + " .")
        if not mention or mention.lower() == template.none.lower():
            continue
        found = _locate(text, mention, taken)
        parts = [mention] if found or "," not in mention else [p.strip(QUOTES + " .") for p in mention.split(",")]
        for part in parts:
            where = found if found else _locate(text, part, taken) if part else None
            if where is None:
                if part:
                    unfound.append((part, label))
                continue
            taken.append(where)
            spans.append((*where, label))
    return ParsedReply(tuple(sorted(spans)), tuple(unfound), readable)


# ---- the figures ----

def entity_counts(records: Sequence[dict], labels: Sequence[str]) -> np.ndarray:
    """[texts, types, 3]: per text and type, (exact matches, predicted entities, gold entities); a named entity
    not found in the text is a predicted one that matches nothing."""
    index = {label: i for i, label in enumerate(labels)}
    counts = np.zeros((len(records), len(labels), 3), np.int64)
    for n, record in enumerate(records):
        gold = {tuple(e) for e in record["gold"]}
        predicted = {tuple(e) for e in record["predicted"]}
        for start, end, label in gold & predicted:
            counts[n, index[label], 0] += 1
        for start, end, label in predicted:
            counts[n, index[label], 1] += 1
        for _, label in record.get("unfound", ()):
            counts[n, index[label], 1] += 1
        for start, end, label in gold:
            counts[n, index[label], 2] += 1
    return counts


def _prf(totals: np.ndarray) -> np.ndarray:
    """[..., 3] (matches, predicted, gold) -> [..., 3] (precision, recall, F1), zero where undefined."""
    hits, predicted, gold = (totals[..., i].astype(np.float64) for i in range(3))
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    recall = np.divide(hits, gold, out=np.zeros_like(hits), where=gold > 0)
    f1 = np.divide(2 * hits, predicted + gold, out=np.zeros_like(hits), where=predicted + gold > 0)
    return np.stack([precision, recall, f1], -1)


def summarise_entities(per_seed: Sequence[Sequence[dict]], labels: Sequence[str], seed: int = 0) -> dict[str, Any]:
    """The figures of a row from each seed's records (the same texts under each seed): under `entity`, micro
    precision / recall / F1 (means over seeds, `_sd` their standard deviation, `_per_seed`), `f1_ci` the 95%
    bootstrap interval of the seed mean's F1 (texts resampled, the same resample for every seed), `macro_f1` and
    `per_type` F1; `unread` / `unfound` the mean counts over seeds."""
    out: dict[str, Any] = {"items": len(per_seed[0]) if per_seed else 0, "seeds": len(per_seed)}
    if not per_seed or not per_seed[0]:
        return out
    aligned = aligned_seeds(per_seed)
    order = [r["id"] for r in aligned[0]]
    counts = np.stack([entity_counts(records, labels) for records in aligned])  # [S, N, T, 3]
    micro = _prf(counts.sum((1, 2)))  # [S, 3]
    per_type = _prf(counts.sum(1))  # [S, T, 3]
    samples = np.random.default_rng(seed).integers(0, len(order), (BOOTSTRAP_ROUNDS, len(order)))
    resampled = _prf(counts.sum(2)[:, samples].sum(2))[..., 2].mean(0)  # [B]: the seed mean's F1
    unread = [sum(not r.get("readable", True) for r in records) for records in aligned]
    unfound = [sum(len(r.get("unfound", ())) for r in records) for records in aligned]
    summary: dict[str, Any] = {}
    for j, name in enumerate(("precision", "recall", "f1")):
        summary[name] = float(micro[:, j].mean())
        summary[f"{name}_sd"] = float(micro[:, j].std(ddof=1)) if len(aligned) > 1 else None
        summary[f"{name}_per_seed"] = micro[:, j].tolist()
    summary["f1_ci"] = [float(x) for x in np.percentile(resampled, [2.5, 97.5])]
    present = counts[0].sum(0)[:, 2] > 0  # the types with gold entities
    summary["macro_f1"] = float(per_type[:, present, 2].mean()) if present.any() else 0.0
    summary["per_type"] = {label: float(per_type[:, t, 2].mean()) for t, label in enumerate(labels)}
    out.update({"entities": int(counts[0, ..., 2].sum()), "unread": float(np.mean(unread)) if len(unread) > 1
                else unread[0], "unread_per_seed": unread, "unfound": float(np.mean(unfound)), "entity": summary})
    return out


LEGEND = (
    "entity F1 (95% CI): micro F1 over exact (start, end, type) matches, as CoNLL and seqeval count them, with its "
    "95% bootstrap interval over texts; P, R: micro precision and recall; macro-F1: the mean of the per-type F1 "
    "over the types with gold entities. unread: decoder replies that named no entity in the asked form (no "
    "entities predicted); unfound: entities a reply named that are not words of the text (each a false positive). "
    "A row over several seeds gives the means over its seeds ± their standard deviation.")


def entity_table(rows: Sequence[dict[str, Any]]) -> str:
    """The entity tasks' results table (Markdown), the legend under it."""
    types = sorted({t for row in rows for t in row["summary"].get("entity", {}).get("per_type", {})})
    lines = ["| variant | task | lang | texts | entity F1 (95% CI) | P | R | macro-F1 | "
             + " | ".join(f"F1 {t}" for t in types) + " | unread | unfound | trainable params | train s | ex/s |",
             "|---|---|---|---:|---|---:|---:|---:|" + "---:|" * len(types) + "---:|---:|---:|---:|---:|"]
    for row in rows:
        s, c = row["summary"], row["costs"]
        seeds = s.get("seeds", 1)
        texts = f"{s['items']} × {seeds}" if seeds > 1 else f"{s['items']}"
        entity = s.get("entity", {})
        ci = entity.get("f1_ci", [float("nan")] * 2)
        per_type = entity.get("per_type", {})
        params = c.get("trainable_parameters")
        lines.append(
            f"| {row['variant']} | {row['task']} | {row['language']} | {texts} | {figure(entity, 'f1') or 'nan'} "
            f"({ci[0]:.3f}-{ci[1]:.3f}) | {figure(entity, 'precision')} | {figure(entity, 'recall')} | "
            f"{entity.get('macro_f1', float('nan')):.3f} | "
            + " | ".join(f"{per_type[t]:.3f}" if t in per_type else "" for t in types)
            + f" | {s.get('unread', 0):g} | {s.get('unfound', 0):g} | {'' if params is None else f'{params:,}'} | "
            f"{c.get('training_seconds') or 0:.0f} | {c.get('examples_per_second', float('nan')):.1f} |")
    notes = [f"- {row['variant']} on {row['task']}: {'; '.join(row['notes'])}" for row in rows if row.get("notes")]
    return "\n".join(lines) + "\n\n" + LEGEND + "\n" + ("\n" + "\n".join(notes) + "\n" if notes else "")
