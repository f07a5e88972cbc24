"""`evaluate_hub`: any `evaluate` metric from the Hub, which is code downloaded at run time."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from runner import FinetuneError, Metric, Options


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
