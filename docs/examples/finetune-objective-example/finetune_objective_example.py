"""An example third-party preference objective for finetune-runner: `margin_dpo`.

DPO asks the implicit reward of the chosen answer to exceed the rejected one's; `margin_dpo` asks it
to exceed it by a margin `gamma` (as SimPO's target reward margin, but on DPO's reference-relative
rewards):

    loss = -log sigmoid(beta * [(log pi(c) - log ref(c)) - (log pi(r) - log ref(r))] - gamma)

With gamma = 0 it is DPO's sigmoid loss exactly. A recipe uses it with trainer `dpo`, whose `beta`
scales the implicit reward (of the loss, and of the reward figures the trainer reports):

    [training]
    type = "dpo"
    beta = 0.1

    [objective]
    type = "margin_dpo"
    gamma = 0.5

The trainer does the forward passes (the policy's, the reference's however the recipe keeps it) and
hands the objective each pair's log-probabilities; this module is the loss and nothing else. It uses
only the public API (`from runner import ...`) and imports torch inside `losses`, so that loading the
plugin, as `finetune validate` does, imports no torch.
"""

from __future__ import annotations

from pydantic import Field

from runner import NonNegativeFloat, Options, PairLogProbs, PairObjective, hookimpl

__version__ = "0.1.0"


class MarginOptions(Options):
    gamma: NonNegativeFloat = Field(
        default=0.5, description="The margin the chosen answer's scaled reward must clear (0: plain DPO)."
    )


class MarginDPO(PairObjective):
    """DPO with a target reward margin: -log sigmoid(beta * margin - gamma)."""

    name = "margin_dpo"
    Options = MarginOptions

    def losses(self, pairs: PairLogProbs):
        import torch.nn.functional as F

        return -F.logsigmoid(pairs.beta * pairs.margins() - self.options.gamma)


@hookimpl
def register_objectives(register):
    register(MarginDPO)
