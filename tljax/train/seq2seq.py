"""Sequence to sequence (`task: seq2seq`): input text -> output text, e.g. translation, on a decoder.

Each example is one row: the prompt (`tljax.data.prompts`: the input in the plain form, prefix + input +
separator, or in the model's chat form) followed by the target's tokens and the end token. Training is teacher
forcing with the causal-LM loss on the target's tokens only (the prompt's tokens are read, never scored), its
logits computed at those positions only (`chat.reply_logits`), optionally label-smoothed
(`training.label_smoothing`). The tokens every prompt starts with (a chat template's system prompt, a task
prefix) are kept once and run once per batch, as chat tuning does.

Evaluation scores the loss and token accuracy of the target under teacher forcing, and generates each output
greedily from the prompt (`tljax.models.decoder.generate.decode`, up to `data.max_target_length` tokens and the
end token) inside the same compiled call, scored against the target text by `tljax.text_metrics`: chrF, BLEU,
ROUGE-1/2/L and exact match, any of which `training.metric_for_best_model` may name. With several `tasks`, each
input carries its task's prefix and every metric is also reported per task.

What a model offers this objective (`TextToText`): a decoder's `logits_at` (teacher forcing at chosen positions,
after a shared start) and what `generate.decode` asks (`logits` and the backbone's cached call). An
encoder-decoder (T5) reads the prompt with its encoder and the target with its decoder; it is to plug in by
offering `is_encoder_decoder = True`, `target_logits` and `generate_targets` (`EncoderDecoder` below), the objective
then encoding the prompt alone (no separator) and the target apart. Until that branch exists, `prepare_seq2seq`
refuses a model that says it is an encoder-decoder.
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
                 max_target_length: int, tasks: np.ndarray | None = None) -> Encoded:
    """Rows [prompt ids, target ids, end token] of every pair, at most `max_length` tokens: the target cut to
    `max_target_length`, the input cut to what is left (both counted and logged). `form`: one for every pair, or
    one per task with `tasks` [N] the task of each pair. Extras: reply_start, example, task."""
    tasks = np.zeros(len(dataset), np.int32) if tasks is None else np.asarray(tasks, np.int32)
    forms = form if isinstance(form, list) else [form]
    budget = max_length - max_target_length - 1
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


def pair_batch(rows: Encoded, indices: list[int], batch_size: int, pad_id: int, max_length: int) -> dict:
    """An evaluation batch of `rows`: the whole rows [B, W] right-padded with their target labels (`reply_labels`),
    and the prompts alone [B, P] left-padded for generation (`prompt_ids`, `prompt_mask`)."""
    batch = reply_labels(make_batch(rows, indices, batch_size, pad_id, max_length))
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
    _outputs: dict = dataclasses.field(default_factory=dict, init=False, repr=False)  # split -> its last outputs

    def __post_init__(self) -> None:
        self.metrics = SEQ2SEQ_METRICS
        self.evaluate_before = True  # the untrained model's outputs: what the training adds

    @functools.cached_property
    def reply_width(self) -> int:
        """The most target tokens (with the end token) of any row."""
        return max(len(ids) - start for part in self.encoded.values()
                   for ids, start in zip(part.rows.ids, part.rows.extras["reply_start"]))

    def loss(self, model, batch, dropout_key):
        logits, targets, scored = reply_logits(model, batch, self.reply_width, self.shared, dropout_key)
        loss, accuracy = smoothed_cross_entropy(logits, targets, scored, self.label_smoothing)
        return loss, {"accuracy": accuracy}

    def outputs(self, model, batch):
        """(summed target-token loss [B], target tokens [B], of them predicted right [B], the greedy outputs
        [B, max_target_length + 1]) of a `pair_batch`."""
        logits, targets, scored = reply_logits(model, batch, self.reply_width, self.shared)
        log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        nll = -jnp.take_along_axis(log_p, targets[..., None], axis=-1)[..., 0]
        right = (jnp.argmax(logits, -1) == targets) & scored
        generated = decode(model, jnp.asarray(self.shared)[None], batch["prompt_ids"], batch["prompt_mask"],
                           jax.random.key(0), max_new_tokens=self.max_target_length + 1, eos=self.ends,
                           pad=self.pad_id)
        return jnp.where(scored, nll, 0.0).sum(-1), scored.sum(-1), right.sum(-1), generated

    def train_batches(self, batch_size, seed, position=None, share=(0, 1)):
        position = position or {"epoch": 0, "index": 0}
        return MappedBatches(BatchIterator(self.encoded["train"].rows, batch_size, self.pad_id, self.max_length,
                                           seed=seed, epoch=position["epoch"], index=position["index"], share=share),
                             lambda batch, _: reply_labels(batch))

    def evaluation_batches(self, encoded: Encoded, batch_size: int) -> list[dict]:
        key = (id(encoded), batch_size)  # built once: a split is evaluated every eval_steps
        if key not in self._padded:
            order = np.argsort([len(ids) for ids in encoded.ids], kind="stable")
            self._padded[key] = [pair_batch(encoded, order[i: i + batch_size].tolist(), batch_size, self.pad_id,
                                            self.max_length) for i in range(0, len(order), batch_size)]
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
    every task's pairs in one run, each input with its task's prefix)."""
    data = config.data
    names, forms, splits, members = task_splits(config)
    record = {"prompt_form": data.prompt_form, "separator": data.separator,
              "max_target_length": data.max_target_length}
    if config.tasks is not None:
        record["tasks"] = {name: form.prefix for name, form in zip(names, forms)}
    adaptation, info = build(config, model_dir, tokenizer, ())
    info = dataclasses.replace(info, seq2seq=record)
    if getattr(adaptation.model, "is_encoder_decoder", False):
        raise ConfigKeyError(f"{config.model} is an encoder-decoder; task: seq2seq trains decoders (Llama, Qwen2, "
                             "GPT-2) for now")
    if not adaptation.count(FINAL_STEP)[0]:
        raise ConfigKeyError(f"method {config.methods()[0]['name']} trains nothing of {config.model} as text to text "
                             "(it trains a task head; a decoder writes with its language-model head): choose lora, "
                             "prefix, prompt, an adapter, bitfit, partial or full")
    encoded = {name: encode_pairs(part, tokenizer, forms, info.max_length, data.max_target_length, members.get(name))
               for name, part in splits.items()}
    objective = text_to_text(config, adaptation, tokenizer, splits, encoded, info.max_length, names)
    report = describe_pair_splits(splits)
    if len(names) > 1:
        report += "\n" + "; ".join(f"task {name}: " + ", ".join(f"{int((members[s] == n).sum()):,} {s}"
                                                              for s in ("train", "validation", "test"))
                                   for n, name in enumerate(names))
    return Setup(objective, info, report)


def text_to_text(config: RunConfig, adaptation, tokenizer, splits: dict[str, PairDataset], encoded: dict[str, Encoded],
                 max_length: int, task_names: tuple[str, ...] = ("",)) -> TextToText:
    """The objective over encoded splits, their shared start taken out."""
    for name, rows in encoded.items():
        if not len(rows):
            raise DataError(f"the {name} split has no pairs")
    shared, rest = split_shared_start(encoded)
    parts = {name: PairSplit(splits[name], rest[name], task_names) for name in encoded}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ends = tuple(dict.fromkeys([end_token(tokenizer), *adaptation.model.config.eos_token_ids]))
    return TextToText(adaptation, parts, pad_id, max_length, tokenizer=tokenizer,
                      label_smoothing=config.training.label_smoothing,
                      max_target_length=config.data.max_target_length, shared=shared, ends=ends)


__all__ = ["EncoderDecoder", "PairSplit", "TextToText", "encode_pairs", "pair_splits", "prepare_seq2seq", "scores"]
