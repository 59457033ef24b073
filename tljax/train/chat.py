"""Chat tuning: a decoder taught a classification task in its own chat form, the label's word as the reply.

Each labelled text is asked with the config's instruction through the tokenizer's chat template; the
reply is the label's verbaliser, split from the prompt as lm-evaluation-harness splits a continuation
(`tljax.data.chat.encode_pair`). Training takes the causal-LM loss on the reply's tokens only; evaluation
scores every label's reply by its summed log-probability and predicts the likeliest, which is how the
harness scores a decoder zero-shot, few-shot, or after this tuning: the three compare in the same form.
The tokens every row starts with (the template's system prompt and the instruction's first words: 47 of
SmolLM2-135M-Instruct's 77 on average for film reviews) are kept once, not in each row, and run once per batch.

A base decoder has no chat template: `chat.template` names the turn format it is taught (`gemma`, or a Jinja
template), which the tokenizer then carries into the run's export. Such a run also teaches where a reply ends: the
reply is the label's word and the template's end of turn (Gemma's <end_of_turn>), so that the tuned model's free
replies stop there; an instruct model already ends its turns, and is taught the word alone.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from tljax.data import DataError, TextDataset
from tljax.data.batches import BatchIterator, Encoded
from tljax.data.chat import chat_context, encode_pairs, resolve_template
from tljax.metrics import classification_metrics
from tljax.models.decoder.generate import turn_end_ids
from tljax.models.decoder.modeling import shared_start
from tljax.train.config import ChatConfig, ConfigKeyError
from tljax.train.losses import cross_entropy
from tljax.train.objectives import MappedBatches, Objective


def encode_chat(dataset: TextDataset, settings: ChatConfig, tokenizer, max_length: int) -> Encoded:
    """One row per (example, label): the prompt's tokens then that label's reply; extras `reply_start` (where
    the reply begins), `example` and `label` (the row's), `gold` (the example's label). Prompts longer than
    `max_length` minus the longest reply keep their end (the question and the text's last words)."""
    verbalisers = [settings.verbalisers[name] for name in dataset.label_names]
    contexts = [chat_context(tokenizer, [{"role": "user", "content": settings.instruction.format(text=text)}])
                for text in dataset.texts]
    pairs = encode_pairs(tokenizer, [(context, reply) for context in contexts for reply in verbalisers])
    end = list(turn_end_ids(tokenizer)) if settings.template is not None else []  # a taught format's end of turn
    rows, starts, examples, labels, gold = [], [], [], [], []
    for row, (prompt, reply) in enumerate(pairs):
        index, choice = divmod(row, len(verbalisers))
        if not reply:
            raise ConfigKeyError(f"chat.verbalisers: {verbalisers[choice]!r} leaves no token after the prompt")
        reply = reply + end
        prompt = prompt[-(max_length - len(reply)):]
        rows.append(np.asarray(prompt + reply, np.int32))
        starts.append(len(prompt))
        examples.append(index)
        labels.append(choice)
        gold.append(dataset.labels[index])
    extras = {"reply_start": np.asarray(starts, np.int32), "example": np.asarray(examples, np.int32),
              "label": np.asarray(labels, np.int32), "gold": np.asarray(gold, np.int32)}
    return Encoded(tuple(rows), np.asarray(labels, np.int32), 0, extras)


def split_shared_start(encoded: dict[str, Encoded]) -> tuple[np.ndarray, dict[str, Encoded]]:
    """(the tokens every row's prompt starts with [S] (`shared_start`, over every split; S may be 0), the rows
    without them): the start is then run once per batch (`LlamaForCausalLM.logits_at`'s `shared`)."""
    prompts = [ids[:start] for rows in encoded.values() for ids, start in zip(rows.ids, rows.extras["reply_start"])]
    common = shared_start(prompts)
    rest = {name: Encoded(tuple(ids[common:] for ids in rows.ids), rows.labels, rows.truncated,
                          {**rows.extras, "reply_start": rows.extras["reply_start"] - common})
            for name, rows in encoded.items()}
    return np.asarray(prompts[0][:common], np.int32), rest


def reply_labels(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Token labels [B, T]: the reply's own ids, -100 on the prompt and the padding."""
    positions = np.arange(batch["input_ids"].shape[1])[None]
    reply = (positions >= batch["reply_start"][:, None]) & (batch["attention_mask"] > 0) & \
        (batch["weights"][:, None] > 0)
    return {**batch, "labels": np.where(reply, batch["input_ids"], -100).astype(np.int32)}


def reply_logits(model, batch: dict, width: int, shared: np.ndarray, dropout_key=None):
    """(logits [B, R, V] predicting each reply token, its id [B, R], whether it is one [B, R]), R = `width` (the
    longest reply of any row), for rows of `reply_labels` after the tokens `shared` [S] every row starts with: the
    causal-LM loss on the reply's tokens, without the logits of the prompt's."""
    labels = batch["labels"]
    length = (labels != -100).sum(-1, keepdims=True)  # [B, 1]: the reply's tokens (0 for a padding row)
    offset = jnp.arange(width)[None]
    scored = offset < length
    # token reply_start + j is predicted at position reply_start + j - 1 (a prompt is never empty)
    at = jnp.where(scored, batch["reply_start"][:, None] - 1 + offset, 0)
    targets = jnp.where(scored, jnp.take_along_axis(labels, at + 1, axis=1), 0)
    logits = model.logits_at(batch["input_ids"], batch["attention_mask"], at, shared=shared[None],
                             dropout_key=dropout_key)
    return logits, targets, scored


@dataclasses.dataclass
class ChatTuning(Objective):
    """`encoded[split]`: the rows of `encode_chat`; training uses the rows of each example's own label."""

    label_names: tuple[str, ...] = ()
    settings: ChatConfig | None = None
    shared: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int32))  # [S] (split_shared_start)

    def loss(self, model, batch, dropout_key):
        logits, targets, scored = self._reply_logits(model, batch, dropout_key)
        loss, accuracy = cross_entropy(logits, targets, scored)
        return loss, {"accuracy": accuracy}

    def outputs(self, model, batch):
        """Each row's reply log-probability [B]: the sum over the reply's tokens."""
        logits, targets, scored = self._reply_logits(model, batch)
        log_probs = jax.nn.log_softmax(logits)
        token = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
        return jnp.where(scored, token, 0.0).sum(-1)

    @functools.cached_property
    def reply_width(self) -> int:
        """The most tokens of any row's reply."""
        return max(len(ids) - start for rows in self.encoded.values()
                   for ids, start in zip(rows.ids, rows.extras["reply_start"]))

    def _reply_logits(self, model, batch, dropout_key=None):
        return reply_logits(model, batch, self.reply_width, self.shared, dropout_key)

    def train_batches(self, batch_size, seed, position=None, share=(0, 1)):
        position = position or {"epoch": 0, "index": 0}
        train = self.encoded["train"]
        own = np.flatnonzero(train.extras["label"] == train.extras["gold"])  # each example with its own reply
        rows = Encoded(tuple(train.ids[i] for i in own), train.labels[own], 0,
                       {k: v[own] for k, v in train.extras.items()})
        return MappedBatches(BatchIterator(rows, batch_size, self.pad_id, self.max_length, seed=seed,
                                           epoch=position["epoch"], index=position["index"], share=share),
                             lambda batch, _: reply_labels(batch))

    def evaluate(self, forward, split, batch_size):
        encoded = self.encoded[split]
        count = int(encoded.extras["example"].max()) + 1
        scores = np.full((count, len(self.label_names)), -np.inf)
        gold = np.zeros(count, np.int64)
        for batch in self.evaluation_batches(encoded, batch_size):
            batch = reply_labels(batch)
            values = np.asarray(forward(batch), np.float64)
            real = batch["weights"] > 0
            scores[batch["example"][real], batch["label"][real]] = values[real]
            gold[batch["example"][real]] = batch["gold"][real]
        log_probs = scores - np.logaddexp.reduce(scores, axis=1, keepdims=True)
        metrics = classification_metrics(gold, scores.argmax(1), len(self.label_names))
        return {"loss": float(-log_probs[np.arange(count), gold].mean()), **metrics}

    def chance(self):
        gold = self.encoded["validation"].extras["gold"][self.encoded["validation"].extras["label"] == 0]
        counts = np.bincount(gold, minlength=len(self.label_names))
        return float(counts.max() / counts.sum())

    def title(self) -> str:
        return f"chat tuning, {super().title()}"


