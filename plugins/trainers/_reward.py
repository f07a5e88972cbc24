"""The pieces trainer `reward` (plugins/trainers/reward.py) builds on TRL's `RewardTrainer`, made on
first use so that importing the plugin imports neither torch nor TRL:

- `whole_pairs`: the preference task's rows (prompt_ids, and each answer's ids after it) as the
  RewardTrainer takes them: chosen_ids and rejected_ids the whole sequences, prompt and answer;
- `pair_rewards`: per pair, the model's scalar score of the chosen and of the rejected sequence;
- `reward_scores`: loss, reward accuracy and margin from those scores;
- `make_reward_trainer_class`: the hf trainer's `Trainer` subclass (NaN check, checkpoint
  manifests, seeded length grouping...) on top of `RewardTrainer`, whose evaluations report those scores.

Later recipes load a trained reward model with plugins/rewards/_reward_model.py (reward `reward_model`,
audit `win_rate`).
"""

from __future__ import annotations

import math

REWARD_KEYS = ("reward_accuracy", "reward_margin")
# What TRL's evaluation adds that says nothing more: its accuracy and margin are batch means of
# reward_accuracy and reward_margin; its token count and score extremes describe batches.
TRL_ONLY = frozenset({"accuracy", "margin", "num_tokens", "min_reward", "mean_reward", "max_reward"})


def _join(batch: dict) -> dict:
    prompts = batch["prompt_ids"]
    return {
        "chosen_ids": [p + c for p, c in zip(prompts, batch["chosen_ids"], strict=True)],
        "rejected_ids": [p + r for p, r in zip(prompts, batch["rejected_ids"], strict=True)],
    }


def whole_pairs(dataset):
    """The task's encoded pairs with each answer's ids preceded by the prompt's (the RewardTrainer
    scores whole sequences); a dataset already joined (no prompt_ids) or None is returned as it is.
    `length` (the prompt and its longer answer) is the whole longer sequence already."""
    if dataset is None or "prompt_ids" not in dataset.column_names:
        return dataset
    return dataset.map(_join, batched=True, remove_columns=["prompt_ids"], keep_in_memory=True)


def collator_for(job):
    """TRL's reward collator (chosen rows first, then rejected, right-padded) with the task's padding:
    a recipe padding to max_length has the task's collator pad to a multiple of it."""
    from trl.trainer.reward_trainer import DataCollatorForPreference

    multiple = getattr(job.collator, "pad_to_multiple_of", None)
    return DataCollatorForPreference(pad_token_id=job.tokenizer.pad_token_id, pad_to_multiple_of=multiple)


def pair_rewards(model, dataset, collator, batch_size: int, device=None):
    """(chosen, rejected): float tensors of the model's score of each pair's whole sequences
    (`dataset` joined by `whole_pairs`). The model is left in the mode it was in."""
    import torch

    device = device or next(model.parameters()).device
    chosen, rejected = [], []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(dataset), batch_size):
            rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            batch = collator(rows)
            with torch.no_grad():
                out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
            c, r = out.logits.float().reshape(-1).cpu().chunk(2)
            chosen.append(c)
            rejected.append(r)
    finally:
        model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def reward_scores(chosen, rejected, center_coefficient: float | None = None) -> dict[str, float]:
    """The Bradley-Terry loss as TRL's RewardTrainer computes it (-log sigmoid(r_c - r_r), plus the
    centring term when set), the share of pairs scored chosen above rejected (`reward_accuracy`; a
    tie is not a preference), the mean score difference (`reward_margin`), and each side's mean score."""
    import torch

    if not len(chosen):
        return {}
    diff = chosen - rejected
    loss = -torch.nn.functional.logsigmoid(diff).mean()
    if center_coefficient is not None:
        loss = loss + center_coefficient * torch.mean((chosen + rejected) ** 2)
    return {
        "loss": float(loss),
        "reward_accuracy": float((diff > 0).float().mean()),
        "reward_margin": float(diff.mean()),
        "rewards/chosen": float(chosen.mean()),
        "rewards/rejected": float(rejected.mean()),
    }


def pair_table(chosen, rejected):
    """(predictions, references) as the preference metrics (plugins/trainers/_preference_metrics.py)
    take them: per pair the score difference, and NaN where a language model's log-probability
    difference would be (a reward model has no likelihood); references ones."""
    import numpy as np

    diff = (chosen - rejected).double().numpy()
    predictions = np.stack([diff, np.full_like(diff, math.nan)], axis=1)
    return predictions, np.ones(len(diff), dtype=np.int64)


def make_reward_trainer_class():
    from trl import RewardTrainer

    from plugins.trainers._hf_trainer import make_trainer_class

    class PairScoringReward(RewardTrainer):
        """TRL's RewardTrainer whose evaluations report per-pair scores (`reward_scores`): TRL's own
        accuracy and margin are means of batch means, these are over the pairs, as the baseline's."""

        last_pairs = None

        def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, **kw):
            output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, **kw)
            prefix = kw.get("metric_key_prefix", "eval")
            model = self.accelerator.unwrap_model(self.model)
            batch = self.args.per_device_eval_batch_size
            self.last_pairs = pair_rewards(model, dataloader.dataset, self.data_collator, batch)
            self.model.eval()  # as transformers leaves it: TRL's `log` reads the mode to name the metrics
            scores = reward_scores(*self.last_pairs, self.args.center_rewards_coefficient)
            output.metrics.update({f"{prefix}_{k}": v for k, v in scores.items()})
            return output

        def log(self, logs, start_time=None):
            super().log(logs, start_time)
            # TRL adds its batch figures to the evaluation's own dict, which then reaches the run's
            # events (`on_evaluate`): left out there, kept in the trainer's log history.
            if "eval_loss" in logs:
                for key in TRL_ONLY:
                    logs.pop(f"eval_{key}", None)

    return make_trainer_class(PairScoringReward)
