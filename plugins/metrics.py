"""Metrics through the `evaluate` library, shipped as local modules so they work offline.

`accuracy`, `precision`, `recall`, `f1` (classes), `perplexity` (language models), `mse`, `mae`
(regression), `entity_f1`, `entity_precision`, `entity_recall`, `token_accuracy` (BIO tagging).
`evaluate_hub` loads a metric from the Hub by name; since a Hub metric is code downloaded at run
time, it needs `--trust-remote-code` on the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from runner import FinetuneError, Metric, Options, hookimpl

MODULES = Path(__file__).parent / "metric_modules"


class NoOptions(Options):
    pass


class AverageOptions(Options):
    average: Literal["macro", "weighted", "micro"] = Field(
        default="macro", description="How per-class scores combine: 'macro', 'weighted' or 'micro'."
    )


class _LocalMetric(Metric):
    Options = NoOptions
    module = ""

    def prepare(self, ctx) -> None:
        import evaluate

        self._metric = evaluate.load(str(MODULES / self.module))

    def _args(self) -> dict:
        return {}

    def compute(self, predictions, references) -> dict[str, float]:
        if not hasattr(self, "_metric"):
            self.prepare(None)
        result = self._metric.compute(predictions=predictions, references=references, **self._args())
        return {self.key(): float(result[self.module])}


class Accuracy(_LocalMetric):
    """Accuracy: the share of correct predictions."""

    name = module = "accuracy"
    consumes = frozenset({"classes"})


class _Averaged(_LocalMetric):
    Options = AverageOptions
    consumes = frozenset({"classes"})

    def key(self) -> str:
        return f"{self.name}_{self.options.average}"

    def _args(self) -> dict:
        return {"average": self.options.average}


class Precision(_Averaged):
    """Precision, averaged over classes (macro, weighted or micro)."""

    name = module = "precision"


class Recall(_Averaged):
    """Recall, averaged over classes (macro, weighted or micro)."""

    name = module = "recall"


class F1(_Averaged):
    """F1 score, averaged over classes (macro, weighted or micro)."""

    name = module = "f1"


class Perplexity(_LocalMetric):
    """Perplexity: exp of the mean token loss, weighted by tokens."""

    name = module = "perplexity"
    consumes = frozenset({"tokens"})
    greater_is_better = False


class MSE(_LocalMetric):
    """Mean squared error."""

    name = module = "mse"
    consumes = frozenset({"scores"})
    greater_is_better = False


class MAE(_LocalMetric):
    """Mean absolute error."""

    name = module = "mae"
    consumes = frozenset({"scores"})
    greater_is_better = False


class _Entities(_LocalMetric):
    """Scores one figure of the entity-level module (BIO tags, strict spans, micro-averaged)."""

    module = "entities"
    consumes = frozenset({"tags"})

    def compute(self, predictions, references) -> dict[str, float]:
        if not hasattr(self, "_metric"):
            self.prepare(None)
        return {self.key(): float(self._metric.compute(predictions=predictions, references=references)[self.name])}


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


class HubMetricOptions(Options):
    path: str = Field(description="Metric name or id on the Hub, e.g. 'matthews_correlation'.")
    key: str = Field(description="Which value of its result to report, e.g. 'matthews_correlation'.")
    consumes: Literal["classes", "scores", "tokens", "tags"] = Field(
        default="classes", description="Which task predictions it scores."
    )
    greater_is_better: bool = Field(default=True, description="Whether a higher value is better.")


class HubMetric(Metric):
    """Any `evaluate` metric from the Hub (code downloaded at run time: needs --trust-remote-code)."""

    name = "evaluate_hub"
    Options = HubMetricOptions
    consumes = frozenset({"classes", "scores", "tokens", "tags"})

    @classmethod
    def check(cls, options, recipe):
        if options.consumes != recipe.task.cls.produces:
            yield ("consumes",), f"task '{recipe.task.name}' produces {recipe.task.cls.produces}"

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
        result = self._metric.compute(predictions=predictions, references=references)
        if self.options.key not in result:
            raise FinetuneError(f"Hub metric '{self.options.path}' returned no '{self.options.key}': {list(result)}")
        return {self.options.key: float(result[self.options.key])}


@hookimpl
def register_metrics(register):
    for cls in (Accuracy, Precision, Recall, F1, Perplexity, MSE, MAE, EntityF1, EntityPrecision, EntityRecall,
                TokenAccuracy, HubMetric):  # fmt: skip
        register(cls)
