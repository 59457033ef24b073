"""Answer tasks: questions about passages whose answer a variant finds, scored by SQuAD exact match and F1.

A task file with `kind: answers`:

    name: qa-en
    kind: answers
    data: {source: qa-en, split: test}           # any tljax QA source (SQuAD JSON, JSON Lines / CSV, hf:DIR)
    demonstrations: {source: qa-en, split: train}   # few-shot examples (default: the data's train split)
    templates:
      en:
        instruction: "Answer with the exact words of the passage ... \\n\\nPassage: {context}\\n\\nQuestion: {question}"
        plain: "Passage: {context}\\nQuestion: {question}\\nAnswer:"   # a plain prompt (optional)
        none: not in the passage                   # what a model writes when the passage does not answer

An item is one question with its passage and its gold answers (none: unanswerable). A decoder's reply is read as
its first line, quotes and a final full stop dropped; the `none` phrase (or a reply that starts with it) is the
null answer. The answer is also located in the passage (the first occurrence, the exact case first) so that the
app can mark it; the score is the text's, by the official SQuAD normalisation (`tljax.squad`), as a run's is.

The figures (`summarise_answers`): exact match and F1 over questions, with the answerable / unanswerable split
where the task has unanswerable questions, a bootstrap interval over questions, and seeds averaged as the
classification tasks' figures are.
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
from tljax.data.sources import load_questions
from tljax.squad import question_scores

ANSWER_TEMPLATE_KEYS = ("instruction", "plain", "none")
BOOTSTRAP_ROUNDS = 1000
SHORT_PASSAGE = 900  # characters: the demonstrations' passages (a prompt holds k of them before the question's)


@dataclasses.dataclass(frozen=True)
class AnswerItem:
    id: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...]  # the gold (text, start); empty: the passage does not answer
    language: str

    @property
    def text(self) -> str:  # what the app and the explorer show for an item
        return self.question

    @property
    def passage(self) -> str:
        """The passage's id (`<passage>/<question>` ids: a question and its translation share it)."""
        return self.id.rsplit("/", 1)[0]


@dataclasses.dataclass(frozen=True)
class AnswerTemplate:
    """What a decoder is told in one language: the question with its passage, the phrase for no answer."""

    instruction: str  # with {context} and {question}
    none: str = "not in the passage"
    plain: str | None = None  # with {context} and {question}: a plain prompt's question; None: the instruction

    def question(self, item: AnswerItem) -> str:
        return self.instruction.format(context=item.context, question=item.question)

    def plain_question(self, item: AnswerItem) -> str:
        return (self.plain if self.plain is not None else self.instruction).format(context=item.context,
                                                                                  question=item.question)

    def answer(self, item: AnswerItem) -> str:
        """The reply a demonstration shows: its first gold answer, or the none phrase."""
        return item.answers[0][0] if item.answers else self.none


def answer_items(spec: DataSpec) -> tuple[AnswerItem, ...]:
    """The items of a data spec: the QA source, split as `python -m tljax.train` splits it (by passage)."""
    dataset = load_questions(spec.source)
    if spec.split != "all":
        dataset = split_dataset(dataset, validation=spec.validation, test=spec.test, seed=spec.seed)[spec.split]
    return tuple(AnswerItem(dataset.ids[i], dataset.questions[i], dataset.contexts[i], dataset.answers[i],
                            dataset.language) for i in range(len(dataset)))


@dataclasses.dataclass(frozen=True)
class AnswerTask(Templated):
    name: str
    data: DataSpec
    demonstrations: DataSpec
    templates: dict[str, AnswerTemplate]
    description: str = ""
    prompt_language: str | None = None
    labels: tuple[str, ...] = ()
    kind = "answers"

    @cached_property
    def items(self) -> tuple[AnswerItem, ...]:
        return answer_items(self.data)

    @cached_property
    def demonstration_items(self) -> tuple[AnswerItem, ...]:
        return answer_items(self.demonstrations)

    @property
    def has_unanswerable(self) -> bool:
        return any(not item.answers for item in self.items)


