"""Metrics through the `evaluate` library, shipped as local modules so they work offline.

`accuracy`, `precision`, `recall`, `f1` (classes), `perplexity` (language models), `mse`, `mae`
(regression), `entity_f1`, `entity_precision`, `entity_recall`, `token_accuracy` (BIO tagging),
`exact_match`, `bleu`, `rouge` (generated answers against reference answers).
`evaluate_hub` loads a metric from the Hub by name; since a Hub metric is code downloaded at run
time, it needs `--trust-remote-code` on the command line.

The base class and its fast paths: `_local`; the text metrics: `text`; `evaluate_hub`: `hub`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from plugins.metrics._local import _divide, _LocalMetric, load_module
from plugins.metrics.hub import HubMetric
from plugins.metrics.text import Bleu, ExactMatch, Rouge
from runner import Options, hookimpl


class AverageOptions(Options):
    average: Literal["macro", "weighted", "micro"] = Field(
        default="macro", description="How per-class scores combine: 'macro', 'weighted' or 'micro'."
    )


class _Classes(_LocalMetric):
    """A metric of single-label class predictions; also gives the confusion matrix."""

    consumes = frozenset({"classes"})

    def details(self, predictions, references, num_labels: int | None = None) -> dict:
        """{"confusion_matrix": {"matrix", "rows", "columns"}}: matrix[i][j] counts rows of reference
        class i predicted as j, over classes 0..num_labels-1 (default: up to the largest id seen)."""
        import numpy as np

        predictions, references = np.asarray(predictions), np.asarray(references)
        if not len(references):
            return {}
        if num_labels is None:
            num_labels = int(max(predictions.max(), references.max())) + 1
        result = load_module("confusion_matrix")._compute(
            predictions=predictions, references=references, labels=list(range(num_labels))
        )
        return {
            "confusion_matrix": {"matrix": result["confusion_matrix"], "rows": "reference", "columns": "prediction"}
        }


class Accuracy(_Classes):
    """Accuracy: the share of correct predictions."""

    name = module = "accuracy"

    def statistics(self, predictions, references):
        import numpy as np

        correct = np.asarray(predictions) == np.asarray(references)
        return np.stack([correct, np.ones_like(correct)], axis=1).astype(np.float64)

    def from_statistics(self, sums):
        return {self.key(): _divide(sums[:, 0], sums[:, 1])}


class _Averaged(_Classes):
    Options = AverageOptions

    def key(self) -> str:
        return f"{self.name}_{self.options.average}"

    def _args(self) -> dict:
        return {"average": self.options.average}

    def statistics(self, predictions, references):
        """Per row and class c (every class seen in either list): [true positive, predicted c, is c]."""
        import numpy as np

        predictions, references = np.asarray(predictions), np.asarray(references)
        classes = np.union1d(predictions, references)
        predicted = predictions[:, None] == classes[None, :]
        actual = references[:, None] == classes[None, :]
        return np.concatenate([predicted & actual, predicted, actual], axis=1).astype(np.float64)

    def _per_class(self, tp, predicted, actual):
        """Scores per class, as scikit-learn computes them with zero_division=0."""
        raise NotImplementedError

    def from_statistics(self, sums):
        import numpy as np

        tp, predicted, actual = np.split(np.asarray(sums, dtype=np.float64), 3, axis=1)
        if self.options.average == "micro":  # the classes' counts pooled, then scored once
            pooled = (x.sum(1, keepdims=True) for x in (tp, predicted, actual))
            return {self.key(): self._per_class(*pooled)[:, 0]}
        scores = self._per_class(tp, predicted, actual)
        # scikit-learn averages over the classes present in the rows scored (predicted or actual)
        weights = actual if self.options.average == "weighted" else ((predicted + actual) > 0).astype(np.float64)
        return {self.key(): _divide((scores * weights).sum(1), weights.sum(1), empty=0.0)}


class Precision(_Averaged):
    """Precision, averaged over classes (macro, weighted or micro)."""

    name = module = "precision"

    def _per_class(self, tp, predicted, actual):
        return _divide(tp, predicted, empty=0.0)


class Recall(_Averaged):
    """Recall, averaged over classes (macro, weighted or micro)."""

    name = module = "recall"

    def _per_class(self, tp, predicted, actual):
        return _divide(tp, actual, empty=0.0)


class F1(_Averaged):
    """F1 score, averaged over classes (macro, weighted or micro)."""

    name = module = "f1"

    def _per_class(self, tp, predicted, actual):
        return _divide(2 * tp, predicted + actual, empty=0.0)


class Perplexity(_LocalMetric):
    """Perplexity: exp of the mean token loss, weighted by tokens."""

    name = module = "perplexity"
    consumes = frozenset({"tokens"})
    greater_is_better = False

    def statistics(self, predictions, references):
        """Per row: [summed token loss, tokens]."""
        import numpy as np

        return np.stack([np.asarray(predictions, dtype=np.float64), np.asarray(references, dtype=np.float64)], axis=1)

    def from_statistics(self, sums):
        import numpy as np

        with np.errstate(over="ignore"):  # an overflow is an infinite perplexity, not an error
            return {self.key(): np.exp(_divide(sums[:, 0], sums[:, 1]))}


class _Errors(_LocalMetric):
    consumes = frozenset({"scores"})
    greater_is_better = False

    def _error(self, difference):
        raise NotImplementedError

    def statistics(self, predictions, references):
        """Per row: [error, 1]."""
        import numpy as np

        difference = np.asarray(predictions, dtype=np.float64) - np.asarray(references, dtype=np.float64)
        return np.stack([self._error(difference), np.ones_like(difference)], axis=1)

    def from_statistics(self, sums):
        return {self.key(): _divide(sums[:, 0], sums[:, 1])}


class MSE(_Errors):
    """Mean squared error."""

    name = module = "mse"

    def _error(self, difference):
        return difference**2


class MAE(_Errors):
    """Mean absolute error."""

    name = module = "mae"

    def _error(self, difference):
        import numpy as np

        return np.abs(difference)


class _Entities(_LocalMetric):
    """Scores one figure of the entity-level module (BIO tags, strict spans, micro-averaged)."""

    module = "entities"
    consumes = frozenset({"tags"})

    @property
    def result(self) -> str:
        return self.name


class EntityF1(_Entities):
    """Entity-level F1 for BIO tagging: an entity counts when its type and both ends match."""

    name = "entity_f1"


class EntityPrecision(_Entities):
    """Entity-level precision for BIO tagging."""

    name = "entity_precision"


class EntityRecall(_Entities):
    """Entity-level recall for BIO tagging."""

    name = "entity_recall"


class TokenAccuracy(_Entities):
    """The share of tokens whose tag is right (an 'O' counts too)."""

    name = "token_accuracy"


@hookimpl
def register_metrics(register):
    for cls in (Accuracy, Precision, Recall, F1, Perplexity, MSE, MAE, EntityF1, EntityPrecision, EntityRecall,
                TokenAccuracy, ExactMatch, Bleu, Rouge, HubMetric):  # fmt: skip
        register(cls)
