"""Trainers `orpo`, `cpo` and `simpo`: reference-free preference tuning on TRL's `ORPOTrainer` and
`CPOTrainer` (trl.experimental in TRL 1.16).

Each is trainer `hf` (plugins/trainers/hf.py) with TRL's loss, on the preference task's pairs. None
keeps a reference model: the loss reads the policy alone, so `finetune plan` counts no frozen copy
and the untouched base model gets every metric, the reward ones included.

- `orpo` (odds-ratio preference optimisation): the chosen answer's negative log-likelihood plus
  beta x the log-sigmoid of the log odds ratio between chosen and rejected; supervised tuning and
  preference tuning in one step, from a base model that was not tuned first.
- `cpo` (contrastive preference optimisation): a DPO-style loss on the policy's log-probabilities
  (`loss_type` sigmoid, hinge, ipo, or simpo) plus cpo_alpha x the chosen answer's NLL.
- `simpo`: trainer `cpo` with loss_type 'simpo' (length-normalised log-probabilities, a target
  margin simpo_gamma) and no NLL term, at the SimPO paper's beta and gamma.

Evaluation reports, on held-out pairs, `reward_accuracy` and `reward_margin` of the objective's
own reward, as TRL logs it: beta x the answer's log-probability, averaged over its tokens (ORPO;
CPO with ipo or simpo) or summed (CPO with sigmoid or hinge); `likelihood_accuracy` (summed log
pi(c) > log pi(r)); and TRL's loss, rewards/chosen, rewards/rejected, logps/*, nll_loss (ORPO:
log_odds_ratio, log_odds_chosen).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from plugins.trainers._hf_trainer import LOGGED
from plugins.trainers._preference_trainers import PreferenceTrainer, table
from plugins.trainers.hf import HFTrainerOptions
from runner import NonNegativeFloat, PositiveFloat, hookimpl

UNCUT = 2**31 - 1
EXPERIMENTAL = "You are importing from 'trl.experimental'"


class ORPOOptions(HFTrainerOptions):
    learning_rate: PositiveFloat = Field(default=1e-6, description="Peak learning rate (TRL's default).")
    beta: PositiveFloat = Field(
        default=0.1,
        description="Weight of the odds-ratio term against the chosen answer's NLL (the paper's lambda).",
    )


class CPOOptions(HFTrainerOptions):
    learning_rate: PositiveFloat = Field(default=1e-6, description="Peak learning rate (TRL's default).")
    beta: PositiveFloat = Field(
        default=0.1, description="Scale of the log-probability difference in the loss (for 'ipo' the IPO tau)."
    )
    loss_type: Literal["sigmoid", "hinge", "ipo", "simpo"] = Field(
        default="sigmoid",
        description="'sigmoid' (CPO), 'hinge' (SLiC), 'ipo' (averaged log-probabilities), 'simpo' (averaged "
        "log-probabilities and a target margin simpo_gamma).",
    )
    label_smoothing: float = Field(
        default=0.0, ge=0.0, lt=0.5, description="Share of labels assumed flipped ('sigmoid' and 'simpo' only)."
    )
    cpo_alpha: NonNegativeFloat = Field(default=1.0, description="Weight of the chosen answer's NLL term (0: none).")
    simpo_gamma: NonNegativeFloat = Field(
        default=0.5, description="Target reward margin of loss_type 'simpo' (others ignore it)."
    )


class SimPOOptions(CPOOptions):
    beta: PositiveFloat = Field(default=2.0, description="Scale of the averaged log-probabilities (SimPO: 2 to 2.5).")
    loss_type: Literal["simpo"] = Field(default="simpo", description="Always 'simpo' (trainer 'cpo' has the others).")
    cpo_alpha: NonNegativeFloat = Field(
        default=0.0, description="Weight of the chosen answer's NLL term: 0 is SimPO, above 0 CPO-SimPO."
    )
    simpo_gamma: NonNegativeFloat = Field(
        default=1.0, description="Target reward margin (the paper: gamma / beta about 0.5)."
    )


def trl_pair(row: dict) -> dict:
    """A pair encoded by the task as TRL's ORPO/CPO `tokenize_row` lays one out (decoder-only): each
    answer after the prompt, its labels -100 on the prompt."""
    prompt, chosen, rejected = row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]
    out = {"prompt_input_ids": prompt, "prompt_attention_mask": [1] * len(prompt)}
    for name, answer in (("chosen", chosen), ("rejected", rejected)):
        out[f"{name}_input_ids"] = prompt + answer
        out[f"{name}_attention_mask"] = [1] * (len(prompt) + len(answer))
        out[f"{name}_labels"] = [-100] * len(prompt) + answer
    return out


def make_pairwise_trainer_class(kind: str):
    """The hf trainer's `Trainer` subclass on TRL's ORPOTrainer ("orpo") or CPOTrainer ("cpo")."""
    if kind == "orpo":
        from trl.experimental.orpo import ORPOTrainer as base
    else:
        from trl.experimental.cpo import CPOTrainer as base
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from plugins.trainers._hf_trainer import make_trainer_class

    class PreTokenizedPairs(base):
        """TRL's trainer on the task's encoded pairs; each evaluation adds the preference metrics."""

        average = True  # whether the objective's reward averages the answer's log-probabilities

        def tokenize_row(self, feature, model=None):
            # TRL maps every row through this in `__init__` (and `evaluate` below): the task has
            # encoded the pairs (chat template, end-of-turn token, cut to max_length) already, and
            # TRL's text path would add a BOS token to the prompt where the template has none.
            if "prompt_ids" in feature:
                return trl_pair(feature)
            return super().tokenize_row(feature, model)

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            if eval_dataset is not None and "chosen_labels" not in eval_dataset.column_names:
                eval_dataset = eval_dataset.map(trl_pair)  # as `__init__` prepares its eval_dataset
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

        def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, **kw):
            output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, **kw)
            prefix = kw.get("metric_key_prefix", "eval")
            model = self.accelerator.unwrap_model(self.model)
            collator = DataCollatorForPreference(pad_token_id=self.processing_class.pad_token_id)
            scores, self.last_table = objective_scores(
                model, dataloader.dataset, collator, self.args.per_device_eval_batch_size, self.beta, self.average
            )
            output.metrics.update({f"{prefix}_{k}": v for k, v in scores.items()})
            return output

    return make_trainer_class(PreTokenizedPairs)


def objective_scores(model, dataset, collator, batch_size: int, beta: float, average: bool):
    """The preference metrics of reference-free objectives, and their per-pair table: the reward
    is beta x each answer's log-probability (averaged over its tokens with `average`), as TRL's
    rewards/chosen and rewards/rejected; likelihood_accuracy compares the summed log-probabilities."""
    from plugins.trainers._preference import pair_log_probs, preference_scores

    (chosen, rejected), (n_chosen, n_rejected) = pair_log_probs(model, dataset, collator, batch_size, lengths=True)
    if average:
        rewards = beta * chosen / n_chosen.clamp(min=1), beta * rejected / n_rejected.clamp(min=1)
    else:
        rewards = beta * chosen, beta * rejected
    margin = rewards[0] - rewards[1]
    scores = preference_scores((chosen, rejected), None, beta)
    scores.update(reward_accuracy=float((margin > 0).float().mean()), reward_margin=float(margin.mean()))
    return scores, table(margin, chosen - rejected)


class _ReferenceFree(PreferenceTrainer):
    # TRL 1.16 keeps ORPO and CPO in trl.experimental, whose import warns that its API may change: a
    # notice to code written against it (this plugin), nothing a recipe's user can act on.
    quiet_warnings = (EXPERIMENTAL,)
    kind: ClassVar[str] = "cpo"

    def _config(self, job, has_eval: bool):
        raise NotImplementedError

    def _average(self) -> bool:
        return True

    def _make_trainer(self, job, has_eval: bool, callbacks: list):
        import warnings

        with warnings.catch_warnings():  # run directly (a test, a sweep), no recipe filter is set
            warnings.filterwarnings("ignore", message=EXPERIMENTAL)
            cls = make_pairwise_trainer_class(self.kind)
            config = self._config(job, has_eval)
        trainer = cls(
            model=job.model,
            args=config,
            train_dataset=job.train,
            eval_dataset=job.evaluation,
            processing_class=job.tokenizer,
            callbacks=callbacks,
        )
        trainer.average = self._average()
        return trainer

    def _common(self, job, has_eval: bool) -> dict:
        # max_length: the task has cut the pairs to the tokenizer's already; TRL reads it only when it
        # tokenizes text, which it never does here (None would make it warn that it picks 512).
        return dict(**self._argument_values(job, has_eval), beta=self.options.beta, max_length=UNCUT)

    def _evaluate_alone(self, job, dataset) -> dict[str, float]:
        """The objective needs no reference: the base model gets every metric, rewards included."""
        batch = self.options.eval_batch_size or 2 * self.options.batch_size
        scores, found = objective_scores(job.model, dataset, job.collator, batch, self.options.beta, self._average())
        self._hand_over(job, found)
        return scores


class ORPO(_ReferenceFree):
    """Odds-ratio preference optimisation (SFT and preference tuning at once), with TRL's ORPOTrainer."""

    name = "orpo"
    Options = ORPOOptions
    kind = "orpo"
    logged = (*LOGGED, "rewards/chosen", "rewards/rejected", "rewards/margins", "nll_loss", "log_odds_ratio")
    aliases: ClassVar[dict[str, str]] = {**PreferenceTrainer.aliases, "orpo_alpha": "beta", "pref_beta": "beta"}

    def _config(self, job, has_eval: bool):
        from trl.experimental.orpo import ORPOConfig

        return ORPOConfig(**self._common(job, has_eval))


