"""Entity tags: the schemes files use, one scheme inside tljax (IOB2 / BIO), entities from tags, and the
entity-level metrics of the CoNLL evaluation (an entity counts only with its exact type and boundaries).

Inside tljax every tag sequence is IOB2: `O`, `B-TYPE` on an entity's first word, `I-TYPE` on the others.
Files may use IOB1 (`B-` only where an entity directly follows another of its type: CoNLL-2003's original
files), IOB2, or BIOES / IOBES (`S-` single-word entities, `E-` last words; also spelt BILOU with `U-` and
`L-`); `to_iob2` converts each and refuses a tag sequence that breaks its scheme.

The metrics match `seqeval` 1.2.2: the default (lenient) reading, as the conlleval script does, where an
`I-TYPE` after `O` or after another type starts an entity, and the strict reading (`strict=True`, seqeval's
`mode="strict"` with IOB2), where only a `B-` starts one. Pure Python and NumPy: a leaf of the package.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence

import numpy as np

from tljax.errors import InputError

OUTSIDE = "O"
SCHEMES = ("auto", "iob1", "iob2", "bioes")
_BIOES_PREFIXES = {"S": "S", "U": "S", "E": "E", "L": "E", "B": "B", "I": "I"}


class TagError(InputError):
    """A tag sequence that does not follow its scheme; `position` is the offending tag's index."""

    def __init__(self, message: str, position: int):
        super().__init__(message)
        self.position = position


@dataclasses.dataclass(frozen=True, order=True)
class Entity:
    """Words `start` .. `end` - 1 of a sequence are one entity of type `label`."""

    start: int
    end: int
    label: str


def split_tag(tag: str) -> tuple[str, str]:
    """("B", "PER") for "B-PER", ("O", "") for "O"; the prefix in upper case. Also reads "B_PER"."""
    if tag == OUTSIDE:
        return OUTSIDE, ""
    for separator in ("-", "_"):
        prefix, found, label = tag.partition(separator)
        if found and len(prefix) == 1 and label:
            return prefix.upper(), label
    raise TagError(f"tag {tag!r} is neither O nor PREFIX-TYPE (e.g. B-PER, I-LOC)", 0)


def tag_names(types: Sequence[str]) -> tuple[str, ...]:
    """The IOB2 tags of entity `types`, in the order a model's labels take: O, then B- and I- of each type."""
    return (OUTSIDE, *(f"{prefix}-{t}" for t in types for prefix in "BI"))


def detect_scheme(tags: Sequence[str]) -> str:
    """"bioes" if any tag has an S- / E- (U- / L-) prefix; "iob1" if an I- tag starts an entity somewhere (after
    O or another type) and no B- does; otherwise "iob2"."""
    prefixes = [split_tag(t)[0] for t in tags]
    if set(prefixes) & {"S", "E", "U", "L"}:
        return "bioes"
    previous = (OUTSIDE, "")
    i_starts = b_starts = False
    for tag in tags:
        prefix, label = split_tag(tag)
        if prefix == "I" and (previous[0] == OUTSIDE or previous[1] != label):
            i_starts = True
        if prefix == "B" and not (previous[0] != OUTSIDE and previous[1] == label):
            b_starts = True
        previous = (prefix, label)
    return "iob1" if i_starts and not b_starts else "iob2"


