"""Text for chat decoders: a conversation up to the assistant's reply, and the reply's tokens after it.

`encode_pair` splits (context, continuation) exactly as EleutherAI's lm-evaluation-harness does: trailing
spaces of the context move into the continuation, and the two are tokenised together and cut at the length
of the tokenised context, so that a continuation merging with the end of the context in the tokenizer is
scored (and trained) as that harness scores it.
"""

from __future__ import annotations

from tljax.data.dataset import DataError


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids), no special tokens added."""
    return encode_pairs(tokenizer, [(context, continuation)])[0]


def encode_pairs(tokenizer, pairs: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """`encode_pair` of each (context, continuation), tokenised in two batched calls (a fast tokenizer's batch
    runs in parallel, without a Python round trip per text)."""
    split = []
    for context, continuation in pairs:
        spaces = len(context) - len(context.rstrip())
        split.append((context[:-spaces], context[-spaces:] + continuation) if spaces else (context, continuation))
    if not split:
        return []
    wholes = tokenizer([c + t for c, t in split], add_special_tokens=False)["input_ids"]
    contexts = tokenizer([c for c, _ in split], add_special_tokens=False)["input_ids"]
    return [(context, whole[len(context):]) for context, whole in zip(contexts, wholes)]


def chat_context(tokenizer, messages: list[dict[str, str]]) -> str:
    """The conversation's text up to where the assistant's reply begins (the tokenizer's chat template)."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the model's tokenizer has no chat template: chat prompts need a chat (instruct) model")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
