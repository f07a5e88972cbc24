"""Reward `reward_model`: a trained reward model's score of the prompt and the completion.

`path` names the reward model exactly as the `win_rate` audit's `reward_model` does
(plugins/rewards/_reward_model.py): a completed `[training] type = "reward"` run (or a folder of
runs: its newest), a folder with a one-output sequence classifier (or a PEFT adapter over one), or a
Hub id. Validation checks a local one without loading it; `prepare` loads it (on the process's GPU
when there is one) before training starts, and `close` frees it.

The model reads the prompt as the policy saw it (its chat template applied), the completion and the
reward model's end-of-sequence token, as text (`RewardModel.ids` without messages): the way this
runner's reward training reads a pair rendered by the same template. A sequence longer than the
model's positions keeps its end; the run is told how many were cut.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field

from plugins.rewards import _reward_model
from runner import FinetuneError, Reward, RewardOptions, hookimpl


class RewardModelOptions(RewardOptions):
    """Options of the `reward_model` reward."""

    path: str = Field(
        min_length=1,
        description="The reward model: a completed reward-model run directory (or a folder of runs: its newest), a "
        "folder with a transformers sequence-classification model of one output (or a PEFT adapter over one), or a "
        "Hub id. Relative to the working directory.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32", description="Weights dtype of the reward model while it scores."
    )


def _device() -> str:
    """This process's GPU (LOCAL_RANK's, under a launcher), else the CPU."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


class RewardModelScore(Reward):
    """A trained reward model's score of the prompt and the sampled answer."""

    name = "reward_model"
    Options = RewardModelOptions

    def __init__(self, options: RewardModelOptions):
        super().__init__(options)
        self.model: _reward_model.RewardModel | None = None
        self.warn = print
        self.cut = 0

    @classmethod
    def check(cls, options, recipe):
        yield from super().check(options, recipe)
        problem = _reward_model.check(options.path)
        if problem:
            yield ("path",), problem

    def prepare(self, ctx) -> None:
        if self.model is None:
            self.model = _reward_model.RewardModel(self.options.path, _device(), self.options.dtype)
        self.warn = ctx.warn
        ctx.info(f"reward '{self.key()}': reward model {self.model.found.model} loaded")

    def scores(self, prompts: list[str], completions: list[str], rows: list[dict[str, Any]]) -> list[float | None]:
        if self.model is None:
            raise FinetuneError(f"reward '{self.key()}' scored before its reward model was loaded (`prepare`)")
        sequences = [self.model.ids(p, None, c) for p, c in zip(prompts, completions, strict=True)]
        scores, cut = self.model.scores(sequences)
        if cut and not self.cut:  # said once: it is the same every step for the same lengths
            self.warn(
                f"reward '{self.key()}': {cut} of {len(sequences)} answers with their prompt are longer than the "
                f"reward model's {self.model.limit} positions: it read their ends only"
            )
        self.cut += cut
        return list(scores)

    def close(self) -> None:
        if self.model is not None:
            self.model.close()
            self.model = None


@hookimpl
def register_rewards(register):
    register(RewardModelScore)
