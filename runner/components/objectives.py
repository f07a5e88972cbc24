"""Preference objectives (`[objective] type = ...`): the loss of each preference pair, written by a plugin.

A trainer of preference pairs that takes objectives (`Trainer.takes_objective`: trainer `dpo`) does the
forward passes — the policy's and the reference's, however the reference is kept — and hands the
objective each pair's summed answer log-probabilities; the objective returns one loss per pair, which
the trainer averages and back-propagates. An objective is thus a few lines of tensor arithmetic over
`PairLogProbs`, declared with its own options like any component:

    class MarginDPO(PairObjective):
        name = "margin_dpo"
        Options = MarginOptions  # gamma: the margin

        def losses(self, pairs):
            return -F.logsigmoid(pairs.beta * pairs.margins() - self.options.gamma)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runner.components.base import Component
from runner.options import Options

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class PairLogProbs:
    """One batch of pairs, each a tensor of shape [pairs]: the summed log-probabilities of the chosen
    and the rejected answer's tokens (the prompt is not scored) under the policy being trained (with
    gradients) and under the reference (without), and each answer's length in tokens; `beta`, the
    trainer's scale of the implicit reward (its `beta` option), which its reward figures use too."""

    chosen: Tensor
    rejected: Tensor
    reference_chosen: Tensor
    reference_rejected: Tensor
    chosen_tokens: Tensor
    rejected_tokens: Tensor
    beta: float

    def margins(self) -> Tensor:
        """DPO's implicit reward margin before beta: (log pi(c) - log ref(c)) - (log pi(r) - log ref(r))."""
        return (self.chosen - self.reference_chosen) - (self.rejected - self.reference_rejected)


class PairObjective(Component):
    """A preference loss computed from each pair's log-probabilities under the policy and the reference."""

    kind = "objective"
    Options = Options

    def losses(self, pairs: PairLogProbs) -> Tensor:
        """The loss of each pair, a tensor of shape [pairs] (the trainer takes its mean)."""
        raise NotImplementedError

    @classmethod
    def check(cls, options: Options, recipe: Any) -> Iterable[tuple[tuple, str]]:
        if not getattr(recipe.training.cls, "takes_objective", False):
            yield (
                ("type",),
                f"objective '{cls.name}' needs a trainer that takes a preference objective (trainer 'dpo'); "
                f"trainer '{recipe.training.name}' computes its own loss",
            )
