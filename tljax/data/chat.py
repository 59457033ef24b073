"""Text for chat decoders: a conversation up to the assistant's reply, and the reply's tokens after it.

`encode_pair` splits (context, continuation) exactly as EleutherAI's lm-evaluation-harness does: trailing
spaces of the context move into the continuation, and the two are tokenised together and cut at the length
of the tokenised context, so that a continuation merging with the end of the context in the tokenizer is
scored (and trained) as that harness scores it.

A base decoder has no chat template; `CHAT_TEMPLATES` names the turn formats it can be taught (chat tuning's
`chat.template`), and `resolve_template` turns a name or a Jinja template into the template text.
"""

from __future__ import annotations

from tljax.data.dataset import DataError


# Gemma's turns, as Google's Gemma 3 instruction-tuned models write them: <bos>, then per message
# "<start_of_turn>{user | model}\n{content}<end_of_turn>\n" (a system message goes before the first user message's
# content), and "<start_of_turn>model\n" where the reply begins. <start_of_turn> and <end_of_turn> are single
# special tokens in Gemma 3's vocabulary (105 and 106), so the form costs a few tokens per turn.
GEMMA_TEMPLATE = (
    "{%- if bos_token -%}{{ bos_token }}{%- endif -%}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
CHAT_TEMPLATES = {"gemma": GEMMA_TEMPLATE}


def resolve_template(template: str) -> str:
    """The Jinja text of a chat template given by name (`CHAT_TEMPLATES`) or as Jinja text itself."""
    if template in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[template]
    if "{{" in template or "{%" in template:
        return template
    raise DataError(f"{template!r} is neither a named chat template ({', '.join(CHAT_TEMPLATES)}) nor a Jinja "
                    "template (text with {{ ... }} or {% ... %})")


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