def to_iob2(tags: Sequence[str], scheme: str) -> list[str]:
    """One sentence's `tags` in `scheme` ("iob1", "iob2" or "bioes") as IOB2; a tag that breaks the scheme
    raises `TagError` with its position (an I- with no entity before it in IOB2, an E- without its B-, ...)."""
    parsed = []
    for position, tag in enumerate(tags):
        try:
            parsed.append(split_tag(tag))
        except TagError as error:
            raise TagError(str(error), position) from None
    allowed = {"iob1": "BIO", "iob2": "BIO", "bioes": "BIESUL"}[scheme]
    out = []
    previous = (OUTSIDE, "")
    open_entity = ""  # the type of an entity still open (bioes: B- or I- seen, no E- yet)
    for position, (prefix, label) in enumerate(parsed):
        if prefix != OUTSIDE and prefix not in allowed:
            raise TagError(f"tag {tags[position]!r} is not a {scheme.upper()} tag (its prefixes: "
                           f"{', '.join(allowed)} and O)", position)
        continues = previous[0] != OUTSIDE and previous[1] == label
        if scheme == "iob2":
            if prefix == "I" and not continues:
                raise TagError(f"tag {tags[position]!r} continues an entity, but "
                               f"{'no entity' if previous[0] == OUTSIDE else 'a ' + previous[1] + ' entity'} comes "
                               "before it (IOB2 starts every entity with B-)", position)
            out.append(tags[position] if prefix == OUTSIDE else f"{prefix}-{label}")
        elif scheme == "iob1":
            if prefix == "B" and not continues:
                raise TagError(f"tag {tags[position]!r}: IOB1 uses B- only for an entity that directly follows "
                               f"another {label} entity; this one follows "
                               f"{'no entity' if previous[0] == OUTSIDE else 'a ' + previous[1] + ' entity'} "
                               "(is the file IOB2? set data.tag_scheme: iob2)", position)
            out.append(OUTSIDE if prefix == OUTSIDE else f"{'I' if continues and prefix == 'I' else 'B'}-{label}")
        else:
            prefix = _BIOES_PREFIXES.get(prefix, prefix)
            inside = prefix in ("I", "E")
            if inside and open_entity != label:
                raise TagError(f"tag {tags[position]!r} continues an entity, but no {label} entity is open before "
                               "it (BIOES starts an entity with B- or S-)", position)
            if not inside and open_entity:
                raise TagError(f"tag {tags[position]!r} comes before the open {open_entity} entity ended (BIOES "
                               "ends an entity of several words with E-)", position - 1)
            out.append(OUTSIDE if prefix == OUTSIDE else f"{'I' if inside else 'B'}-{label}")
            open_entity = label if prefix in ("B", "I") else ""
        previous = (prefix if prefix != "S" else "B", label)
    if scheme == "bioes" and open_entity:
        raise TagError(f"the sentence ends inside a {open_entity} entity (BIOES ends it with E-)", len(tags) - 1)
    return out


def entities(tags: Sequence[str], *, strict: bool = False) -> list[Entity]:
    """The entities of one IOB2 tag sequence. Lenient (the default, as conlleval and seqeval's default): an
    I-TYPE that does not continue an entity of its type starts one. `strict`: only B- starts an entity and such
    I- tags belong to none (seqeval's strict IOB2 mode)."""
    found, start, label = [], None, ""
    for position, tag in enumerate([*tags, OUTSIDE]):
        prefix, kind = split_tag(tag) if tag != OUTSIDE else (OUTSIDE, "")
        continues = prefix == "I" and start is not None and kind == label
        if start is not None and not continues:
            found.append(Entity(start, position, label))
            start = None
        if prefix == "B" or (prefix == "I" and not continues and not strict):
            start, label = position, kind
    return found


def entity_counts(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]], *,
                  strict: bool = False) -> dict[str, tuple[int, int, int]]:
    """Per entity type: (true positives, predicted, gold) over sentences of IOB2 tags."""
    if len(gold) != len(predicted):
        raise InputError(f"{len(gold)} gold sentences but {len(predicted)} predicted ones; give one prediction per "
                         "sentence")
    hits, n_predicted, n_gold = Counter(), Counter(), Counter()
    for number, (g, p) in enumerate(zip(gold, predicted)):
        if len(g) != len(p):
            raise InputError(f"sentence {number}: {len(g)} gold tags but {len(p)} predicted ones")
        gold_entities = set(entities(g, strict=strict))
        predicted_entities = set(entities(p, strict=strict))
        n_gold.update(e.label for e in gold_entities)
        n_predicted.update(e.label for e in predicted_entities)
        hits.update(e.label for e in gold_entities & predicted_entities)
    return {label: (hits[label], n_predicted[label], n_gold[label]) for label in sorted(n_gold | n_predicted)}


