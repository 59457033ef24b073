"""`python -m tljax.predict RUN_DIR "some text" ...`: the label and probabilities of each text.

RUN_DIR is a finished classification run (`python -m tljax.train`) or its export directory. One line per
text: the label, every label's probability, the text. Put `--` before the texts when one starts with `-`.

In Python: `Predictor.load(RUN_DIR)(["some text"])`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np

from tljax.cache import enable_compilation_cache
from tljax.data.batches import encode, evaluation_batches
from tljax.errors import InputError
from tljax.models.transforms import jit_bound
from tljax.runs import RunInfo, find_export, load_exported


class Predictor:
    """A trained run's export, ready to classify texts."""

    def __init__(self, model, tokenizer, info: RunInfo):
        self.tokenizer, self.info = tokenizer, info
        self.labels = list(info.labels)
        self.probabilities = jit_bound(model, lambda m, ids, mask: jax.nn.softmax(m(ids, mask), -1))

    @classmethod
    def load(cls, run_dir: str | Path) -> Predictor:
        """The classifier of a finished run (its directory, or its export directory)."""
        directory = find_export(run_dir)
        model, tokenizer, info = load_exported(directory)
        if info.task != "sequence-classification":
            raise InputError(f"{run_dir} is a {info.task} run (continued pre-training), not a classifier; "
                             f"fine-tune from it: python -m tljax.train --set model={directory}/model")
        return cls(model, tokenizer, info)

    def __call__(self, texts: list[str], batch_size: int = 32) -> list[tuple[str, dict[str, float]]]:
        """(label, {label: probability}) for each text."""
        check_texts_to_classify(texts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        encoded = encode(texts, [0] * len(texts), self.tokenizer, self.info.max_length, self.info.text_prefix)
        order = np.argsort([len(x) for x in encoded.ids], kind="stable")
        probabilities = np.zeros((len(texts), len(self.labels)))
        for start, batch in zip(range(0, len(texts), batch_size),
                                evaluation_batches(encoded, batch_size, pad, self.info.max_length)):
            rows = order[start: start + batch_size]
            p = self.probabilities(batch["input_ids"], batch["attention_mask"])
            probabilities[rows] = np.asarray(p)[: len(rows)]
        return [(self.labels[int(p.argmax())], dict(zip(self.labels, map(float, p)))) for p in probabilities]


def check_texts_to_classify(texts: list[str]) -> None:
    """Refuses empty or blank texts, as training does (`check_texts`): the model would answer from nothing."""
    empty = [number for number, text in enumerate(texts, 1) if not isinstance(text, str) or not text.strip()]
    if empty:
        if len(texts) == 1:
            which = "the text is"
        elif len(empty) == 1:
            which = f"text {empty[0]} of {len(texts)} is"
        else:
            which = f"texts {', '.join(map(str, empty))} of {len(texts)} are"
        raise InputError(f"{which} empty or blank; give each TEXT some words to classify, e.g. "
                         'python -m tljax.predict RUN_DIR "a fine film"')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tljax.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a finished classification run or its export directory")
    parser.add_argument("texts", nargs="+", metavar="TEXT", help="a text to classify (one or more)")
    args = parser.parse_args(argv)
    enable_compilation_cache()
    try:
        check_texts_to_classify(args.texts)  # before the model is loaded: that takes a while
        predictor = Predictor.load(args.run_dir)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for text, (label, probabilities) in zip(args.texts, predictor(args.texts)):
        shown = "  ".join(f"{name} {p:.3f}" for name, p in probabilities.items())
        print(f"{label}\t({shown})\t{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
