"""Metrics through the `evaluate` library, shipped as local modules so they work offline.

`accuracy`, `precision`, `recall`, `f1` (classes), `perplexity` (language models), `mse`, `mae`
(regression), `entity_f1`, `entity_precision`, `entity_recall`, `token_accuracy` (BIO tagging),
`exact_match`, `bleu`, `rouge` (generated answers against reference answers).
`evaluate_hub` loads a metric from the Hub by name; since a Hub metric is code downloaded at run
time, it needs `--trust-remote-code` on the command line.

Two fast paths, so that a bootstrap (a metric computed on ~1000 resamples) takes about a second:
- `compute` calls the module's `_compute` directly: `evaluate`'s public `compute` writes its inputs
  to an Arrow cache file on every call, which costs milliseconds and buys nothing here.
- `statistics` gives per-row numbers whose sums over any subset of rows determine the metric on
  that subset (correct rows; per-class true/predicted/actual counts; summed losses and tokens;
  BLEU's n-gram counts), and `from_statistics` turns many such sums into scores at once. A
  bootstrap then resamples sums, never rows (runner.evaluation.intervals).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from runner import FinetuneError, Metric, Options, hookimpl

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np

MODULES = Path(__file__).parent / "modules"


@cache
def load_module(name: str):
    """The local `evaluate` module `name`, loaded once per process (it keeps no state between our
    calls: we call its `_compute`, which works on its arguments only)."""
    import evaluate

    return evaluate.load(str(MODULES / name))


class NoOptions(Options):
    pass


class AverageOptions(Options):
    average: Literal["macro", "weighted", "micro"] = Field(
        default="macro", description="How per-class scores combine: 'macro', 'weighted' or 'micro'."
    )


class _LocalMetric(Metric):
    Options = NoOptions
    module = ""

    @property
    def result(self) -> str:
        """Which value of the module's result this metric reports."""
        return self.module

    def prepare(self, ctx) -> None:
        load_module(self.module)  # fails the run early if it cannot load; cached for `_module`

    def _args(self) -> dict:
        return {}

    def _module(self):
        return load_module(self.module)

    def compute(self, predictions, references) -> dict[str, float]:
        result = self._module()._compute(predictions=predictions, references=references, **self._args())
        return {self.key(): float(result[self.result])}

    def statistics(self, predictions, references) -> np.ndarray | None:
        """Per-row statistics, shape (rows, k), whose sum over any subset of rows gives the metric on
        that subset through `from_statistics`; None when the metric has none."""
        module = self._module()
        if not hasattr(module, "row_statistics"):
            return None
        return module.row_statistics(predictions, references, **self._args())

    def from_statistics(self, sums) -> dict[str, np.ndarray]:
        """Metric values from summed statistics: `sums` has shape (m, k); one value per row."""
        return {self.key(): self._module().score_statistics(sums, **self._args())[self.result]}


def _divide(numerator, denominator, empty: float = float("nan")):
    """numerator / denominator element by element, `empty` where the denominator is 0."""
    import numpy as np

    numerator = np.asarray(numerator, dtype=np.float64)
    return np.divide(numerator, denominator, out=np.full_like(numerator, empty), where=np.asarray(denominator) > 0)


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


# -- generated text: predictions are the model's answers, references the reference answers -------


class ExactMatchOptions(Options):
    ignore_case: bool = Field(default=False, description="Compare answers case-insensitively.")


class ExactMatch(_LocalMetric):
    """Exact match: the share of generated answers equal to the reference (whitespace normalised)."""

    name = module = "exact_match"
    Options = ExactMatchOptions
    consumes = frozenset({"text"})

    def _args(self) -> dict:
        return {"ignore_case": self.options.ignore_case}


BLEU_ORDER = 4  # sacrebleu's highest n-gram order


class BleuOptions(Options):
    tokenize: Literal["13a", "intl", "char", "zh", "none"] = Field(
        default="13a",
        description="sacrebleu's tokenizer: '13a' (its default), 'intl' (Unicode punctuation), 'char', 'zh', 'none'.",
    )
    lowercase: bool = Field(default=False, description="Compare lower-cased text.")