class CPO(_ReferenceFree):
    """Contrastive preference optimisation (and SimPO, with loss_type 'simpo'), with TRL's CPOTrainer."""

    name = "cpo"
    Options = CPOOptions
    logged = (*LOGGED, "rewards/chosen", "rewards/rejected", "rewards/margins", "nll_loss")
    aliases: ClassVar[dict[str, str]] = {**PreferenceTrainer.aliases, "pref_beta": "beta", "pref_loss": "loss_type"}

    @classmethod
    def check(cls, options, recipe):
        yield from super().check(options, recipe)
        loss = options.loss_type
        if options.label_smoothing and loss not in ("sigmoid", "simpo"):
            yield (("label_smoothing",), f"loss_type '{loss}' ignores label_smoothing; sigmoid and simpo read it")
        if "simpo_gamma" in options.model_fields_set and loss != "simpo":
            yield (("simpo_gamma",), f"loss_type '{loss}' ignores simpo_gamma; it is the target margin of 'simpo'")

    def _average(self) -> bool:
        return self.options.loss_type in ("ipo", "simpo")  # as TRL's CPOTrainer (cpo_trainer.py:847-852)

    def _config(self, job, has_eval: bool):
        from trl.experimental.cpo import CPOConfig

        o = self.options
        return CPOConfig(
            **self._common(job, has_eval),
            loss_type=o.loss_type,
            label_smoothing=o.label_smoothing,
            cpo_alpha=o.cpo_alpha,
            simpo_gamma=o.simpo_gamma,
        )


class SimPO(CPO):
    """SimPO (length-normalised, reference-free, a target margin): trainer `cpo` at SimPO's settings."""

    name = "simpo"
    Options = SimPOOptions


@hookimpl
def register_trainers(register):
    register(ORPO)
    register(CPO)
    register(SimPO)
