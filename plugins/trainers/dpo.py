"""Trainer `dpo`: direct preference optimisation and its variants, on TRL's `DPOTrainer`.

It is trainer `hf` (plugins/trainers/hf.py) with TRL's loss: the same options, arguments, engine
settings, precision, checkpoints, resume, Ctrl-C stop and NaN check (its `Trainer` subclass is made on
`DPOTrainer`, plugins/trainers/_preference.py), plus the objective's own knobs and the reference:

- "auto": with an adapter strategy (LoRA, QLoRA) the base with the adapters switched off, which costs
  no memory; with full fine-tuning a frozen copy of the model as it starts;
- "copy": always a frozen copy (twice the weights in memory, no optimizer states);
- "precomputed": the reference's log-probabilities of every training and validation pair computed
  once before training, and no reference in memory during it.

Evaluation reports, on held-out pairs, `reward_accuracy` and `reward_margin` (the implicit reward
beta * [(log pi(c) - log ref(c)) - (log pi(r) - log ref(r))]) and `likelihood_accuracy` (log pi(c) >
log pi(r)), besides TRL's loss and rewards/*. The untouched base model is its own reference, so its
implicit reward is 0 for every pair: its baseline row has likelihood_accuracy alone.
"""

from __future__ import annotations

import contextlib
from typing import ClassVar, Literal

from pydantic import Field

from plugins.trainers._hf_trainer import LOGGED
from plugins.trainers._preference import (
    PREFERENCE_KEYS,
    REWARD_KEYS,
    TRL_ONLY,
    pair_log_probs,
    preference_scores,
    trl_missing,
)
from plugins.trainers._preference_metrics import METRICS, pair_table
from plugins.trainers._reference import drop_fresh_adapter_copy, frozen_reference, keeps_copy, reference_problems
from plugins.trainers.hf import HF, HFTrainerOptions
from runner import PositiveFloat, hookimpl

# TRL 1.16's DPO losses (dpo_config.py:245-253, dpo_trainer.py:1386-1516).
LossType = Literal[
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
]
# The losses that read label_smoothing (dpo_trainer.py:1406-1465); the others ignore it.
SMOOTHED = ("robust", "exo_pair", "aot", "aot_unpaired")


class DPOOptions(HFTrainerOptions):
    learning_rate: PositiveFloat = Field(
        default=1e-6, description="Peak learning rate (TRL's DPO default: far lower than supervised tuning's)."
    )
    beta: PositiveFloat = Field(
        default=0.1,
        description="How far the policy may move from the reference (higher: less). For 'ipo' the "
        "regularisation tau of the IPO paper.",
    )
    loss_type: LossType = Field(
        default="sigmoid",
        description="The objective: 'sigmoid' (DPO), 'ipo', 'hinge' (SLiC), 'robust' (rDPO, noisy labels), "
        "'exo_pair', 'nca_pair', 'bco_pair', 'sppo_hard', 'aot', 'aot_unpaired', 'apo_zero' (chosen better than "
        "the model's own answers), 'apo_down' (worse), 'discopop', 'sigmoid_norm' (length-normalised DPO), 'sft'.",
    )
    label_smoothing: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description="Share of preference labels assumed flipped: 'robust' (below 0.5; the paper suggests 0.1), "
        "'exo_pair' (must be above 0; the paper suggests 1e-3), 'aot', 'aot_unpaired'. Other losses ignore it.",
    )
    reference: Literal["auto", "copy", "precomputed"] = Field(
        default="auto",
        description="The reference model: 'auto' (with adapters the base with them switched off, else a "
        "frozen copy), 'copy' (a frozen copy), or 'precomputed' (its log-probabilities computed once before "
        "training; nothing kept in memory).",
    )
    sft_weight: float = Field(
        default=0.0,
        ge=0.0,
        description="RPO: add the chosen answers' negative log-likelihood (per token) with this weight (the paper: "
        "1.0). DPO alone may lower the likelihood of both answers and so degrade what the model generates; this "
        "keeps the chosen ones likely. 0: off.",
    )
    ld_alpha: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="LD-DPO: weight of the answer tokens beyond the shorter answer's length (less verbosity "
        "bias); unset: plain DPO.",
    )


