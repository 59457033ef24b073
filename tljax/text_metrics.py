"""Scores of generated text against reference text: ROUGE-1/2/L, chrF, BLEU and exact match.

ROUGE is `rouge_score`'s F-measure, averaged over examples; chrF and BLEU are `sacrebleu`'s corpus scores (one
reference per example). All but exact match are on the 0-100 scale papers report them on (ROUGE x 100, as
Hugging Face's summarisation examples report it); exact match is the fraction of outputs equal to their reference
after whitespace is collapsed (case and punctuation count).

`rouge_score`'s default tokenizer keeps only the letters a-z and digits, so "não é" would be scored as "n o"; here
ROUGE reads lower-cased Unicode words (`WordTokenizer`), which keeps every language's letters. A leaf module: it
imports nothing of tljax but the errors.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import sacrebleu

from tljax.errors import InputError

TEXT_METRICS = ("chrf", "bleu", "rouge1", "rouge2", "rougeL", "exact")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


class WordTokenizer:
    """Lower-cased runs of Unicode letters and digits (what `rouge_score` asks of a tokenizer: `tokenize`)."""

    WORD = re.compile(r"\w+", re.UNICODE)

    def tokenize(self, text: str) -> list[str]:
        return [word for word in self.WORD.findall(text.lower()) if word != "_"]


def rouge_scorer_for():
    """The `rouge_score.rouge_scorer.RougeScorer` these metrics use: ROUGE-1, -2 and -L over `WordTokenizer`'s
    words, no stemming."""
    # imported here, not with the module: rouge_score imports nltk and scipy (1.3 s), which every training and
    # harness process would otherwise pay though only a seq2seq evaluation scores ROUGE
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False, tokenizer=WordTokenizer())


def normalise_space(text: str) -> str:
    return " ".join(text.split())


def text_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """{chrf, bleu, rouge1, rouge2, rougeL, exact} of `predictions` against `references` (one each)."""
    if len(predictions) != len(references):
        raise InputError(f"{len(predictions)} predictions for {len(references)} references; give each output its "
                         "reference")
    if not references:
        return {name: 0.0 for name in TEXT_METRICS}
    scorer = rouge_scorer_for()
    rouge = {name: [] for name in ROUGE_TYPES}
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)  # (target, prediction)
        for name in ROUGE_TYPES:
            rouge[name].append(scores[name].fmeasure)
    refs = [list(references)]
    return {"chrf": float(sacrebleu.corpus_chrf(list(predictions), refs).score),
            "bleu": float(sacrebleu.corpus_bleu(list(predictions), refs).score),
            **{name: 100.0 * float(np.mean(values)) for name, values in rouge.items()},
            "exact": float(np.mean([normalise_space(p) == normalise_space(r)
                                    for p, r in zip(predictions, references)]))}


__all__ = ["ROUGE_TYPES", "TEXT_METRICS", "WordTokenizer", "rouge_scorer_for", "text_metrics"]
