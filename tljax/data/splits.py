"""Train / validation / test splits that are deterministic and do not leak.

The rule, in order:

1. Every example has a key: its group when the dataset has groups (e.g. the movie of a review), else its text
   after whitespace normalisation and case folding (so that repeated texts share a key).
2. Keys are ordered by SHA-256 of `"{seed}:{key}"` (not Python's `hash()`, which changes between processes),
   so a seed gives the same split on any machine, and a group or repeated text always lands in one split.
3. Without a predefined split, keys are taken in that order into test until it holds `test` of the examples,
   then into validation until it holds `validation` of them; the rest is train.
   With a predefined split (e.g. 20 Newsgroups' train / test) the source's parts are kept (the fraction asked
   for a part the source has is ignored); a part the source lacks (usually validation) is carved, the same way,
   out of the source's train part, as that fraction of it.
4. Leakage: an example of validation or test whose normalised text also occurs in train is dropped, and so is
   an example of test whose text occurs in validation; how many were dropped is recorded (`Splits.dropped`)
   and shown by `describe_splits`.
5. A split left empty is an error saying which split and why; there is no silent fallback.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from tljax.data.dataset import SPLIT_NAMES, DataError, TextDataset


class Splits(dict[str, TextDataset]):
    """{"train", "validation", "test"} -> dataset, plus the number of leaked duplicates dropped per split."""

    def __init__(self, parts: Mapping[str, TextDataset], dropped: Mapping[str, int]):
        super().__init__(parts)
        self.dropped = dict(dropped)


def normalise(text: str) -> str:
    """The text as leakage sees it: whitespace runs collapsed to one space, case folded."""
    return " ".join(text.split()).casefold()


def _order(keys: Sequence[str], seed: int) -> list[str]:
    distinct = dict.fromkeys(keys)
    return sorted(distinct, key=lambda key: hashlib.sha256(f"{seed}:{key}".encode()).digest())


def _carve(indices: list[int], keys: Sequence[str], fractions: dict[str, float], seed: int) -> dict[str, list[int]]:
    """Assigns whole keys, in hash order, to each named part until it holds its fraction; the rest is train."""
    members: dict[str, list[int]] = {}
    for i in indices:
        members.setdefault(keys[i], []).append(i)
    parts: dict[str, list[int]] = {name: [] for name in (*fractions, "train")}
    targets = [(name, fraction * len(indices)) for name, fraction in fractions.items()]
    for key in _order([keys[i] for i in indices], seed):
        part = next((name for name, target in targets if len(parts[name]) < target), "train")
        parts[part] += members[key]
    return parts


def _check_fraction(name: str, value: float) -> None:
    if not 0 < value < 1:
        raise DataError(f"{name}={value} must be a fraction strictly between 0 and 1 (e.g. 0.1); every split is "
                        "needed: validation picks checkpoints, test measures the result")


def split_dataset(dataset: TextDataset, *, validation: float = 0.1, test: float = 0.1,
                  seed: int = 0) -> Splits:
    """Splits `dataset` into train / validation / test by the rule in this module's docstring.

    `validation` and `test` are fractions strictly between 0 and 1: all three splits are always returned.
    """
    _check_fraction("validation", validation)
    _check_fraction("test", test)
    if validation + test >= 1:
        raise DataError(f"validation={validation} + test={test} leaves nothing to train on; keep their sum below 1")
    grouped = dataset.groups is not None
    keys = dataset.groups if grouped else tuple(normalise(t) for t in dataset.texts)
    everything = list(range(len(dataset)))
    if dataset.predefined_split is None:
        parts = _carve(everything, keys, {"test": test, "validation": validation}, seed)
    else:
        given = {name: [i for i in everything if dataset.predefined_split[i] == name] for name in SPLIT_NAMES}
        missing = {name: fraction for name, fraction in (("test", test), ("validation", validation))
                   if not given[name]}
        parts = {**given, **_carve(given["train"], keys, missing, seed)}
    normalised = [normalise(t) for t in dataset.texts]
    seen = {normalised[i] for i in parts["train"]}
    dropped = {"train": 0}
    for name in ("validation", "test"):
        kept = [i for i in parts[name] if normalised[i] not in seen]
        dropped[name] = len(parts[name]) - len(kept)
        parts[name] = kept
        seen |= {normalised[i] for i in kept}
    for name in SPLIT_NAMES:
        if not parts[name]:
            raise DataError(_why_empty(name, dataset, keys, dropped.get(name, 0), validation, test))
    return Splits({name: dataset.subset(parts[name], name=f"{dataset.name}/{name}") for name in SPLIT_NAMES},
                  dropped)


def _why_empty(name: str, dataset: TextDataset, keys: Sequence[str], dropped: int, validation: float,
               test: float) -> str:
    unit = "groups" if dataset.groups is not None else "distinct texts"
    if dropped:
        return (f"the {name} split of {dataset.name} is empty: all {dropped} of its examples repeat texts of an "
                "earlier split and were dropped as leakage; the data needs more distinct texts")
    return (f"the {name} split of {dataset.name} is empty: {len(set(keys))} {unit} in {len(dataset)} examples are "
            f"too few for validation={validation} and test={test}; give it more {unit} or larger fractions")


def describe_splits(splits: Mapping[str, TextDataset]) -> str:
    """A table: per split, its size, the examples per class (count and %), and the duplicates dropped."""
    names = [name for name in SPLIT_NAMES if name in splits] + [n for n in splits if n not in SPLIT_NAMES]
    label_names = next(iter(splits.values())).label_names
    dropped = getattr(splits, "dropped", {})
    rows = [["", *names], ["examples", *(f"{len(splits[n]):,}" for n in names)]]
    for label in label_names:
        cells = []
        for n in names:
            count, total = splits[n].class_counts()[label], len(splits[n])
            cells.append(f"{count:,} ({100 * count / total:.1f}%)" if total else "0")
        rows.append([label, *cells])
    rows.append(["duplicates dropped", *(f"{dropped.get(n, 0):,}" for n in names)])
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    note = ("(duplicates dropped: examples whose text, whitespace-normalised and case-folded, already occurs in "
            "train, or for test in validation)")
    return "\n".join([*lines, note])
