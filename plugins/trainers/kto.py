"""Trainer `kto`: Kahneman-Tversky optimisation on TRL's `KTOTrainer`, from answers labelled desirable
or undesirable one by one (task `preference`, format 'unpaired'), or from pairs.

It is trainer `hf` (plugins/trainers/hf.py) with TRL's loss, and a reference as trainer `dpo` has
one ('auto', 'copy', 'precomputed'; plugins/trainers/dpo.py). Pairs are unpaired as TRL does it
(each pair a desirable row, its chosen answer, then an undesirable one, its rejected answer; TRL
puts the chosen rows of every 1,000 pairs before their rejected ones), so a KTO run can use DPO's data.

Loss 'kto' estimates its KL term from each row's prompt with the answer of the row before it in
the batch (TRL rotates the answers within every `batch_size` rows of the dataset as it stands): it
needs the rows in dataset order (no length grouping, no shuffle; the runner's split has shuffled
them once) and batches of at least 2. 'apo_zero_unpaired' has no KL term.

Evaluation: on held-out pairs, DPO's figures (`reward_accuracy`, `reward_margin` of the implicit
reward beta * (log pi - log ref), `likelihood_accuracy`); on unpaired rows, `reward_accuracy` is
the share of rows whose implicit reward has the sign of their label (above 0 for a desirable
answer, below for an undesirable one; 0 counts as wrong) and `reward_margin` the mean implicit
reward signed by the label; no pair, so no likelihood_accuracy. TRL's loss, kl, rewards/chosen
and rewards/rejected (mean reward of the desirable and the undesirable rows) come too. The
untouched base model is its own reference (an implicit reward of 0 everywhere): its baseline row
has likelihood_accuracy on pairs, and nothing on unpaired rows.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from plugins.trainers._hf_trainer import LOGGED
from plugins.trainers._preference_trainers import PreferenceTrainer
from plugins.trainers._reference import drop_fresh_adapter_copy, frozen_reference, keeps_copy, reference_problems
from plugins.trainers.hf import HFTrainerOptions
from runner import PositiveFloat, hookimpl


class KTOOptions(HFTrainerOptions):
    learning_rate: PositiveFloat = Field(default=1e-6, description="Peak learning rate (TRL's default).")
    beta: PositiveFloat = Field(
        default=0.1, description="How far the policy may move from the reference (higher: less)."
    )
    loss_type: Literal["kto", "apo_zero_unpaired"] = Field(
        default="kto",
        description="'kto' (the KTO paper, with its KL term), or 'apo_zero_unpaired' (APO-zero: desirable "
        "answers better than the model's own, undesirable ones worse; no KL term).",
    )
    desirable_weight: PositiveFloat = Field(
        default=1.0,
        description="Weight of the desirable rows' loss. With unequal counts, the paper's advice: desirable_weight "
        "x desirable rows / (undesirable_weight x undesirable rows) between 1 and 4/3 (the run says so otherwise).",
    )
    undesirable_weight: PositiveFloat = Field(default=1.0, description="Weight of the undesirable rows' loss.")
    reference: Literal["auto", "copy", "precomputed"] = Field(
        default="auto",
        description="As trainer 'dpo': 'auto' (with adapters the base with them switched off, else a frozen copy), "
        "'copy', or 'precomputed' (log-probabilities computed once before training).",
    )
    group_by_length: bool = Field(
        default=False,
        description="Batch rows of similar length together: not with loss_type 'kto', whose KL term needs the rows "
        "in dataset order.",
    )


def unpaired_rows(dataset, kl_batch: int | None):
    """The task's rows as TRL's KTO takes them: pairs unpaired (a pair's chosen row then its rejected
    one, `_pair` its index), and with `kl_batch` the KL answers (each row's prompt with the answer
    of the row before it, within every `kl_batch` rows: kto_trainer.py's rotation)."""
    if "chosen_ids" in dataset.column_names:

        def unpair(batch):
            out: dict[str, list] = {"prompt_ids": [], "completion_ids": [], "label": [], "length": [], "_pair": []}
            for prompt, chosen, rejected, index in zip(
                batch["prompt_ids"], batch["chosen_ids"], batch["rejected_ids"], batch["_index"], strict=True
            ):
                for answer, label in ((chosen, True), (rejected, False)):
                    out["prompt_ids"].append(prompt)
                    out["completion_ids"].append(answer)
                    out["label"].append(label)
                    out["length"].append(len(prompt) + len(answer))
                    out["_pair"].append(index)
            return out

        indexed = dataset.add_column("_index", list(range(len(dataset))))
        dataset = indexed.map(unpair, batched=True, remove_columns=indexed.column_names)
    if kl_batch and "KL_completion_ids" not in dataset.column_names:

        def rotate(batch):
            return {"KL_completion_ids": [batch["completion_ids"][-1], *batch["completion_ids"][:-1]]}

        dataset = dataset.map(rotate, batched=True, batch_size=kl_batch)
    return dataset


def balance_advice(labels, desirable_weight: float, undesirable_weight: float) -> str | None:
    """TRL's advice on unequal desirable and undesirable counts (the KTO paper's Eq. 8), as a
    message naming the recipe's keys; None when the weights are in range."""
    desirable = max(sum(bool(x) for x in labels), 1)
    undesirable = max(len(labels) - desirable, 1)
    if desirable == undesirable:
        return None
    low_d = round(undesirable * undesirable_weight / desirable, 2)
    high_d = round(undesirable * undesirable_weight / desirable * 1.33, 2)
    low_u = round(desirable * desirable_weight / undesirable / 1.33, 2)
    high_u = round(desirable * desirable_weight / undesirable, 2)
    if low_d <= desirable_weight <= high_d or low_u <= undesirable_weight <= high_u:
        return None
    return (
        f"the training rows are {desirable} desirable and {undesirable} undesirable, and the KTO paper's "
        f"weighting (TRL's advice) wants EITHER training.desirable_weight in [{low_d}, {high_d}] OR "
        f"training.undesirable_weight in [{low_u}, {high_u}], not both"
    )


def kto_scores(policy, reference, labels, paired: bool, beta: float):
    """The preference metrics and their per-row table (or None) from per-row log-probabilities:
    pairs (rows alternating chosen, rejected) get DPO's figures; unpaired rows the label agreement."""
    from plugins.trainers._preference import preference_scores
    from plugins.trainers._preference_metrics import pair_table

    if paired:
        pairs = policy[0::2], policy[1::2]
        references = None if reference is None else (reference[0::2], reference[1::2])
        found = None if references is None else pair_table(pairs, references, beta)
        return preference_scores(pairs, references, beta), found
    if reference is None:
        return {}, None
    from plugins.trainers._preference_trainers import table

    reward = beta * (policy - reference)
    signed = reward.where(labels, -reward)
    scores = {"reward_accuracy": float((signed > 0).float().mean()), "reward_margin": float(signed.mean())}
    return scores, table(signed, None)


def row_log_probs(model, rows, pad_token_id: int, batch_size: int, kl: bool = False):
    """Each unpaired row's summed answer log-probability (with `kl`, of its KL answer)."""
    import torch
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

    from plugins.trainers._preference import sequence_log_probs

    keep = ["prompt_ids", "KL_completion_ids" if kl else "completion_ids", "label"]
    rows = rows.select_columns(keep)
    if kl:
        rows = rows.rename_column("KL_completion_ids", "completion_ids")
    collator = DataCollatorForUnpairedPreference(pad_token_id=pad_token_id)
    return torch.cat([summed for summed, _ in sequence_log_probs(model, rows, collator, batch_size)])


def make_kto_trainer_class():
    import torch
    from transformers import Trainer
    from trl import KTOTrainer

    from plugins.trainers._hf_trainer import make_trainer_class

    class PreTokenizedKTO(KTOTrainer):
        """TRL's KTOTrainer on the task's encoded rows (pairs unpaired); each evaluation adds the
        preference metrics."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            # TRL 1.16 calls this from `__init__` and `evaluate` (kto_trainer.py:931-940, :1600-1605) to
            # extract prompts, unpair, append EOS and tokenize: the task has encoded the rows already.
            if "prompt_ids" not in dataset.column_names:
                return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            return unpaired_rows(dataset, args.per_device_train_batch_size if self.calculate_KL else None)

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            if eval_dataset is not None and "ref_logps" in eval_dataset.column_names:
                # the reference's log-probabilities kept from the base model's evaluation: TRL's
                # `evaluate` refuses to compute them after a step (kto_trainer.py:1586-1597)
                return Trainer.evaluate(self, eval_dataset, ignore_keys, metric_key_prefix)
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

        def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, **kw):
            output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, **kw)
            prefix = kw.get("metric_key_prefix", "eval")
            rows = dataloader.dataset
            model = self.accelerator.unwrap_model(self.model)
            batch, pad = self.args.per_device_eval_batch_size, self.processing_class.pad_token_id
            policy = row_log_probs(model, rows, pad, batch)
            reference = None
            if "ref_logps" in rows.column_names:
                reference = torch.tensor(rows["ref_logps"])
            elif self.ref_model is not None:
                reference = row_log_probs(self.accelerator.unwrap_model(self.ref_model), rows, pad, batch)
            elif hasattr(model, "disable_adapter"):
                from trl.trainer.utils import use_adapter

                with use_adapter(model, adapter_name="ref" if "ref" in model.peft_config else None):
                    reference = row_log_probs(model, rows, pad, batch)
            labels = torch.tensor(rows["label"], dtype=torch.bool)
            scores, self.last_table = kto_scores(policy, reference, labels, "_pair" in rows.column_names, self.beta)
            output.metrics.update({f"{prefix}_{k}": v for k, v in scores.items()})
            return output

    return make_trainer_class(PreTokenizedKTO)


class KTO(PreferenceTrainer):
    """KTO (unpaired desirable/undesirable answers, or pairs) with TRL's KTOTrainer, against a reference."""

    name = "kto"
    Options = KTOOptions
    unpaired_preferences = True  # task `preference` with format 'unpaired' (plugins/tasks/preference.py)
    logged = (*LOGGED, "kl", "rewards/chosen", "rewards/rejected", "rewards/margins")
    # TRL reads transformers' old property name around the reference's forward pass (as for dpo).
    quiet_warnings = ("`is_gradient_checkpointing` is deprecated",)
    aliases: ClassVar[dict[str, str]] = {
        **PreferenceTrainer.aliases,
        "precompute_ref_log_probs": "reference",
        "ref_model": "reference",
        "pref_beta": "beta",
        "kto_desirable_weight": "desirable_weight",
        "kto_undesirable_weight": "undesirable_weight",
    }

    def __init__(self, options):
        super().__init__(options)
        # The base model's row log-probabilities (and KL answers') per dataset fingerprint, kept from its
        # evaluation: the reference of a 'precomputed' run for the splits training never saw.
        self.kept_reference: dict = {}

    @classmethod
    def check(cls, options, recipe):
        yield from super().check(options, recipe)
        if options.loss_type == "kto" and options.group_by_length:
            yield (
                ("group_by_length",),
                "loss_type 'kto' estimates its KL term from neighbouring rows in dataset order: "
                "group_by_length must be false (or use loss_type 'apo_zero_unpaired')",
            )
        if options.best_metric == "likelihood_accuracy" and getattr(recipe.task.options, "format", None) == "unpaired":
            yield (
                ("best_metric",),
                "unpaired rows have no pair to compare likelihoods of: choose 'reward_accuracy' or 'loss'",
            )
        if options.loss_type == "kto" and options.batch_size < 2:
            yield (("batch_size",), "loss_type 'kto' needs batch_size of at least 2 (its KL term pairs rows)")
        yield from reference_problems(options, recipe)

    def frozen_copies(self, strategy) -> int:
        """As trainer dpo: a frozen copy with 'copy', or 'auto' without adapters."""
        return int(keeps_copy(self.options.reference, strategy))

    def _kl_batch(self) -> int | None:
        return self.options.batch_size if self.options.loss_type == "kto" else None

    # -- the trainer ---------------------------------------------------------------------------------
    def _make_trainer(self, job, has_eval: bool, callbacks: list):
        from trl import KTOConfig
        from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

        o = self.options
        reference = frozen_reference(job.model, o.reference)
        values = self._argument_values(job, has_eval)
        if o.loss_type == "kto":
            values["train_sampling_strategy"] = "sequential"  # TRL requires it (kto_trainer.py:837-843)
        config = KTOConfig(
            **values,
            beta=o.beta,
            loss_type=o.loss_type,
            desirable_weight=o.desirable_weight,
            undesirable_weight=o.undesirable_weight,
            precompute_ref_log_probs=o.reference == "precomputed",
            max_length=None,  # the task has cut the rows to the tokenizer's max_length already
        )
        if job.train is not None and "label" in job.train.column_names:
            advice = balance_advice(job.train["label"], o.desirable_weight, o.undesirable_weight)
            if advice and hasattr(job.events, "warn"):
                job.events.warn(advice)
        trainer = make_kto_trainer_class()(
            model=job.model,
            ref_model=reference,
            args=config,
            train_dataset=job.train,
            eval_dataset=job.evaluation,
            # pairs are batched as unpaired rows; the task's padding choices are kept
            data_collator=DataCollatorForUnpairedPreference(
                pad_token_id=job.tokenizer.pad_token_id,
                max_length=getattr(job.collator, "max_length", None),
                pad_to_multiple_of=getattr(job.collator, "pad_to_multiple_of", None),
            ),
            processing_class=job.tokenizer,
            callbacks=callbacks,
        )
        drop_fresh_adapter_copy(job.model, reference)
        return trainer

    # -- evaluation ----------------------------------------------------------------------------------
    def _trainer_evaluate(self, job, trainer, dataset) -> dict[str, float]:
        gone = trainer.precompute_ref_logps and trainer.ref_model is None and not hasattr(trainer.model, "peft_config")
        if gone and "ref_logps" not in dataset.column_names:
            kept = self.kept_reference.get(dataset._fingerprint)
            if kept is None:  # neither kept nor computable: the policy's own scores only
                trainer.last_table = None
                return self._evaluate_alone(job, dataset)
            dataset = unpaired_rows(dataset, self._kl_batch()).add_column("ref_logps", kept[0].tolist())
            if kept[1] is not None:
                dataset = dataset.add_column("ref_KL_logps", kept[1].tolist())
        return trainer.evaluate(eval_dataset=dataset, metric_key_prefix="eval")

    def _evaluate_alone(self, job, dataset) -> dict[str, float]:
        """A model no KTO trainer of this process trains: the untouched base (a baseline) or a finished
        run's model. With adapters the reference is the base with them off; otherwise the model is its
        own reference (an implicit reward of 0 everywhere): the reward metrics are left out."""
        import torch

        batch = self.options.eval_batch_size or 2 * self.options.batch_size
        pad = job.tokenizer.pad_token_id
        rows = unpaired_rows(dataset, self._kl_batch())
        policy = row_log_probs(job.model, rows, pad, batch)
        reference = None
        if hasattr(job.model, "disable_adapter"):
            with job.model.disable_adapter():
                reference = row_log_probs(job.model, rows, pad, batch)
        elif self.options.reference == "precomputed" and getattr(self, "_last", None) is None:
            kl = row_log_probs(job.model, rows, pad, batch, kl=True) if self._kl_batch() else None
            self.kept_reference[dataset._fingerprint] = (policy, kl)  # before any training: the reference
        labels = torch.tensor(rows["label"], dtype=torch.bool)
        scores, found = kto_scores(policy, reference, labels, "_pair" in rows.column_names, self.options.beta)
        self._hand_over(job, found)
        return scores


@hookimpl
def register_trainers(register):
    register(KTO)
