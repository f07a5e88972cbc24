"""Corpus BLEU by sacrebleu, on its 0-100 scale (the number papers and sacrebleu report).

One reference per prediction. Defaults are sacrebleu's: the "13a" tokenizer, case-sensitive,
exponential smoothing; `tokenize` ("13a", "intl", "char", "zh", "none", ...) and `lowercase`
change them. Corpus BLEU is not a mean over rows: n-gram matches and lengths are summed over all
rows first, so the score of a subset of rows comes from the summed per-row statistics.
"""

import datasets
import evaluate
import numpy as np
from sacrebleu.metrics import BLEU


class Bleu(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="Post, 'A Call for Clarity in Reporting BLEU Scores', WMT 2018",
            inputs_description="predictions, references: texts, one reference per prediction",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    @staticmethod
    def _scorer(tokenize="13a", lowercase=False):
        return BLEU(tokenize=tokenize, lowercase=lowercase, force=True)

    def row_statistics(self, predictions, references, tokenize="13a", lowercase=False):
        """Per row: sacrebleu's sufficient statistics [hypothesis length, reference length,
        matching n-grams for n = 1..4, n-grams for n = 1..4]."""
        predictions, references = list(predictions), list(references)
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
        if not predictions:
            return np.zeros((0, 2 + 2 * BLEU.MAX_NGRAM_ORDER))
        stats = self._scorer(tokenize, lowercase)._extract_corpus_statistics(predictions, [references])
        return np.asarray(stats, dtype=np.float64)

    def score_statistics(self, sums, tokenize="13a", lowercase=False):
        """BLEU from summed row statistics, one score per row of `sums`."""
        scorer = self._scorer(tokenize, lowercase)
        # compute_bleu is plain Python arithmetic (tens of microseconds): a loop over resamples is fast.
        scores = [scorer._compute_score_from_stats([int(v) for v in row]).score for row in np.asarray(sums)]
        return {"bleu": np.asarray(scores, dtype=np.float64)}

    def _compute(self, predictions, references, tokenize="13a", lowercase=False):
        sums = self.row_statistics(predictions, references, tokenize, lowercase).sum(axis=0, keepdims=True)
        return {"bleu": float(self.score_statistics(sums, tokenize, lowercase)["bleu"][0])}