def _prf(hits: int, predicted: int, gold: int) -> tuple[float, float, float]:
    precision = hits / predicted if predicted else 0.0
    recall = hits / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def entity_metrics(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]], *,
                   strict: bool = False) -> dict:
    """Entity-level precision, recall and F1, micro-averaged (`precision`, `recall`, `f1`) and macro-averaged
    over the types found in gold or predictions (`macro_f1`, ...), per type (`per_type`: precision, recall, f1,
    support), and word accuracy (`accuracy`, over every word's tag), as seqeval computes them (zero where a
    denominator is zero). Each of `gold` and `predicted` is a list of sentences of IOB2 tags."""
    counts = entity_counts(gold, predicted, strict=strict)
    per_type = {}
    for label, (hits, n_predicted, n_gold) in counts.items():
        p, r, f = _prf(hits, n_predicted, n_gold)
        per_type[label] = {"precision": p, "recall": r, "f1": f, "support": n_gold}
    totals = [sum(c[i] for c in counts.values()) for i in range(3)]
    precision, recall, f1 = _prf(*totals)
    macro = {name: sum(t[name] for t in per_type.values()) / len(per_type) if per_type else 0.0
             for name in ("precision", "recall", "f1")}
    words = sum(len(g) for g in gold)
    correct = sum(a == b for g, p in zip(gold, predicted) for a, b in zip(g, p))
    return {"accuracy": correct / words if words else 0.0, "precision": precision, "recall": recall, "f1": f1,
            "macro_precision": macro["precision"], "macro_recall": macro["recall"], "macro_f1": macro["f1"],
            "entities": totals[2], "predicted_entities": totals[1], "per_type": per_type}


def type_confusion(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]],
                   types: Sequence[str]) -> list[list[int]]:
    """[gold type or none, predicted type or none] counts over words ([T + 1, T + 1], the last row and column:
    outside any entity): which types are taken for which, word by word."""
    index = {t: i for i, t in enumerate(types)}
    size = len(types) + 1
    table = [[0] * size for _ in range(size)]
    for g, p in zip(gold, predicted):
        for a, b in zip(g, p):
            table[index.get(split_tag(a)[1], size - 1)][index.get(split_tag(b)[1], size - 1)] += 1
    return table


def sentence_counts(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> np.ndarray:
    """[sentences, 3]: each sentence's (entities found exactly, entities predicted, gold entities), all types."""
    rows = []
    for g, p in zip(gold, predicted):
        gold_entities, predicted_entities = set(entities(g)), set(entities(p))
        rows.append((len(gold_entities & predicted_entities), len(predicted_entities), len(gold_entities)))
    return np.asarray(rows, np.int64).reshape(-1, 3)


def f1_difference_interval(first: np.ndarray, second: np.ndarray, rounds: int = 2000, seed: int = 0,
                           level: float = 0.95) -> tuple[float, float]:
    """The paired bootstrap interval of micro entity F1 (first) - F1 (second), from two systems' `sentence_counts`
    on the same sentences: sentences resampled with replacement, `level` of the `rounds` differences inside."""
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, len(first), (rounds, len(first)))

    def f1(counts: np.ndarray) -> np.ndarray:
        totals = counts[samples].sum(1)  # [rounds, 3]
        denominator = totals[:, 1] + totals[:, 2]
        return np.divide(2 * totals[:, 0], denominator, out=np.zeros(rounds), where=denominator > 0)

    differences = f1(first) - f1(second)
    tail = (1 - level) / 2
    return float(np.quantile(differences, tail)), float(np.quantile(differences, 1 - tail))


def viterbi(emissions: np.ndarray, start: np.ndarray, end: np.ndarray, transitions: np.ndarray) -> list[int]:
    """The best-scoring tag path of one sequence under a linear-chain CRF: emissions [T, L] (T >= 1), start and
    end scores [L], transitions [L, L] (`transitions[i, j]`: tag j after tag i, as pytorch-crf)."""
    score = start + emissions[0]
    back = []
    for emission in emissions[1:]:
        candidates = score[:, None] + transitions  # [from, to]
        back.append(candidates.argmax(0))
        score = candidates.max(0) + emission
    best = [int((score + end).argmax())]
    for pointers in reversed(back):
        best.append(int(pointers[best[-1]]))
    return best[::-1]
