"""Metrics `reward_accuracy`, `reward_margin` and `likelihood_accuracy` of preference pairs, registered by
trainer `dpo` (plugins/trainers/dpo.py), so that the core's bootstrap gives them test intervals.

What they consume (task `produces` "preferences"): per held-out pair, predictions (rows, 2) of the
implicit reward margin beta * [(log pi(c) - log ref(c)) - (log pi(r) - log ref(r))] and the policy's
log pi(c) - log pi(r), as `pair_table` lays them out; references are ones (the chosen answer is the
preferred one). The trainer hands them to the core's `compute_metrics` (the task's `metric_inputs`
passing them on) after each evaluation that has a reference to measure the reward against.
"""

from __future__ import annotations

from runner import Metric, Options


class PairMetricOptions(Options):
    pass


class _PairMetric(Metric):
    Options = PairMetricOptions
    consumes = frozenset({"preferences"})
    column = 0  # 0: the implicit reward margin, 1: the policy's log-probability difference

    def compute(self, predictions, references) -> dict[str, float]:
        import numpy as np

        values = np.asarray(predictions, dtype=np.float64).reshape(-1, 2)[:, self.column]
        if len(values) and np.isnan(values).all():
            return {}  # a figure these rows do not have (unpaired KTO rows: no pair to compare likelihoods of)
        values = values[~np.isnan(values)]
        return {self.key(): float(self.reduce(values)) if len(values) else float("nan")}

    def reduce(self, values):
        return (values > 0).mean()


class RewardAccuracy(_PairMetric):
    """Share of pairs whose implicit reward (policy against reference) prefers the chosen answer."""

    name = "reward_accuracy"


class RewardMargin(_PairMetric):
    """Mean implicit reward of the chosen answer minus the rejected one's."""

    name = "reward_margin"

    def reduce(self, values):
        return values.mean()


class LikelihoodAccuracy(_PairMetric):
    """Share of pairs whose chosen answer the model finds likelier than the rejected one."""

    name = "likelihood_accuracy"
    column = 1


METRICS = (RewardAccuracy, RewardMargin, LikelihoodAccuracy)


def pair_table(policy, reference, beta: float):
    """(predictions, references) as the metrics above take them, from the pair log-probabilities of
    the policy and the reference (each a pair of tensors: chosen, rejected)."""
    import numpy as np

    pc, pr = policy
    rc, rr = reference
    margin = beta * ((pc - rc) - (pr - rr))
    predictions = np.stack([margin.double().numpy(), (pc - pr).double().numpy()], axis=1)
    return predictions, np.ones(len(predictions), dtype=np.int64)
