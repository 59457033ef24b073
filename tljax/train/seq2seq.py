"""Sequence to sequence (`task: seq2seq`): input text -> output text, e.g. translation, on a decoder or an
encoder-decoder.

Each example is one row: the prompt (`tljax.data.prompts`: the input in the plain form, prefix + input +
separator, or in the model's chat form) followed by the target's tokens and the end token. Training is teacher
forcing with the loss on the target's tokens only (the prompt's tokens are read, never scored), optionally
label-smoothed (`training.label_smoothing`).

- A decoder reads the whole row causally; its logits are computed at the target's positions only
  (`chat.reply_logits`), and the tokens every prompt starts with (a chat template's system prompt, a task prefix)
  are kept once and run once per batch, as chat tuning does.
- An encoder-decoder (`EncoderDecoder` below: T5) reads the prompt alone with its encoder, in the plain form
  without a separator and with the tokenizer's own end tokens (T5's `</s>`), as Hugging Face's T5 recipes tokenise
  an input; `data.max_length` bounds that prompt. Its decoder reads the target shifted right after its start token
  (`target_logits`). The same rows and batches serve both: `source_and_targets` splits each batch's rows at
  `reply_start`. The chat form is refused (an encoder-decoder has no chat template), and so is a separator.

Evaluation scores the loss and token accuracy of the target under teacher forcing, and generates each output
greedily from the prompt (a decoder through `tljax.models.decoder.generate.decode`, an encoder-decoder through
its `generate_targets`; up to `data.max_target_length` tokens and the end token) inside the same compiled call,
scored against the target text by `tljax.text_metrics`: chrF, BLEU, ROUGE-1/2/L and exact match, any of which
`training.metric_for_best_model` may name. With several `tasks`, each input carries its task's prefix and every
metric is also reported per task.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, ClassVar, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from tljax.data import DataError, split_dataset
from tljax.data.batches import BatchIterator, Encoded, make_batch
from tljax.data.pairs import PairDataset, load_pairs
from tljax.data.prompts import PromptForm, end_token, fit_prompts, output_text, target_ids
from tljax.models.decoder.generate import decode
from tljax.runs import FINAL_STEP
from tljax.text_metrics import TEXT_METRICS, text_metrics
from tljax.train.chat import reply_labels, reply_logits, split_shared_start
from tljax.train.config import ConfigKeyError, DataConfig, RunConfig
from tljax.train.losses import smoothed_cross_entropy
from tljax.train.multitask import parse_tasks
from tljax.train.objectives import MappedBatches, Objective
from tljax.train.tasks import Setup, build, split_budgets

log = logging.getLogger(__name__)
Array = jax.Array
SEQ2SEQ_METRICS = (*TEXT_METRICS, "loss", "accuracy")
EXAMPLES_SHOWN = 5  # test outputs the summary shows beside their inputs and targets


class EncoderDecoder(Protocol):
    """What an encoder-decoder model (T5) offers to be trained as text to text by this objective."""

    is_encoder_decoder: ClassVar[bool]  # True

    def target_logits(self, input_ids: Array, attention_mask: Array, targets: Array, *,
                      dropout_key: Array | None = None) -> Array:
        """The encoder reads the prompts [B, T]; the decoder reads the targets [B, R] shifted right (its start
        token first) -> float32 logits [B, R, V], position j predicting `targets[:, j]` (teacher forcing)."""

    def generate_targets(self, input_ids: Array, attention_mask: Array, *, max_new_tokens: int,
                         eos: tuple[int, ...], pad: int) -> Array:
        """Greedy outputs [B, max_new_tokens] of the prompts [B, T], `pad` after a row's end token; traceable."""


@dataclasses.dataclass(frozen=True)
class PairSplit:
    """One split of pairs: the dataset (its targets are the references) and its rows, prompt then target."""

    dataset: PairDataset
    rows: Encoded  # extras: reply_start (where the target begins), example (the pair's index), task
    task_names: tuple[str, ...] = ("",)  # extras["task"] indexes them

    def __len__(self) -> int:
        return len(self.dataset)


