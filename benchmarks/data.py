"""The batches both sides train on, written once per benchmark run: `python -m benchmarks.data DIR`.

* `default.npz`: batches of the default run (`python -m tljax.train`): its data, split, tokenizer, length
  limit, batch size and seed, through tljax's own batching (length buckets). `BATCHES` of them, evenly spaced
  over the first epoch, so that their shapes are the epoch's mix.
* `32x128.npz`: one batch of 32 full sequences of 128 tokens (random ids, fixed seed).

Uses tljax's data code only (no JAX), the same as the Hugging Face reference script.
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import DECODER, offline_environment, run_config

BATCHES = 10


def _save(path: Path, batches: list[dict[str, np.ndarray]]) -> None:
    arrays = {f"{i}/{key}": value for i, batch in enumerate(batches) for key, value in batch.items()}
    np.savez(path, count=len(batches), **arrays)


def default_batches(count: int = BATCHES) -> list[dict[str, np.ndarray]]:
    """`count` batches of the default run's first epoch, evenly spaced."""
    from transformers import AutoTokenizer

    from tljax import zoo
    from tljax.data import load_source, split_dataset
    from tljax.data.batches import BatchIterator, encode

    config = run_config("lora")
    data, training = config.data, config.training
    tokenizer = AutoTokenizer.from_pretrained(zoo.resolve(config.model))
    dataset = load_source(data.source, text_column=data.text_column, label_column=data.label_column, labels=data.labels)
    train = split_dataset(dataset, validation=data.validation, test=data.test, seed=training.seed)["train"]
    encoded = encode(train.texts, train.labels, tokenizer, data.max_length, data.text_prefix)
    iterator = BatchIterator(encoded, training.per_device_train_batch_size, tokenizer.pad_token_id, data.max_length,
                             seed=training.seed)
    epoch = [next(iterator) for _ in range(iterator.batches_per_epoch)]
    every = max(1, len(epoch) // count)
    return epoch[::every][:count]


def long_batch(batch_size: int = 32, length: int = 128, vocab: int = 30522, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, vocab, (batch_size, length), dtype=np.int32)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": rng.integers(0, 2, batch_size, dtype=np.int32),
            "weights": np.ones(batch_size, np.float32)}


def test_texts() -> list[str]:
    """The default run's test split: the reviews both sides' `predict` classifies."""
    from tljax.data import load_source, split_dataset

    config = run_config("lora")
    data = config.data
    dataset = load_source(data.source, text_column=data.text_column, label_column=data.label_column, labels=data.labels)
    return list(split_dataset(dataset, validation=data.validation, test=data.test, seed=config.training.seed)["test"].texts)


def scoring_requests(items: int) -> tuple[list[str], list[str]]:
    """(each item's zero-shot chat prompt, the answers) of the harness's sentiment-en task, a fixed sample:
    the log-likelihood requests of the harness's zero-shot path (built with the harness, so with JAX)."""
    from transformers import AutoTokenizer

    from harness.suite import sample
    from harness.tasks import load_task
    from harness.variants import Variant, decoder_prompts
    from tljax import zoo

    task = load_task("sentiment-en")
    tokenizer = AutoTokenizer.from_pretrained(zoo.resolve(DECODER))
    contexts, _ = decoder_prompts(Variant(kind="zero-shot", model=DECODER), task, sample(task.items, items), tokenizer,
                                  seed=0)
    return list(contexts), list(task.template().verbalisers)


def prepare(directory: Path, count: int = BATCHES, items: int = 64) -> dict[str, int]:
    """Writes every input file into `directory`; returns the default batches' widths and how many of each."""
    directory.mkdir(parents=True, exist_ok=True)
    batches = default_batches(count)
    _save(directory / "default.npz", batches)
    _save(directory / "32x128.npz", [long_batch()])
    (directory / "test-texts.json").write_text(json.dumps(test_texts()))
    (directory / "scoring.json").write_text(json.dumps(scoring_requests(items)))
    return dict(sorted(collections.Counter(b["input_ids"].shape[1] for b in batches).items()))


if __name__ == "__main__":
    offline_environment()
    print(json.dumps(prepare(Path(sys.argv[1]), *map(int, sys.argv[2:]))))
