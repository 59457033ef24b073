"""`python -m tljax.methods MODEL [--task TASK]`: what each method trains on a model (count and %).

MODEL is a packaged name, a Hugging Face id in the local cache, or a model directory. Only its
config.json is read: the models are built abstractly, without computing any weight.
"""

from __future__ import annotations

import argparse
import sys

from flax import nnx

from tljax import zoo
from tljax.errors import InputError
from tljax.methods import METHODS, Adaptation, adapt, make_method
from tljax.methods.rules import parameter_sizes
from tljax.models import model_class, read_config_dict


def _class_and_config(directory, task: str, num_labels: int):
    raw = read_config_dict(directory)
    cls = model_class(raw.get("model_type", ""), task)
    config = cls.config_class.from_hf(raw)
    if task == "sequence-classification":
        config = config.replace(id2label={i: f"LABEL_{i}" for i in range(num_labels)})
    return cls, config


def describe_method(directory, name: str, task: str = "sequence-classification", num_labels: int = 2) -> str:
    """The rule report of one method (at its defaults) on a model."""
    cls, config = _class_and_config(directory, task, num_labels)
    method = make_method(name)
    model = nnx.eval_shape(lambda: adapt(cls.from_config(config), [method]).model)
    return Adaptation(model, (method,)).describe()


def trainable_table(directory, task: str = "sequence-classification", num_labels: int = 2) -> list[tuple[str, int, float]]:
    """(method, trainable parameters, % of the model's parameters) for every method at its defaults."""
    cls, config = _class_and_config(directory, task, num_labels)
    base = sum(parameter_sizes(nnx.eval_shape(lambda: cls.from_config(config))).values())
    rows = []
    for name in METHODS:
        method = make_method(name)
        model = nnx.eval_shape(lambda: adapt(cls.from_config(config), [method]).model)
        trainable, _ = Adaptation(model, (method,)).count()
        rows.append((name, trainable, 100.0 * trainable / base))
    return rows


NOTES = {
    "partial": "embeddings frozen (set freeze_layers to freeze the bottom layers too)",
    "gradual-unfreezing": "at step 0; one more layer from the top every `every` steps",
    "bitfit": "models without biases (Llama) get zero-initialised ones",
    "prefix": "the key/value table itself (projection_size adds an MLP, dropped at export)",
    "p-tuning": "includes the prompt encoder, dropped at export",
}


def format_table(rows: list[tuple[str, int, float]], model: str) -> str:
    """A Markdown table; every count includes the new classification head."""
    lines = [f"| method ({model}) | trainable parameters | % of the model | note |", "|---|---:|---:|---|"]
    lines += [f"| {name} | {count:,} | {percent:.3f}% | {NOTES.get(name, '')} |" for name, count, percent in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tljax.methods", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--task", default="sequence-classification")
    parser.add_argument("--num-labels", type=int, default=2)
    parser.add_argument("--method", help="show which rule decides which parameters for this method")
    args = parser.parse_args(argv)
    try:
        if args.method:
            print(describe_method(zoo.resolve(args.model), args.method, args.task, args.num_labels))
            return 0
        rows = trainable_table(zoo.resolve(args.model), args.task, args.num_labels)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(format_table(rows, args.model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
