"""Recall for single-label classification, averaged over classes ("macro", "weighted", "micro")."""

import datasets
import evaluate
from sklearn.metrics import recall_score


class Recall(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions, references: class ids; average: macro, weighted or micro",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, average="macro", labels=None):
        value = recall_score(references, predictions, average=average, labels=labels, zero_division=0)
        return {"recall": float(value)}