def use_chat_template(tokenizer, settings: ChatConfig, model: str) -> None:
    """Gives `tokenizer` the template `settings.template` names (the form the run teaches, and its export keeps);
    without one, the tokenizer's own template is the form, and a tokenizer without a template is refused."""
    if settings.template is not None:
        tokenizer.chat_template = resolve_template(settings.template)
    elif not getattr(tokenizer, "chat_template", None):
        raise ConfigKeyError(f"{model}'s tokenizer has no chat template (a base model), so there is no turn format "
                             "to teach it in: set chat.template (gemma for Gemma's turns, or a Jinja template)")


def chat_objective(config, adaptation, tokenizer, splits: dict[str, TextDataset], max_length: int) -> ChatTuning:
    """The objective for `task: causal-lm` with a `chat` section, over labelled splits."""
    settings: ChatConfig = config.chat
    labels = tuple(splits["train"].label_names)
    if set(settings.verbalisers) != set(labels):
        raise ConfigKeyError(f"chat.verbalisers name {sorted(settings.verbalisers)}, the data's labels are "
                             f"{list(labels)}; give each label its reply")
    encoded = {name: encode_chat(split, settings, tokenizer, max_length) for name, split in splits.items()}
    for name, rows in encoded.items():
        if not len(rows):
            raise DataError(f"the {name} split has no examples")
    shared, encoded = split_shared_start(encoded)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return ChatTuning(adaptation, encoded, pad_id, max_length, label_names=labels, settings=settings, shared=shared)


__all__ = ["ChatTuning", "chat_objective", "encode_chat", "reply_labels", "reply_logits", "split_shared_start",
           "use_chat_template"]