class Bleu(_LocalMetric):
    """Corpus BLEU of generated answers (sacrebleu, 0-100)."""

    name = module = "bleu"
    Options = BleuOptions
    consumes = frozenset({"text"})

    def _args(self) -> dict:
        return {"tokenize": self.options.tokenize, "lowercase": self.options.lowercase}

    def meaningless(self, references) -> str | None:
        # BLEU multiplies 1- to 4-gram precisions: answers shorter than 4 words have no 4-grams,
        # and score 0 (or a smoothing artefact) however right they are.
        words = sorted(len(str(r).split()) for r in references)
        median = words[len(words) // 2] if words else BLEU_ORDER
        if median >= BLEU_ORDER:
            return None
        return (
            f"the references have a median length of {median} word{'s' if median != 1 else ''}, and 4-gram BLEU "
            f"needs at least {BLEU_ORDER}: it would score right answers near 0. Exact match and ROUGE say more here"
        )


class RougeOptions(Options):
    variant: Literal["rouge1", "rouge2", "rougeL"] = Field(
        default="rougeL",
        description="'rouge1' (word overlap), 'rouge2' (word-pair overlap), 'rougeL' (longest common subsequence); "
        "the metric's name in results. List the metric once per variant for several.",
    )
    use_stemmer: bool = Field(default=False, description="Compare Porter-stemmed words (English).")


class Rouge(_LocalMetric):
    """ROUGE F-measure of generated answers, mean over rows (0-1); `variant` rouge1, rouge2 or rougeL."""

    name = module = "rouge"
    Options = RougeOptions
    consumes = frozenset({"text"})

    @property
    def result(self) -> str:
        return self.options.variant

    def key(self) -> str:
        return self.options.variant

    def _args(self) -> dict:
        return {"use_stemmer": self.options.use_stemmer}


class HubMetricOptions(Options):
    path: str = Field(description="Metric name or id on the Hub, e.g. 'matthews_correlation'.")
    key: str = Field(description="Which value of its result to report, e.g. 'matthews_correlation'.")
    consumes: Literal["classes", "scores", "tokens", "tags", "text"] = Field(
        default="classes", description="Which task predictions it scores ('text': generated answers)."
    )
    greater_is_better: bool = Field(default=True, description="Whether a higher value is better.")


class HubMetric(Metric):
    """Any `evaluate` metric from the Hub (code downloaded at run time: needs --trust-remote-code)."""

    name = "evaluate_hub"
    Options = HubMetricOptions
    consumes = frozenset({"classes", "scores", "tokens", "tags", "text"})

    @classmethod
    def check(cls, options, recipe):
        task = recipe.task.cls
        if options.consumes == "text":
            if not task.generates:
                yield ("consumes",), f"task '{recipe.task.name}' does not generate text"
        elif options.consumes != task.produces:
            yield ("consumes",), f"task '{recipe.task.name}' produces {task.produces}"

    def __init__(self, options):
        super().__init__(options)
        self.greater_is_better = options.greater_is_better

    def key(self) -> str:
        return self.options.key

    def prepare(self, ctx) -> None:
        import evaluate

        if ctx is None or not ctx.trust_remote_code:
            raise FinetuneError(
                f"metric 'evaluate_hub' ({self.options.path}) downloads and runs code from the Hub",
                hint="allow it with --trust-remote-code on the command line",
            )
        try:
            self._metric = evaluate.load(self.options.path)
        except Exception as exc:
            raise FinetuneError(f"cannot load Hub metric '{self.options.path}': {exc}") from exc

    def compute(self, predictions, references) -> dict[str, float]:
        result = self._metric.compute(predictions=predictions, references=references)  # a Hub module: its public API
        if self.options.key not in result:
            raise FinetuneError(f"Hub metric '{self.options.path}' returned no '{self.options.key}': {list(result)}")
        return {self.options.key: float(result[self.options.key])}


@hookimpl
def register_metrics(register):
    for cls in (Accuracy, Precision, Recall, F1, Perplexity, MSE, MAE, EntityF1, EntityPrecision, EntityRecall,
                TokenAccuracy, ExactMatch, Bleu, Rouge, HubMetric):  # fmt: skip
        register(cls)
