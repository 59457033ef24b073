"""The default run written the Hugging Face way: `Trainer` + PEFT, reading the same run config as tljax.

    python -m benchmarks.hf_trainer --output-dir DIR [--config configs/X.yaml] [--set key=value ...]

The time-to-accuracy reference of `python -m benchmarks`. Everything the job is comes from the tljax run
config (`tljax.train.config.load_config`, the embedded default without `--config`): the model, the data
source and its train / validation / test split (tljax's own split code, so the same reviews), the length
limit, the method and its options (`benchmarks.torch_side.classifier`), learning rate, weight decay,
warm-up ratio, schedule, gradient clipping, epochs, batch sizes, evaluation (and checkpoint) every
`eval_steps`, the metric for the best model, early-stopping patience, the seed. Written as a Hugging Face
user writes it (dynamic padding, `load_best_model_at_end`); never tuned on its own. Writes `summary.json`
(test metrics of the best checkpoint, steps, training seconds) into DIR.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.common import offline_environment, threads

offline_environment()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from tljax import zoo  # noqa: E402
from tljax.data import load_source, split_dataset  # noqa: E402
from tljax.metrics import classification_metrics  # noqa: E402
from tljax.train.config import load_config  # noqa: E402


class _Texts(torch.utils.data.Dataset):
    def __init__(self, encodings: dict[str, list], labels):
        self.encodings, self.labels = encodings, list(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, object]:
        return {**{k: v[i] for k, v in self.encodings.items()}, "labels": int(self.labels[i])}


def main(argv: list[str] | None = None) -> int:
    from benchmarks.torch_side import classifier

    parser = argparse.ArgumentParser(prog="python -m benchmarks.hf_trainer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    torch.set_num_threads(threads())
    transformers.logging.set_verbosity_error()

    config = load_config(args.config, args.overrides)
    data, tc = config.data, config.training
    if config.task != "sequence-classification" or config.tasks or config.distillation or config.chat:
        raise SystemExit("the Trainer reference covers single-task sequence classification runs")
    dataset = load_source(data.source, text_column=data.text_column, label_column=data.label_column, labels=data.labels)
    splits = split_dataset(dataset, validation=data.validation, test=data.test, seed=tc.seed)
    limits = {"train": data.max_train_examples, "validation": data.max_eval_examples, "test": data.max_eval_examples}
    for name, limit in limits.items():  # the example budgets, applied as tljax applies them
        if limit is not None and limit < len(splits[name]):
            splits[name] = splits[name].subset(range(limit))
    tokenizer = transformers.AutoTokenizer.from_pretrained(zoo.resolve(config.model))
    sets = {name: _Texts(tokenizer([data.text_prefix + t for t in split.texts], truncation=True,
                                   max_length=data.max_length), split.labels)
            for name, split in splits.items()}
    transformers.set_seed(tc.seed)
    model, _ = classifier(config, num_labels=len(dataset.label_names))
    num_labels = len(dataset.label_names)

    def metrics(prediction: transformers.EvalPrediction) -> dict[str, float]:
        found = classification_metrics(prediction.label_ids, np.argmax(prediction.predictions, -1), num_labels)
        return {k: float(v) for k, v in found.items() if np.ndim(v) == 0}

    output = Path(args.output_dir)
    steps_per_epoch = -(-len(sets["train"]) // tc.per_device_train_batch_size)
    total = tc.max_steps or int(np.ceil(tc.num_train_epochs * steps_per_epoch / tc.gradient_accumulation_steps))
    arguments = transformers.TrainingArguments(
        output_dir=str(output / "trainer"), per_device_train_batch_size=tc.per_device_train_batch_size,
        per_device_eval_batch_size=tc.per_device_eval_batch_size, learning_rate=tc.learning_rate,
        weight_decay=tc.weight_decay, warmup_steps=round(tc.warmup_ratio * total), lr_scheduler_type=tc.lr_scheduler_type,
        max_grad_norm=tc.max_grad_norm, num_train_epochs=tc.num_train_epochs, max_steps=tc.max_steps or -1,
        gradient_accumulation_steps=tc.gradient_accumulation_steps, eval_strategy="steps", eval_steps=tc.eval_steps,
        save_strategy="steps", save_steps=tc.eval_steps, save_total_limit=2, load_best_model_at_end=True,
        metric_for_best_model=tc.metric_for_best_model, greater_is_better=tc.metric_for_best_model != "loss",
        logging_steps=tc.logging_steps, seed=tc.seed, report_to=[], use_cpu=True, disable_tqdm=True)
    callbacks = [transformers.EarlyStoppingCallback(tc.early_stopping_patience)] if tc.early_stopping_patience else []
    trainer = transformers.Trainer(model=model, args=arguments, train_dataset=sets["train"],
                                   eval_dataset=sets["validation"], compute_metrics=metrics, callbacks=callbacks,
                                   data_collator=transformers.DataCollatorWithPadding(tokenizer))
    started = time.perf_counter()
    state = trainer.train()
    seconds = time.perf_counter() - started
    test = trainer.evaluate(sets["test"], metric_key_prefix="test")
    summary = {"test": {k.removeprefix("test_"): v for k, v in test.items()}, "steps": state.global_step,
               "training_seconds": round(seconds, 1)}
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["test"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