class DPO(HF):
    """Preference tuning (DPO, IPO, robust, hinge, ...) on chosen/rejected pairs, with TRL's DPOTrainer."""

    name = "dpo"
    Options = DPOOptions
    preference_pairs = True
    sequences_per_row = 2  # each pair's two answers
    takes_objective = True  # `[objective]`: a plugin's pair loss in place of loss_type
    trainer_metrics = PREFERENCE_KEYS
    logged = (*LOGGED, "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")
    # TRL reads transformers' old property name when it switches gradient checkpointing off around
    # the reference's forward pass (trl/models/utils.py): a deprecation that asks nothing of the user.
    quiet_warnings = ("`is_gradient_checkpointing` is deprecated",)
    aliases: ClassVar[dict[str, str]] = {
        **HF.aliases,
        "precompute_ref_log_probs": "reference",
        "ref_model": "reference",
        "dpo_beta": "beta",
        "pref_beta": "beta",
        "pref_loss": "loss_type",
    }

    def __init__(self, options):
        super().__init__(options)
        # The base model's pair log-probabilities per dataset (fingerprint), kept from its evaluation as
        # the baseline: the reference of a 'precomputed' run for the splits training never saw.
        self.kept_reference: dict = {}

    @classmethod
    def check(cls, options, recipe):
        yield from super().check(options, recipe)
        yield from trl_missing(cls.name)
        loss, smoothing = options.loss_type, options.label_smoothing
        if smoothing and loss not in SMOOTHED:
            yield (
                ("label_smoothing",),
                f"loss_type '{loss}' ignores label_smoothing; it is read by {', '.join(SMOOTHED)} only",
            )
        if loss == "robust" and smoothing >= 0.5:
            yield (("label_smoothing",), f"loss_type 'robust' needs label_smoothing below 0.5 (got {smoothing:g})")
        yield from reference_problems(options, recipe)
        if options.sft_weight and loss == "sft":
            yield (("sft_weight",), "loss_type 'sft' is the chosen answers' likelihood alone: sft_weight adds it again")
        if loss == "exo_pair" and not smoothing:
            yield (("label_smoothing",), "loss_type 'exo_pair' needs label_smoothing above 0 (the paper uses 1e-3)")
        objective = getattr(recipe, "objective", None)
        for key in ("loss_type", "label_smoothing", "ld_alpha", "sft_weight"):
            if objective is not None and key in options.model_fields_set:
                yield ((key,), f"[objective] '{objective.name}' is the loss: {key} would be ignored; remove one")

    # -- the trainer ---------------------------------------------------------------------------------
    def _make_trainer(self, job, has_eval: bool, callbacks: list):
        from trl import DPOConfig

        from plugins.trainers._preference import make_dpo_trainer_class

        o = self.options
        reference = frozen_reference(job.model, o.reference)
        config = DPOConfig(
            **self._argument_values(job, has_eval),
            beta=o.beta,
            loss_type=[o.loss_type, "sft"] if o.sft_weight else [o.loss_type],
            loss_weights=[1.0, o.sft_weight] if o.sft_weight else None,
            label_smoothing=o.label_smoothing,
            ld_alpha=o.ld_alpha,
            precompute_ref_log_probs=o.reference == "precomputed",
            max_length=None,  # the task has cut the pairs to the tokenizer's max_length already
        )
        trainer = make_dpo_trainer_class()(
            model=job.model,
            ref_model=reference,
            args=config,
            train_dataset=job.train,
            eval_dataset=job.evaluation,
            data_collator=job.collator,
            processing_class=job.tokenizer,
            callbacks=callbacks,
        )
        drop_fresh_adapter_copy(job.model, reference)
        trainer.reference_logps = self.kept_reference
        trainer.objective = job.objective
        return trainer

    def frozen_copies(self, strategy) -> int:
        """The reference a plan counts: a frozen copy ('copy', or 'auto' without adapters, whose
        reference is the base with them switched off); 'precomputed' keeps none while training."""
        return int(keeps_copy(self.options.reference, strategy))

    # -- evaluation ----------------------------------------------------------------------------------
    def evaluate(self, job, dataset) -> dict[str, float]:
        trainer = getattr(self, "_last", None)
        if trainer is None or trainer.model is not job.model:
            return self._evaluate_alone(job, dataset)
        if "ref_chosen_logps" not in dataset.column_names and self._reference_gone(trainer):
            kept = self.kept_reference.get(dataset._fingerprint)
            if kept is None:  # neither kept nor computable: the policy's own scores only
                return self._evaluate_alone(job, dataset)
            dataset = dataset.add_column("ref_chosen_logps", kept[0].tolist())
            dataset = dataset.add_column("ref_rejected_logps", kept[1].tolist())
        marked = hasattr(job.model, "_is_accelerate_prepared")
        metrics = trainer.evaluate(eval_dataset=dataset, metric_key_prefix="eval")
        if not marked and hasattr(job.model, "_is_accelerate_prepared"):
            del job.model._is_accelerate_prepared  # as trainer hf: a later fit must wrap the model again
        self._hand_over(job, *trainer.last_pairs)
        found = {k.removeprefix("eval_"): v for k, v in metrics.items()}
        return {k: v for k, v in found.items() if k not in TRL_ONLY and not k.startswith("logits/")}

    def _hand_over(self, job, policy, reference) -> None:
        """Give the per-pair figures to the core's `compute_metrics`, which keeps them for the test
        intervals of the metrics that consume preferences (plugins/trainers/_preference_metrics.py).
        It passes them through the task's `metric_inputs`; a task that does not implement it gets
        no intervals. Without a reference there is no implicit reward to resample."""
        if reference is None or not callable(job.compute_metrics):
            return
        from transformers import EvalPrediction

        predictions, references = pair_table(policy, reference, self.options.beta)
        with contextlib.suppress(NotImplementedError):  # Task.metric_inputs not implemented
            job.compute_metrics(EvalPrediction(predictions=predictions, label_ids=references))

    def _reference_gone(self, trainer) -> bool:
        """A 'precomputed' full fine-tuning run keeps no reference after training starts."""
        return trainer.precompute_ref_logps and trainer.ref_model is None and not hasattr(trainer.model, "peft_config")

    def _evaluate_alone(self, job, dataset) -> dict[str, float]:
        """A model no DPO trainer of this process trains: the untouched base (a baseline) or a finished
        run's model (`finetune eval`). With adapters the reference is the base with them off; otherwise
        the model is taken as its own reference, whose implicit reward is 0 for every pair, so the
        reward metrics are left out rather than shown as a 0 margin."""
        batch = self.options.eval_batch_size or 2 * self.options.batch_size
        policy = pair_log_probs(job.model, dataset, job.collator, batch)
        reference = None
        if hasattr(job.model, "disable_adapter"):
            with job.model.disable_adapter():
                reference = pair_log_probs(job.model, dataset, job.collator, batch)
        elif getattr(self, "_last", None) is None and getattr(dataset, "_fingerprint", None) is not None:
            self.kept_reference[dataset._fingerprint] = policy  # before any training: the reference
        self._hand_over(job, policy, reference)
        scores = preference_scores(policy, reference, self.options.beta)
        return {k: v for k, v in scores.items() if reference is not None or k not in REWARD_KEYS}


@hookimpl
def register_trainers(register):
    register(DPO)


@hookimpl
def register_metrics(register):
    for metric in METRICS:
        register(metric)
