"""What the preference trainers beside `dpo` share (`kto`, plugins/trainers/kto.py; `orpo`, `cpo` and
`simpo`, plugins/trainers/orpo.py): trainer `hf`'s machinery with a TRL trainer underneath, the
TRL check, and the evaluation plumbing trainer `dpo` has too: TRL's own figures of a held-out
set, the preference metrics (plugins/trainers/_preference_metrics.py) computed by the trainer class
after each evaluation loop (`scores`), and their per-row table handed to the core's
`compute_metrics` for the bootstrap intervals.

A trainer class made here keeps, after each evaluation, `last_table`: (predictions, references) as
the preference metrics take them, or None.
"""

from __future__ import annotations

import contextlib
from typing import ClassVar

from plugins.trainers._preference import PREFERENCE_KEYS, TRL_ONLY, trl_missing
from plugins.trainers.hf import HF


class PreferenceTrainer(HF):
    """Trainer `hf` with a TRL preference trainer (its `Trainer` class made by `trainer_class`)."""

    preference_pairs = True
    sequences_per_row = 2  # each pair's two answers
    trainer_metrics = PREFERENCE_KEYS
    # What TRL calls it, for the messages.
    objective: ClassVar[str] = ""

    @classmethod
    def check(cls, options, recipe):
        yield from super().check(options, recipe)
        yield from trl_missing(cls.name)

    # -- evaluation ----------------------------------------------------------------------------------
    def evaluate(self, job, dataset) -> dict[str, float]:
        trainer = getattr(self, "_last", None)
        if trainer is None or trainer.model is not job.model:
            return self._evaluate_alone(job, dataset)
        marked = hasattr(job.model, "_is_accelerate_prepared")
        metrics = self._trainer_evaluate(job, trainer, dataset)
        if not marked and hasattr(job.model, "_is_accelerate_prepared"):
            del job.model._is_accelerate_prepared  # as trainer hf: a later fit must wrap the model again
        self._hand_over(job, getattr(trainer, "last_table", None))
        found = {k.removeprefix("eval_"): v for k, v in metrics.items()}
        return {k: v for k, v in found.items() if k not in TRL_ONLY and not k.startswith("logits/")}

    def _trainer_evaluate(self, job, trainer, dataset) -> dict[str, float]:
        return trainer.evaluate(eval_dataset=dataset, metric_key_prefix="eval")

    def _evaluate_alone(self, job, dataset) -> dict[str, float]:
        """A model no trainer of this process trains: the untouched base (a baseline) or a finished
        run's model (`finetune eval`)."""
        raise NotImplementedError

    def _hand_over(self, job, table) -> None:
        """Give the per-row figures to the core's `compute_metrics`, which keeps them for the test
        intervals (through the task's `metric_inputs`; a task without it gets no intervals)."""
        if table is None or not callable(job.compute_metrics):
            return
        from transformers import EvalPrediction

        with contextlib.suppress(NotImplementedError):  # Task.metric_inputs not implemented
            job.compute_metrics(EvalPrediction(predictions=table[0], label_ids=table[1]))


def table(margin, difference):
    """(predictions, references) as the preference metrics take them: per row the reward margin
    (column 0: reward_accuracy, reward_margin) and the policy's log-probability difference chosen -
    rejected (column 1: likelihood_accuracy; NaN where a row has none); references are ones."""
    import numpy as np

    margin = margin.double().numpy()
    difference = np.full(len(margin), np.nan) if difference is None else difference.double().numpy()
    return np.stack([margin, difference], axis=1), np.ones(len(margin), dtype=np.int64)
