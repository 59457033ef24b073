"""`python -m tljax.methods MODEL [--task TASK]`: what each method trains on a model (count and %).

MODEL is a packaged name, a Hugging Face id in the local cache, or a model directory. Only its
config.json is read: the models are built abstractly, without computing any weight. The task defaults to
sequence classification (a new head of --num-labels outputs), or to seq2seq for a family that only writes text
(T5: no head, its output layer is the pre-trained one).
"""

from __future__ import annotations

import argparse
import sys

from flax import nnx

from tljax import zoo
from tljax.errors import InputError
from tljax.methods import METHODS, Adaptation, adapt, make_method
from tljax.methods.rules import parameter_sizes
from tljax.models import MODEL_CLASSES, model_class, read_config_dict


def table_task(model_type: str) -> str:
    """The task the table counts for when none is given: sequence classification where the family has it, else
    seq2seq (an encoder-decoder)."""
    tasks = MODEL_CLASSES.get(model_type, {})
    return next((task for task in ("sequence-classification", "seq2seq") if task in tasks), "sequence-classification")


def _class_and_config(directory, task: str | None, num_labels: int):
    raw = read_config_dict(directory)
    task = task or table_task(raw.get("model_type", ""))
    cls = model_class(raw.get("model_type", ""), task)
    config = cls.config_class.from_hf(raw)
    if task == "sequence-classification":
        config = config.replace(id2label={i: f"LABEL_{i}" for i in range(num_labels)})
    return cls, config


def describe_method(directory, name: str, task: str | None = None, num_labels: int = 2) -> str:
    """The rule report of one method (at its defaults) on a model."""
    cls, config = _class_and_config(directory, task, num_labels)
    method = make_method(name)
    model = nnx.eval_shape(lambda: adapt(cls.from_config(config), [method]).model)
    return Adaptation(model, (method,)).describe()


def trainable_table(directory, task: str | None = None, num_labels: int = 2) -> list[tuple[str, int, float]]:
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
    "bitfit": "models without biases (Llama, T5) get zero-initialised ones",
    "prefix": "the key/value table itself (projection_size adds an MLP, dropped at export)",
    "p-tuning": "includes the prompt encoder, dropped at export",
}
# a method that trains nothing of a model without a task head (an encoder-decoder writing text)
NOTHING = "trains a task head on frozen features: this model has none (refused for seq2seq)"


def format_table(rows: list[tuple[str, int, float]], model: str) -> str:
    """A Markdown table; every count includes the new classification head, where the task has one."""
    lines = [f"| method ({model}) | trainable parameters | % of the model | note |", "|---|---:|---:|---|"]
    lines += [f"| {name} | {count:,} | {percent:.3f}% | {NOTES.get(name, '') if count else NOTHING} |"
              for name, count, percent in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tljax.methods", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("--task", help="the model's task (default: sequence-classification, or seq2seq for a model "
                        "that only writes text, T5)")
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