def encode_pairs(dataset: PairDataset, tokenizer, form: PromptForm | list[PromptForm], max_length: int,
                 max_target_length: int, tasks: np.ndarray | None = None, source_length: int | None = None) -> Encoded:
    """Rows [prompt ids, target ids, end token] of every pair, at most `max_length` tokens: the target cut to
    `max_target_length`, the input cut to what is left (both counted and logged); with `source_length` (an
    encoder-decoder's), the prompt cut to that instead. `form`: one for every pair, or one per task with `tasks`
    [N] the task of each pair. Extras: reply_start, example, task."""
    tasks = np.zeros(len(dataset), np.int32) if tasks is None else np.asarray(tasks, np.int32)
    forms = form if isinstance(form, list) else [form]
    budget = max_length - max_target_length - 1 if source_length is None else source_length
    if budget < 2:
        raise ConfigKeyError(f"data.max_length {max_length} leaves no room for the input after data.max_target_length "
                             f"{max_target_length}; raise max_length or lower max_target_length")
    prompts: list[list[int]] = [[] for _ in range(len(dataset))]
    cut_inputs = 0
    for number, task_form in enumerate(forms):
        members = np.flatnonzero(tasks == number)
        ids, cut = fit_prompts(task_form, tokenizer, [dataset.inputs[i] for i in members], budget)
        cut_inputs += cut
        for index, prompt in zip(members, ids):
            prompts[index] = prompt
    targets, cut_targets = target_ids(tokenizer, dataset.targets, max_target_length)
    for count, what, limit in ((cut_inputs, "inputs", f"{budget} tokens of prompt"),
                               (cut_targets, "targets", f"data.max_target_length {max_target_length}")):
        if count:
            log.warning("%s: %d of %d %s were cut to %s", dataset.name, count, len(dataset), what, limit)
    rows = tuple(np.asarray(p + t, np.int32) for p, t in zip(prompts, targets))
    extras = {"reply_start": np.asarray([len(p) for p in prompts], np.int32),
              "example": np.arange(len(dataset), dtype=np.int32), "task": tasks}
    return Encoded(rows, np.zeros(len(rows), np.int32), cut_inputs + cut_targets, extras)


def source_and_targets(batch: dict[str, np.ndarray], width: int, pad_id: int) -> dict[str, np.ndarray]:
    """An encoder-decoder's batch from one of rows [prompt ids, target ids, end token] (`make_batch`'s [B, W]):
    the prompts alone as `input_ids` / `attention_mask` [B, W] (right-padded; W is kept, so that every process of a
    run sees the same shape), and the targets as `labels` [B, R] (R = `width`, the longest target; -100 after a
    row's end and on padding rows)."""
    ids, mask, starts = batch["input_ids"], batch["attention_mask"], batch["reply_start"]
    source = (np.arange(ids.shape[1])[None] < starts[:, None]) & (mask > 0)
    at = starts[:, None] + np.arange(width)[None]
    is_target = (at < mask.sum(1, keepdims=True)) & (batch["weights"][:, None] > 0)
    labels = np.where(is_target, np.take_along_axis(ids, np.minimum(at, ids.shape[1] - 1), axis=1), -100)
    return {**batch, "input_ids": np.where(source, ids, pad_id).astype(np.int32),
            "attention_mask": source.astype(np.int32), "labels": labels.astype(np.int32)}


def pair_batch(rows: Encoded, indices: list[int], batch_size: int, pad_id: int, max_length: int,
               labelled=reply_labels) -> dict:
    """An evaluation batch of `rows`: the whole rows [B, W] right-padded, as the loss reads them (`labelled`: a
    decoder's `reply_labels`, an encoder-decoder's `source_and_targets`), and the prompts alone [B, P] left-padded
    for generation (`prompt_ids`, `prompt_mask`)."""
    batch = labelled(make_batch(rows, indices, batch_size, pad_id, max_length))
    starts = rows.extras["reply_start"]
    prompts = Encoded(tuple(rows.ids[i][: starts[i]] for i in indices), np.zeros(len(indices), np.int32), 0)
    left = make_batch(prompts, list(range(len(indices))), batch_size, pad_id, max_length, left_pad=True)
    return {**batch, "prompt_ids": left["input_ids"], "prompt_mask": left["attention_mask"]}


