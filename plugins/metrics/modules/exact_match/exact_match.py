"""Exact match: the share of predictions equal to their reference after normalisation.

Both texts are stripped and every run of whitespace becomes one space, so that a trailing newline
or a doubled space is no mistake; `ignore_case=True` also compares them case-insensitively.
"""

import re

import datasets
import evaluate
import numpy as np

_SPACE = re.compile(r"\s+")


def normalise(text: str, ignore_case: bool = False) -> str:
    text = _SPACE.sub(" ", text).strip()
    return text.casefold() if ignore_case else text


class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions, references: texts; ignore_case: compare case-insensitively",
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    # Row statistics: summed over any subset of rows, they give that subset's score (a bootstrap
    # resamples sums instead of recomputing).
    def row_statistics(self, predictions, references, ignore_case=False):
        """Per row: [1 if it matches, 1]."""
        return np.array(
            [
                [float(normalise(p, ignore_case) == normalise(r, ignore_case)), 1.0]
                for p, r in zip(predictions, references, strict=True)
            ],
            dtype=np.float64,
        ).reshape(-1, 2)

    def score_statistics(self, sums, ignore_case=False):
        """Scores from summed row statistics, one per row of `sums`."""
        sums = np.asarray(sums, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return {"exact_match": sums[:, 0] / sums[:, 1]}

    def _compute(self, predictions, references, ignore_case=False):
        sums = self.row_statistics(predictions, references, ignore_case).sum(axis=0, keepdims=True)
        return {"exact_match": float(self.score_statistics(sums)["exact_match"][0])}