def parse_answer_task(raw: Any, where: str = "task") -> AnswerTask:
    """An answer task from its YAML mapping; every problem is a `TaskError` naming the key."""
    raw, _, data, demonstrations = task_head(raw, where, 0, "")
    if not isinstance(raw["templates"], dict) or not raw["templates"]:
        raise TaskError(f"{where}: templates must map languages to templates, e.g. {{en: {{instruction: ...}}}}")
    templates = {}
    for language, spec in raw["templates"].items():
        at = f"{where}: templates.{language}"
        spec = check_keys(spec, ANSWER_TEMPLATE_KEYS, at)
        if "instruction" not in spec:
            raise TaskError(f"{at} needs instruction")
        for key in ("instruction", "plain"):
            if key in spec and (not isinstance(spec[key], str) or "{context}" not in spec[key]
                                or "{question}" not in spec[key]):
                raise TaskError(f"{at}.{key} must be a string containing {{context}} and {{question}} (where the "
                                "passage and the question go)")
        none = str(spec.get("none", "not in the passage")).strip()
        if not none:
            raise TaskError(f"{at}.none is empty; give the phrase a model writes when the passage has no answer")
        templates[str(language)] = AnswerTemplate(str(spec["instruction"]), none, spec.get("plain"))
    prompt_language = raw.get("prompt_language")
    if prompt_language is not None and prompt_language not in templates:
        raise TaskError(f"{where}: prompt_language {prompt_language!r} has no template; templates: "
                        f"{', '.join(templates)}")
    return AnswerTask(str(raw["name"]), data, demonstrations, templates, str(raw.get("description", "")),
                      prompt_language)


# ---- decoders: the question, the demonstrations, the reply read back ----

def draw_answer_demonstrations(pool: Sequence[AnswerItem], item: AnswerItem, k: int, seed: int) -> list[AnswerItem]:
    """k demonstrations with short passages from `pool`, never from the item's passage (nor its translation's):
    one the passage does not answer among them when k >= 3 and the pool has one, the rest answered; in a random
    order."""
    rng = item_rng(seed, item.id)
    candidates = [d for d in pool if d.passage != item.passage and len(d.context) <= SHORT_PASSAGE]
    answered = [d for d in candidates if d.answers]
    unanswered = [d for d in candidates if not d.answers]
    chosen = [unanswered[int(rng.integers(len(unanswered)))]] if k >= 3 and unanswered else []
    picks = rng.choice(len(answered), min(k - len(chosen), len(answered)), replace=False)
    chosen += [answered[i] for i in picks]
    return [chosen[i] for i in rng.permutation(len(chosen))]


def answer_messages(template: AnswerTemplate, item: AnswerItem, demonstrations: Sequence[AnswerItem] = (),
                    form: str = "multi-turn") -> list[dict[str, str]]:
    """The conversation that asks `item`'s question after the demonstrations (each a user and an assistant turn
    in the multi-turn form; all in the one user message otherwise)."""
    if form == "multi-turn":
        messages = []
        for demo in demonstrations:
            messages += [{"role": "user", "content": template.question(demo)},
                         {"role": "assistant", "content": template.answer(demo)}]
        return messages + [{"role": "user", "content": template.question(item)}]
    shown = "".join(f"{template.question(d)}\n{template.answer(d)}\n\n" for d in demonstrations)
    return [{"role": "user", "content": shown + template.question(item)}]


def answer_plain_context(template: AnswerTemplate, item: AnswerItem,
                         demonstrations: Sequence[AnswerItem] = ()) -> str:
    """The plain prompt: "{question} {answer}\\n\\n" per demonstration, then the item's question."""
    shown = "".join(f"{template.plain_question(d)}{TARGET_DELIMITER}{template.answer(d)}{FEWSHOT_DELIMITER}"
                    for d in demonstrations)
    return shown + template.plain_question(item)