@dataclasses.dataclass
class TextToText(Objective):
    """`encoded[split]`: a `PairSplit`; the rows without the start they share (`shared`)."""

    tokenizer: Any = None
    label_smoothing: float = 0.0
    max_target_length: int = 64
    shared: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int32))  # [S]
    ends: tuple[int, ...] = ()  # the tokens that end an output
    encoder_decoder: bool = False  # the model reads the prompt with an encoder (`EncoderDecoder`)
    _outputs: dict = dataclasses.field(default_factory=dict, init=False, repr=False)  # split -> its last outputs

    def __post_init__(self) -> None:
        self.metrics = SEQ2SEQ_METRICS
        self.evaluate_before = True  # the untrained model's outputs: what the training adds

    @functools.cached_property
    def reply_width(self) -> int:
        """The most target tokens (with the end token) of any row."""
        return max(len(ids) - start for part in self.encoded.values()
                   for ids, start in zip(part.rows.ids, part.rows.extras["reply_start"]))

    def labelled(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A batch of rows with what the loss reads: a decoder's token labels, an encoder-decoder's prompts and
        targets apart."""
        if self.encoder_decoder:
            return source_and_targets(batch, self.reply_width, self.pad_id)
        return reply_labels(batch)

    def target_logits(self, model, batch, dropout_key=None):
        """(logits [B, R, V] predicting each target token, its id [B, R], whether it is one [B, R]) under teacher
        forcing, R = `reply_width`."""
        if not self.encoder_decoder:
            return reply_logits(model, batch, self.reply_width, self.shared, dropout_key)
        labels = batch["labels"]
        logits = model.target_logits(batch["input_ids"], batch["attention_mask"], labels, dropout_key=dropout_key)
        return logits, jnp.where(labels != -100, labels, 0), labels != -100

    def loss(self, model, batch, dropout_key):
        logits, targets, scored = self.target_logits(model, batch, dropout_key)
        loss, accuracy = smoothed_cross_entropy(logits, targets, scored, self.label_smoothing)
        return loss, {"accuracy": accuracy}

    def outputs(self, model, batch):
        """(summed target-token loss [B], target tokens [B], of them predicted right [B], the greedy outputs
        [B, max_target_length + 1]) of a `pair_batch`."""
        logits, targets, scored = self.target_logits(model, batch)
        log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        nll = -jnp.take_along_axis(log_p, targets[..., None], axis=-1)[..., 0]
        right = (jnp.argmax(logits, -1) == targets) & scored
        if self.encoder_decoder:
            generated = model.generate_targets(batch["input_ids"], batch["attention_mask"],
                                               max_new_tokens=self.max_target_length + 1, eos=self.ends,
                                               pad=self.pad_id)
        else:
            generated = decode(model, jnp.asarray(self.shared)[None], batch["prompt_ids"], batch["prompt_mask"],
                               jax.random.key(0), max_new_tokens=self.max_target_length + 1, eos=self.ends,
                               pad=self.pad_id)
        return jnp.where(scored, nll, 0.0).sum(-1), scored.sum(-1), right.sum(-1), generated

    def train_batches(self, batch_size, seed, position=None, share=(0, 1)):
        position = position or {"epoch": 0, "index": 0}
        return MappedBatches(BatchIterator(self.encoded["train"].rows, batch_size, self.pad_id, self.max_length,
                                           seed=seed, epoch=position["epoch"], index=position["index"], share=share),
                             lambda batch, _: self.labelled(batch))

    def evaluation_batches(self, encoded: Encoded, batch_size: int) -> list[dict]:
        key = (id(encoded), batch_size)  # built once: a split is evaluated every eval_steps
        if key not in self._padded:
            order = np.argsort([len(ids) for ids in encoded.ids], kind="stable")
            self._padded[key] = [pair_batch(encoded, order[i: i + batch_size].tolist(), batch_size, self.pad_id,
                                            self.max_length, self.labelled) for i in range(0, len(order), batch_size)]
        return self._padded[key]

    def generate(self, forward, part: PairSplit, batch_size: int) -> tuple[list[str], np.ndarray]:
        """(each pair's generated output, per pair [3]: summed target loss, target tokens, right tokens)."""
        outputs, sums = [""] * len(part), np.zeros((len(part), 3))
        for batch in self.evaluation_batches(part.rows, batch_size):
            loss, count, right, tokens = forward(batch)
            for row in np.flatnonzero(batch["weights"] > 0):
                index = int(batch["example"][row])
                outputs[index] = output_text(self.tokenizer, np.asarray(tokens[row]), self.ends)
                sums[index] = float(loss[row]), float(count[row]), float(right[row])
        return outputs, sums

    def evaluate(self, forward, split, batch_size):
        part = self.encoded[split]
        outputs, sums = self.generate(forward, part, batch_size)
        self._outputs[split] = outputs
        return scores(part, outputs, sums)

    def report(self, forward, batch_size, model, test):
        """A few test inputs with their targets and the trained model's outputs."""
        part = self.encoded["test"]
        outputs = self._outputs.get("test") or self.generate(forward, part, batch_size)[0]
        shown = [{"input": part.dataset.inputs[i], "target": part.dataset.targets[i], "output": outputs[i]}
                 for i in range(min(EXAMPLES_SHOWN, len(part)))]
        return {"examples": shown}

    def title(self) -> str:
        return f"{super().title()} (seq2seq)"


def scores(part: PairSplit, outputs: list[str], sums: np.ndarray) -> dict[str, Any]:
    """Loss and token accuracy under teacher forcing, and the text metrics of `outputs` against the targets; with
    several tasks, each task's (`tasks`) and their mean."""

    def of(members: np.ndarray) -> dict[str, float]:
        loss, count, right = sums[members].sum(0)
        return {"loss": float(loss / max(count, 1.0)), "accuracy": float(right / max(count, 1.0)),
                **text_metrics([outputs[i] for i in members], [part.dataset.targets[i] for i in members])}

    if len(part.task_names) == 1:
        return of(np.arange(len(part)))
    task = part.rows.extras["task"]
    tasks = {name: of(np.flatnonzero(task == number)) for number, name in enumerate(part.task_names)}
    # the mean over tasks, as a multi-task classifier reports it: a large task does not hide a small one
    return {**{key: float(np.mean([m[key] for m in tasks.values()])) for key in SEQ2SEQ_METRICS}, "tasks": tasks}


def pair_splits(data: DataConfig, seed: int) -> dict[str, PairDataset]:
    """Train / validation / test of the pairs of `data` (a source's own fixed splits where it has them), cut to the
    example budgets."""
    dataset = load_pairs(data.source, text_column=data.text_column, target_column=data.target_column)
    return split_budgets(split_dataset(dataset, validation=data.validation, test=data.test, seed=seed), data)


def describe_pair_splits(splits: dict[str, PairDataset]) -> str:
    """A table: per split, its pairs and their mean input and target lengths in characters."""
    names = list(splits)
    rows = [["", *names], ["pairs", *(f"{len(splits[n]):,}" for n in names)]]
    for what in ("inputs", "targets"):
        rows.append([f"{what[:-1]} characters (mean)",
                     *(f"{np.mean([len(t) for t in getattr(splits[n], what)]):.0f}" for n in names)])
    dropped = getattr(splits, "dropped", {})
    rows.append(["duplicates dropped", *(f"{dropped.get(n, 0):,}" for n in names)])
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths)))
                     for row in rows)


