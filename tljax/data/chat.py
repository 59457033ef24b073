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
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    return context_ids, whole[len(context_ids):]


def chat_context(tokenizer, messages: list[dict[str, str]]) -> str:
    """The conversation's text up to where the assistant's reply begins (the tokenizer's chat template)."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the model's tokenizer has no chat template: chat prompts need a chat (instruct) model")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
