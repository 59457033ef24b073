"""Prompts for decoders: the item asked as a chat message or as plain text, with few-shot demonstrations.

Chat prompts (for chat models) go through the tokenizer's own chat template (`add_generation_prompt=True`);
the answer is scored right after the assistant turn's opening, with no delimiter (lm-evaluation-harness's
convention under a chat template). Plain prompts (for any decoder, base models included) are
lm-evaluation-harness's defaults without a chat template: each demonstration is its question, the target
delimiter " " and its answer, the demonstrations are joined and followed by the fewshot delimiter "\n\n", then
the item's question; the answer is scored as " " + the answer word. Few-shot demonstrations are drawn
class-balanced, seeded by (seed, item id), so an item's demonstrations do not depend on the order of the items
or on a limit, and never include the item itself or its translation (items that share its id).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from harness.bias import pair_key
from harness.task_parts import Item, Template

FORMS = ("multi-turn", "one-message")
PROMPTS = ("chat", "plain")
TARGET_DELIMITER = " "  # lm-eval's default between a plain question and its answer
FEWSHOT_DELIMITER = "\n\n"  # lm-eval's default after each plain demonstration
CONTENT_FREE = "N/A"  # the content-free input of contextual calibration (Zhao et al., 2021)


def item_rng(seed: int, item_id: str) -> np.random.Generator:
    """A generator that depends only on (seed, item id)."""
    digest = hashlib.sha256(f"{seed}\x00{item_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def draw_demonstrations(pool: Sequence[Item], item: Item, k: int, num_labels: int, seed: int) -> list[Item]:
    """k demonstrations from `pool`, as class-balanced as k allows (k // C per class, the remainder to classes
    drawn at random), never `item` itself nor an item sharing its id or text; in a random order. The two
    sentences of a counterfactual pair draw the same demonstrations, so that only the person differs."""
    rng = item_rng(seed, pair_key(item.id))
    candidates = [[d for d in pool if d.label == label and d.id != item.id and d.text != item.text]
                  for label in range(num_labels)]
    counts = np.full(num_labels, k // num_labels)
    counts[rng.permutation(num_labels)[: k % num_labels]] += 1
    chosen: list[Item] = []
    for label, count in enumerate(counts):
        available = candidates[label]
        take = min(int(count), len(available))
        chosen += [available[i] for i in rng.choice(len(available), take, replace=False)] if take else []
    return [chosen[i] for i in rng.permutation(len(chosen))]


def chat_messages(template: Template, text: str, demonstrations: Sequence[Item] = (),
                  form: str = "multi-turn") -> list[dict[str, str]]:
    """The conversation that asks about `text`, after the demonstrations (each a user and an assistant turn in
    the multi-turn form; all in the one user message otherwise)."""
    if form == "multi-turn":
        messages = []
        for demo in demonstrations:
            messages += [{"role": "user", "content": template.question(demo.text)},
                         {"role": "assistant", "content": template.verbalisers[demo.label]}]
        return messages + [{"role": "user", "content": template.question(text)}]
    shown = "".join(f"{template.question(d.text)}\n{template.verbalisers[d.label]}\n\n" for d in demonstrations)
    return [{"role": "user", "content": shown + template.question(text)}]


def plain_context(template: Template, text: str, demonstrations: Sequence[Item] = ()) -> str:
    """The plain prompt that asks about `text` after the demonstrations, as lm-eval renders it without a chat
    template: "{question} {answer}\\n\\n" per demonstration, then the item's question (its answer, scored
    separately, is `answer_continuation`)."""
    shown = "".join(f"{template.plain_question(d.text)}{TARGET_DELIMITER}{template.verbalisers[d.label]}"
                    f"{FEWSHOT_DELIMITER}" for d in demonstrations)
    return shown + template.plain_question(text)


def answer_continuation(prompt: str, answer: str) -> str:
    """What is scored after a `prompt` ("chat" | "plain") context: the answer word, after the target delimiter
    in a plain prompt (none after a chat template's assistant opening)."""
    return TARGET_DELIMITER + answer if prompt == "plain" else answer