def prompt_form(data: DataConfig) -> PromptForm:
    return PromptForm(data.prompt_form, data.text_prefix, data.separator)


def source_forms(forms: list[PromptForm], model_name: str) -> list[PromptForm]:
    """The prompt forms of an encoder-decoder: each task's plain form read as an encoder's input; the chat form
    and a separator, which only a decoder's prompt has, are refused in one line."""
    if any(form.form == "chat" for form in forms):
        raise ConfigKeyError(f"{model_name} is an encoder-decoder: its encoder reads the input as plain text (it has "
                             "no chat template); set data.prompt_form: plain")
    if any(form.separator != DataConfig.separator for form in forms):
        raise ConfigKeyError(f"{model_name} is an encoder-decoder: its encoder reads the input alone and its decoder "
                             "writes the output apart, so there is no separator between them; leave data.separator out")
    return [dataclasses.replace(form, separator="", source=True) for form in forms]


def task_splits(config: RunConfig) -> tuple[tuple[str, ...], list[PromptForm], dict[str, PairDataset],
                                             dict[str, np.ndarray]]:
    """(task names, each task's prompt form, the splits of every task's pairs together, the task of each pair per
    split) of a multi-task run (`tasks`: name, source and data.* keys such as text_prefix, text_column,
    target_column, max_train_examples), or of the single task of `data`."""
    if config.tasks is None:
        return ("",), [prompt_form(config.data)], pair_splits(config.data, config.training.seed), {}
    tasks = parse_tasks(config.tasks, config.data)
    if any(kind != "sequence-classification" for _, kind, _ in tasks):  # parse_tasks' default: no kind was given
        raise ConfigKeyError("the tasks of a seq2seq run are all text to text: leave out their task key")
    if len({data.text_prefix for _, _, data in tasks}) < len(tasks):
        raise ConfigKeyError("each task of a seq2seq run needs its own text_prefix (e.g. \"translate English to "
                             "Portuguese: \"): the prefix is how the model tells the tasks apart")
    parts = [pair_splits(data, config.training.seed) for _, _, data in tasks]
    joined, members = {}, {}
    for split in ("train", "validation", "test"):
        pieces = [part[split] for part in parts]
        joined[split] = PairDataset(split, tuple(x for p in pieces for x in p.inputs),
                                    tuple(x for p in pieces for x in p.targets))
        members[split] = np.concatenate([np.full(len(p), n, np.int32) for n, p in enumerate(pieces)])
    return tuple(name for name, _, _ in tasks), [prompt_form(data) for _, _, data in tasks], joined, members


