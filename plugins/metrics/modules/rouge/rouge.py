"""ROUGE-1, ROUGE-2 and ROUGE-L F-measures by rouge_score, each averaged over rows (0-1).

Words are compared lower-cased, punctuation dropped. rouge_score's own tokenizer keeps only ASCII
letters and digits, so any other script scores 0; the tokenizer here keeps letters and digits of
every script and splits Chinese and Japanese characters one by one, and gives the same tokens as
rouge_score's on ASCII text. `use_stemmer=True` applies the Porter stemmer (English). The mean over
rows (not rouge_score's bootstrap median) makes the score of a subset the mean of its rows.
"""

import re

import datasets
import evaluate
import numpy as np
from rouge_score import rouge_scorer

TYPES = ("rouge1", "rouge2", "rougeL")
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_WORD = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")


class UnicodeTokenizer:
    """rouge_score's tokenizer (lower-case, letters and digits only) for every script."""

    def __init__(self, use_stemmer=False):
        from nltk.stem import porter

        self._stemmer = porter.PorterStemmer() if use_stemmer else None

    def tokenize(self, text):
        tokens = _WORD.findall(text.lower())
        if self._stemmer:  # as rouge_score: only words longer than 3 characters are stemmed
            tokens = [self._stemmer.stem(t) if len(t) > 3 else t for t in tokens]
        return tokens


class Rouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="Lin, 'ROUGE: A Package for Automatic Evaluation of Summaries', 2004",
            inputs_description="predictions, references: texts, one reference per prediction",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def row_statistics(self, predictions, references, use_stemmer=False):
        """Per row: [rouge1, rouge2, rougeL F-measures, 1]."""
        scorer = rouge_scorer.RougeScorer(list(TYPES), tokenizer=UnicodeTokenizer(use_stemmer))
        rows = []
        for prediction, reference in zip(predictions, references, strict=True):
            scores = scorer.score(reference, prediction)  # rouge_score takes (target, prediction)
            rows.append([scores[t].fmeasure for t in TYPES] + [1.0])
        return np.asarray(rows, dtype=np.float64).reshape(-1, len(TYPES) + 1)

    def score_statistics(self, sums, use_stemmer=False):
        """Mean F-measures from summed row statistics, one per row of `sums`."""
        sums = np.asarray(sums, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return {t: sums[:, i] / sums[:, -1] for i, t in enumerate(TYPES)}

    def _compute(self, predictions, references, use_stemmer=False):
        sums = self.row_statistics(predictions, references, use_stemmer).sum(axis=0, keepdims=True)
        return {t: float(v[0]) for t, v in self.score_statistics(sums).items()}