QUOTES = "\"'`“”‘’«»*"
LEAD = re.compile(r"^(?:answer|resposta)\s*:\s*", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class ReadAnswer:
    text: str  # "" for the null answer
    start: int  # in the passage, -1 where the words are not there (or for none)
    end: int


def locate(context: str, words: str) -> tuple[int, int]:
    """The first occurrence of `words` in `context` (the exact case first), or (-1, -1)."""
    for flags in (0, re.IGNORECASE):
        match = re.search(re.escape(words), context, flags)
        if match:
            return match.start(), match.end()
    return -1, -1


def read_answer(reply: str, template: AnswerTemplate, context: str) -> ReadAnswer:
    """A decoder's reply as an answer (see the module's docstring)."""
    line = next((x for x in reply.strip().splitlines() if x.strip()), "")
    text = LEAD.sub("", line.strip()).strip(QUOTES + " ").rstrip(".").strip(QUOTES + " ")
    if not text or text.casefold().startswith(template.none.casefold().rstrip(".")):
        return ReadAnswer("", -1, -1)
    return ReadAnswer(text, *locate(context, text))


# ---- the figures ----

def summarise_answers(per_seed: Sequence[Sequence[dict]], seed: int = 0) -> dict[str, Any]:
    """The figures of a row from each seed's records (the same questions under each seed): under `answer`, exact
    match and F1 (means over seeds, `_sd` their standard deviation, `_per_seed`), `f1_ci` the 95% bootstrap
    interval of the seed mean's F1 (questions resampled), and with unanswerable questions `has_answer_f1` and
    `no_answer_exact` (the unanswerable left unanswered); `unanswered` the mean count of null answers."""
    out: dict[str, Any] = {"items": len(per_seed[0]) if per_seed else 0, "seeds": len(per_seed)}
    if not per_seed or not per_seed[0]:
        return out
    aligned = aligned_seeds(per_seed, "questions")
    order = [r["id"] for r in aligned[0]]
    scores = np.asarray([[question_scores(r["predicted"], r["gold"]) for r in records] for records in aligned])
    answerable = np.asarray([bool(r["gold"]) for r in aligned[0]])  # [N]
    samples = np.random.default_rng(seed).integers(0, len(order), (BOOTSTRAP_ROUNDS, len(order)))
    resampled = scores[:, samples, 1].mean(2).mean(0)  # [B]: the seed mean's F1
    summary: dict[str, Any] = {}
    for j, name in enumerate(("exact", "f1")):
        per = scores[:, :, j].mean(1)
        summary[name] = float(per.mean())
        summary[f"{name}_sd"] = float(per.std(ddof=1)) if len(aligned) > 1 else None
        summary[f"{name}_per_seed"] = per.tolist()
    summary["f1_ci"] = [float(x) for x in np.percentile(resampled, [2.5, 97.5])]
    if not answerable.all():
        summary["has_answer_f1"] = float(scores[:, answerable, 1].mean()) if answerable.any() else 0.0
        summary["no_answer_exact"] = float(scores[:, ~answerable, 0].mean())
    unanswered = [sum(not r["predicted"] for r in records) for records in aligned]
    out.update({"unanswerable": int((~answerable).sum()), "unanswered": float(np.mean(unanswered)),
                "answer": summary})
    return out


LEGEND = (
    "F1 (95% CI): SQuAD's token F1 after the official normalisation (lower case, no punctuation, no English "
    "articles), the best over a question's gold answers, averaged over questions, with its 95% bootstrap interval "
    "over questions; EM: exact match after the same normalisation. An unanswerable question scores 1 only when "
    "left unanswered. answerable F1: over the questions the passage answers; no-answer: the share of unanswerable "
    "questions left unanswered; unanswered: how many questions the variant left unanswered. A row over several seeds "
    "gives the means over its seeds ± their standard deviation.")


def answer_table(rows: Sequence[dict[str, Any]]) -> str:
    """The answer tasks' results table (Markdown), the legend under it."""
    lines = ["| variant | task | lang | questions | F1 (95% CI) | EM | answerable F1 | no-answer | unanswered | "
             "trainable params | train s | ex/s |",
             "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        s, c = row["summary"], row["costs"]
        seeds = s.get("seeds", 1)
        questions = f"{s['items']} × {seeds}" if seeds > 1 else f"{s['items']}"
        answer = s.get("answer", {})
        ci = answer.get("f1_ci", [float("nan")] * 2)
        params = c.get("trainable_parameters")
        split = lambda key: f"{answer[key]:.3f}" if key in answer else ""  # noqa: E731
        lines.append(
            f"| {row['variant']} | {row['task']} | {row['language']} | {questions} | {figure(answer, 'f1') or 'nan'} "
            f"({ci[0]:.3f}-{ci[1]:.3f}) | {figure(answer, 'exact')} | {split('has_answer_f1')} | "
            f"{split('no_answer_exact')} | {s.get('unanswered', 0):g} | {'' if params is None else f'{params:,}'} | "
            f"{c.get('training_seconds') or 0:.0f} | {c.get('examples_per_second', float('nan')):.1f} |")
    notes = [f"- {row['variant']} on {row['task']}: {'; '.join(row['notes'])}" for row in rows if row.get("notes")]
    return "\n".join(lines) + "\n\n" + LEGEND + "\n" + ("\n" + "\n".join(notes) + "\n" if notes else "")