def prepare_seq2seq(config: RunConfig, model_dir, tokenizer) -> Setup:
    """The objective of `task: seq2seq`: pairs read and split, encoded in the config's prompt form (with `tasks`:
    every task's pairs in one run, each input with its task's prefix); an encoder-decoder's prompt is its
    encoder's input (`source_forms`), at most `data.max_length` tokens."""
    data = config.data
    names, forms, splits, members = task_splits(config)
    adaptation, info = build(config, model_dir, tokenizer, ())
    encoder_decoder = is_encoder_decoder(adaptation.model)
    if encoder_decoder:
        forms = source_forms(forms, config.model)
    record = {"prompt_form": data.prompt_form, "separator": "" if encoder_decoder else data.separator,
              "max_target_length": data.max_target_length}
    if config.tasks is not None:
        record["tasks"] = {name: form.prefix for name, form in zip(names, forms)}
    info = dataclasses.replace(info, seq2seq=record)
    if not adaptation.count(FINAL_STEP)[0]:
        raise ConfigKeyError(f"method {config.methods()[0]['name']} trains nothing of {config.model} as text to text "
                             "(it trains a task head; a text-to-text model writes with its language-model head): choose "
                             "lora, prefix, prompt, an adapter, bitfit, partial or full")
    source_length = info.max_length if encoder_decoder else None
    encoded = {name: encode_pairs(part, tokenizer, forms, info.max_length, data.max_target_length, members.get(name),
                                  source_length) for name, part in splits.items()}
    # an encoder-decoder's rows hold a whole prompt and a whole target
    row_length = info.max_length + data.max_target_length + 1 if encoder_decoder else info.max_length
    objective = text_to_text(config, adaptation, tokenizer, splits, encoded, row_length, names)
    report = describe_pair_splits(splits)
    if len(names) > 1:
        report += "\n" + "; ".join(f"task {name}: " + ", ".join(f"{int((members[s] == n).sum()):,} {s}"
                                                              for s in ("train", "validation", "test"))
                                   for n, name in enumerate(names))
    return Setup(objective, info, report)


def text_to_text(config: RunConfig, adaptation, tokenizer, splits: dict[str, PairDataset], encoded: dict[str, Encoded],
                 max_length: int, task_names: tuple[str, ...] = ("",)) -> TextToText:
    """The objective over encoded splits (rows of at most `max_length` tokens), a decoder's shared start taken out
    (an encoder reads each prompt whole, both ways)."""
    for name, rows in encoded.items():
        if not len(rows):
            raise DataError(f"the {name} split has no pairs")
    encoder_decoder = is_encoder_decoder(adaptation.model)
    shared, rest = (np.zeros(0, np.int32), encoded) if encoder_decoder else split_shared_start(encoded)
    parts = {name: PairSplit(splits[name], rest[name], task_names) for name in encoded}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ends = tuple(dict.fromkeys([end_token(tokenizer), *adaptation.model.config.eos_token_ids]))
    return TextToText(adaptation, parts, pad_id, max_length, tokenizer=tokenizer,
                      label_smoothing=config.training.label_smoothing,
                      max_target_length=config.data.max_target_length, shared=shared, ends=ends,
                      encoder_decoder=encoder_decoder)


def is_encoder_decoder(model) -> bool:
    """Whether `model` reads the prompt with an encoder and writes the output with a decoder (`EncoderDecoder`)."""
    return bool(getattr(model, "is_encoder_decoder", False))


__all__ = ["EncoderDecoder", "PairSplit", "TextToText", "encode_pairs", "is_encoder_decoder", "pair_splits",
           "prepare_seq2seq", "scores", "source_and_targets", "source_forms"]
