"""`python -m tljax.predict RUN_DIR "some text" ...`: the label and probabilities of each text.

In Python: `Predictor.load(RUN_DIR)(["some text"])`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tljax.data.batches import encode, evaluation_batches


class Predictor:
    """A trained run's export, ready to classify texts."""

    def __init__(self, model, tokenizer, info: dict):
        self.tokenizer, self.info = tokenizer, info
        self.labels = list(info["labels"])
        graphdef, state = nnx.split(model)
        self._probabilities = jax.jit(lambda s, ids, mask: jax.nn.softmax(nnx.merge(graphdef, s)(ids, mask), -1))
        self._state = state

    @classmethod
    def load(cls, run_dir: str | Path) -> Predictor:
        from tljax.train.run import load_exported

        run_dir = Path(run_dir)
        directory = run_dir / "export" if (run_dir / "export").is_dir() else run_dir
        model, tokenizer, info = load_exported(directory)
        if info.get("task", "sequence-classification") != "sequence-classification":
            raise ValueError(f"{run_dir} is a {info['task']} run (continued pre-training), not a classifier; "
                             f"fine-tune from it: python -m tljax.train --set model={directory}/model")
        return cls(model, tokenizer, info)

    def __call__(self, texts: list[str], batch_size: int = 32) -> list[tuple[str, dict[str, float]]]:
        """(label, {label: probability}) for each text."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        encoded = encode(texts, [0] * len(texts), self.tokenizer, self.info["max_length"], self.info["text_prefix"])
        order = np.argsort([len(x) for x in encoded.ids], kind="stable")
        probabilities = np.zeros((len(texts), len(self.labels)))
        for start, batch in zip(range(0, len(texts), batch_size),
                                evaluation_batches(encoded, batch_size, pad, self.info["max_length"])):
            rows = order[start: start + batch_size]
            p = self._probabilities(self._state, jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]))
            probabilities[rows] = np.asarray(p)[: len(rows)]
        return [(self.labels[int(p.argmax())], dict(zip(self.labels, map(float, p)))) for p in probabilities]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        print('usage: python -m tljax.predict RUN_DIR "text" ["text" ...]', file=sys.stderr)
        return 2
    try:
        predictor = Predictor.load(argv[0])
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for text, (label, probabilities) in zip(argv[1:], predictor(argv[1:])):
        shown = "  ".join(f"{name} {p:.3f}" for name, p in probabilities.items())
        print(f"{label}\t({shown})\t{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
