"""Trainer `reward`: a scalar reward model (Bradley-Terry) on preference pairs, on TRL's `RewardTrainer`.

On the preference task's pairs it trains, instead of the language model the task asks for, the same
base with a sequence-classification head of one output (`model_spec`): its score of prompt + answer,
read at the last token, is trained so that chosen scores above rejected (loss -log sigmoid(r_c - r_r)).
The run saves a plain transformers sequence classifier (num_labels = 1) that
`AutoModelForSequenceClassification.from_pretrained(run/model)` loads; with an adapter strategy
(LoRA...), an adapter whose `score` head trains in full and is saved with it (peft's SEQ_CLS task).

It is trainer `hf` (plugins/trainers/hf.py) underneath: the same options, precision, checkpoints,
resume, Ctrl-C stop and NaN check (its `Trainer` subclass is made on `RewardTrainer`,
plugins/trainers/_reward.py). Evaluation reports, on held-out pairs, `reward_accuracy` (the share
of pairs scored chosen above rejected) and `reward_margin` (the mean score difference), with
bootstrap intervals through the metrics trainer `dpo` registers; the baseline is the untouched base
with its freshly initialised head. Later recipes use the model through reward `reward_model` or
audit `win_rate` (plugins/rewards/_reward_model.py loads it), or `runner.open_run(run).load()`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import ClassVar

from pydantic import Field

from plugins.trainers._hf_trainer import LOGGED
from plugins.trainers._preference import trl_missing
from plugins.trainers._reward import (
    REWARD_KEYS,
    TRL_ONLY,
    collator_for,
    make_reward_trainer_class,
    pair_rewards,
    pair_table,
    reward_scores,
    whole_pairs,
)
from plugins.trainers.hf import HF, HFTrainerOptions
from runner import ModelSpec, NonNegativeFloat, PositiveFloat, hookimpl

# Metrics of the preference task that need a language model (a likelihood, generated text).
NEEDS_LANGUAGE_MODEL = ("likelihood_accuracy",)


class RewardOptions(HFTrainerOptions):
    learning_rate: PositiveFloat = Field(default=1e-4, description="Peak learning rate (TRL's RewardConfig default).")
    center_rewards_coefficient: NonNegativeFloat | None = Field(
        default=None,
        description="Weight of a penalty on the squared sum of the pair's scores, which keeps rewards centred "
        "on 0 (Eisenstein et al. 2023; TRL suggests 0.01); unset: none.",
    )


class Reward(HF):
    """A scalar reward model (Bradley-Terry) trained on chosen/rejected pairs, with TRL's RewardTrainer."""

    name = "reward"
    Options = RewardOptions
    preference_pairs = True
    sequences_per_row = 2  # each pair's two answers
    trainer_metrics = REWARD_KEYS
    logged = (*LOGGED, "accuracy", "margin", "mean_reward")
    aliases: ClassVar[dict[str, str]] = {**HF.aliases, "center_rewards": "center_rewards_coefficient"}

    @classmethod
    def check(cls, options, recipe):
        yield from super().check(options, recipe)
        yield from trl_missing(cls.name)
        # likelihood_accuracy (one of the preference task's default metrics, written out in a run's
        # resolved recipe) gives no figure for a reward model, which has no likelihood; it cannot decide "best"
        if options.best_metric in NEEDS_LANGUAGE_MODEL:
            yield (
                ("best_metric",),
                f"a reward model has no likelihood: '{options.best_metric}' gives no figure; "
                "use reward_accuracy, reward_margin or loss",
            )
        for spec in recipe.metrics:
            if spec.cls.consumes == {"text"}:
                yield (
                    ("type",),
                    f"training.type = 'reward' trains a reward model, a sequence scorer that generates no text: "
                    f"metric '{spec.name}' scores generated answers; use reward_accuracy and reward_margin",
                )

    def model_spec(self, spec: ModelSpec) -> ModelSpec:
        """The base model with a one-output sequence-classification head: the reward of prompt + answer."""
        return dataclasses.replace(
            spec, head="sequence_classification", num_labels=1, id2label=None, label2id=None, problem_type=None
        )

    # -- the trainer ---------------------------------------------------------------------------------
    def _make_trainer(self, job, has_eval: bool, callbacks: list):
        from trl import RewardConfig

        config = RewardConfig(
            **self._argument_values(job, has_eval),
            center_rewards_coefficient=self.options.center_rewards_coefficient,
            max_length=None,  # the task has cut the pairs to the tokenizer's max_length already
        )
        return make_reward_trainer_class()(
            model=job.model,
            args=config,
            train_dataset=whole_pairs(job.train),
            eval_dataset=whole_pairs(job.evaluation),
            data_collator=collator_for(job),
            processing_class=job.tokenizer,
            callbacks=callbacks,
        )

    # -- evaluation ----------------------------------------------------------------------------------
    def evaluate(self, job, dataset) -> dict[str, float]:
        trainer = getattr(self, "_last", None)
        if trainer is None or trainer.model is not job.model:
            return self._evaluate_alone(job, dataset)
        marked = hasattr(job.model, "_is_accelerate_prepared")
        metrics = trainer.evaluate(eval_dataset=whole_pairs(dataset), metric_key_prefix="eval")
        if not marked and hasattr(job.model, "_is_accelerate_prepared"):
            del job.model._is_accelerate_prepared  # as trainer hf: a later fit must wrap the model again
        self._hand_over(job, *trainer.last_pairs)
        found = {k.removeprefix("eval_"): v for k, v in metrics.items()}
        return {k: v for k, v in found.items() if k not in TRL_ONLY}

    def _evaluate_alone(self, job, dataset) -> dict[str, float]:
        """A model no reward trainer of this process trains: the untouched base with its fresh head (the
        baseline), or a finished run's model (`finetune eval`)."""
        batch = self.options.eval_batch_size or 2 * self.options.batch_size
        pairs = pair_rewards(job.model, whole_pairs(dataset), collator_for(job), batch)
        self._hand_over(job, *pairs)
        return reward_scores(*pairs, self.options.center_rewards_coefficient)

    def _hand_over(self, job, chosen, rejected) -> None:
        """Give the per-pair score differences to the core's `compute_metrics` (through the task's
        `metric_inputs`), which keeps them for the test intervals of the preference metrics."""
        if not callable(job.compute_metrics):
            return
        from transformers import EvalPrediction

        predictions, references = pair_table(chosen, rejected)
        with contextlib.suppress(NotImplementedError):  # Task.metric_inputs not implemented
            job.compute_metrics(EvalPrediction(predictions=predictions, label_ids=references))


@hookimpl
def register_trainers(register):
    register(Reward)
