"""Entity-level precision, recall and F1 for BIO-tagged sequences, and token accuracy.

An entity is a maximal run of tags B-X, I-X, I-X... (an I-X that does not continue an X entity
starts a new one, as in seqeval's default mode). A predicted entity counts only if its type, start
and end all match a reference entity. Scores are micro-averaged over all entities.
"""

import datasets
import evaluate
import numpy as np


def spans(tags):
    found, start, kind = set(), None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, label = tag.partition("-")
        continues = prefix == "I" and kind == label
        if start is not None and not continues:
            found.add((kind, start, i))
            start, kind = None, None
        if prefix == "B" or (prefix == "I" and not continues):
            start, kind = i, label
    return found


class Entities(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions, references: lists of BIO tag strings, one list per sequence",
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("string")),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
        )

    # Row statistics: summed over any subset of rows, they give that subset's scores (a bootstrap
    # resamples sums instead of recomputing).
    def row_statistics(self, predictions, references):
        """Per sequence: [correct entities, predicted entities, reference entities, tokens, right tags]."""
        rows = []
        for pred, ref in zip(predictions, references, strict=True):
            p, r = spans(pred), spans(ref)
            right = sum(a == b for a, b in zip(pred, ref, strict=True))
            rows.append([len(p & r), len(p), len(r), len(ref), right])
        return np.asarray(rows, dtype=np.float64).reshape(-1, 5)

    def score_statistics(self, sums):
        """The four scores from summed row statistics, one per row of `sums`."""
        correct, predicted, actual, tokens, right = np.asarray(sums, dtype=np.float64).T
        precision = np.divide(correct, predicted, out=np.zeros_like(correct), where=predicted > 0)
        recall = np.divide(correct, actual, out=np.zeros_like(correct), where=actual > 0)
        total = precision + recall
        f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
        accuracy = np.divide(right, tokens, out=np.zeros_like(right), where=tokens > 0)
        return {"entity_precision": precision, "entity_recall": recall, "entity_f1": f1, "token_accuracy": accuracy}

    def _compute(self, predictions, references):
        sums = self.row_statistics(predictions, references).sum(axis=0, keepdims=True)
        return {name: float(values[0]) for name, values in self.score_statistics(sums).items()}
