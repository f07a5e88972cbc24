"""The pieces trainer `dpo` (plugins/trainers/dpo.py) builds on TRL's `DPOTrainer`, made on first use
so that importing the plugin imports neither torch nor TRL:

- `make_dpo_trainer_class`: the hf trainer's `Trainer` subclass (`make_trainer_class`: NaN check,
  checkpoint manifests, the best checkpoint of this run directory, seeded length grouping) on top of
  `DPOTrainer`, which takes the task's encoded pairs as they are and adds the preference metrics to
  every evaluation;
- `pair_log_probs`: per pair, the summed log-probabilities of the chosen and the rejected answer;
- `preference_scores`: reward accuracy and margin (the implicit reward, against a reference) and
  likelihood accuracy (the policy alone), from those log-probabilities.
"""

from __future__ import annotations

import importlib.util

REWARD_KEYS = ("reward_accuracy", "reward_margin")
PREFERENCE_KEYS = (*REWARD_KEYS, "likelihood_accuracy")
# What the evaluations of TRL's preference trainers add that says nothing of preferences (token
# statistics), or says it again (rewards/accuracies and rewards/margins are batch means of
# reward_accuracy and reward_margin): left out of the results.
TRL_ONLY = frozenset({"entropy", "num_tokens", "mean_token_accuracy", "rewards/accuracies", "rewards/margins"})


def trl_missing(trainer: str):
    """The recipe problem of a trainer on TRL where TRL is not installed (nothing where it is)."""
    if importlib.util.find_spec("trl") is None:
        yield (
            ("type",),
            f"trainer '{trainer}' needs TRL, which is not installed; install the extra: "
            "pip install 'finetune-runner[preference]'",
        )


def pair_log_probs(model, dataset, collator, batch_size: int, device=None, lengths: bool = False):
    """(chosen, rejected): float tensors of the summed log-probabilities of each pair's answers under
    `model`, from plain logits (the collator puts a batch's chosen rows first, then its rejected
    ones, with `completion_mask` marking the answer tokens). With `lengths`, also (chosen, rejected)
    answer token counts, for the length-normalised rewards of ORPO and SimPO."""
    import torch

    sums, counts = [], []
    for summed, count in sequence_log_probs(model, dataset, collator, batch_size, device):
        sums.append(summed.chunk(2))
        counts.append(count.chunk(2))
    policy = tuple(torch.cat([s[i] for s in sums]) for i in (0, 1))
    if not lengths:
        return policy
    return policy, tuple(torch.cat([c[i] for c in counts]) for i in (0, 1))


def sequence_log_probs(model, dataset, collator, batch_size: int, device=None):
    """Per batch of `dataset` as `collator` lays it out (pairs: chosen rows then rejected ones;
    unpaired rows: in order): each sequence's summed answer log-probability and answer token count."""
    import torch

    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(dataset), batch_size):
            rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            batch = collator(rows)
            ids = batch["input_ids"].to(device)
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=batch["attention_mask"].to(device)).logits.float()
            # Prompt-learning adapters prepend virtual tokens: keep the positions of the real ones.
            logits = logits[:, -ids.size(1) :]
            token = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            mask = batch["completion_mask"][:, 1:].to(device)
            yield (token * mask).sum(dim=1).cpu(), mask.sum(dim=1).cpu()
    finally:
        model.train(was_training)


def preference_scores(policy, reference, beta: float) -> dict[str, float]:
    """`likelihood_accuracy`: the share of pairs whose chosen answer is likelier than the rejected one
    under the policy (comparable for any model, the base one included). With `reference` (its pair
    log-probabilities), the implicit reward beta * (log pi - log ref): `reward_accuracy`, the share of
    pairs it prefers the chosen answer of (ties count as not preferred, as TRL counts them), and
    `reward_margin`, its mean difference chosen - rejected."""
    pc, pr = policy
    out = {"likelihood_accuracy": float((pc > pr).float().mean())}
    if reference is not None:
        rc, rr = reference
        margin = beta * ((pc - rc) - (pr - rr))
        out.update(reward_accuracy=float((margin > 0).float().mean()), reward_margin=float(margin.mean()))
    return out


def objective_loss(trainer, model, inputs, return_outputs: bool):
    """The mean of a plugin objective's pair losses (runner.PairObjective) for one batch: the policy's
    answer log-probabilities from the same fused forward pass TRL's own loss makes, the reference's
    as TRL takes them (precomputed, its frozen copy, or the adapters switched off), and TRL's reward
    figures logged as for its losses."""
    import torch

    from runner import PairLogProbs

    mode = "train" if trainer.model.training else "eval"
    completion = inputs["completion_mask"]
    kwargs = {k: v for k, v in inputs.items() if k not in {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}}
    labels = inputs["input_ids"].masked_fill(completion == 0, -100)
    outputs = model(**kwargs, use_cache=False, labels=labels, fused_lm_head=True)
    shifted = completion[..., 1:]
    chosen, rejected = outputs.log_probs[:, -shifted.size(1) :].sum(dim=1).chunk(2, dim=0)
    if trainer.precompute_ref_logps:
        reference = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
    else:
        reference = trainer.compute_ref_log_probs(trainer.ref_model or model, inputs)
    tokens = shifted.sum(dim=1).chunk(2, dim=0)
    pairs = PairLogProbs(chosen, rejected, *reference, *tokens, beta=trainer.beta)
    loss = trainer.objective.losses(pairs).mean()
    with torch.no_grad():
        chosen_rewards = trainer.beta * (chosen - reference[0])
        rejected_rewards = trainer.beta * (rejected - reference[1])
        figures = {
            "rewards/chosen": chosen_rewards,
            "rewards/rejected": rejected_rewards,
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
            "rewards/margins": chosen_rewards - rejected_rewards,
        }
        for key, values in figures.items():
            trainer._metrics[mode][key].append(trainer.accelerator.gather(values).mean().item())
    if return_outputs:  # as TRL: the fused head makes no logits, so the caller's are computed again
        with torch.no_grad():
            outputs = model(**kwargs)
        return loss, outputs
    return loss


def make_dpo_trainer_class():
    from transformers import Trainer
    from trl import DPOTrainer

    from plugins.trainers._hf_trainer import make_trainer_class

    class PreTokenizedDPO(DPOTrainer):
        """TRL's DPOTrainer on the preference task's encoded pairs."""

        reference_logps: dict = {}  # dataset fingerprint -> the reference's pair log-probabilities
        objective = None  # the recipe's [objective] (runner.PairObjective): the loss in place of TRL's

        def _compute_loss(self, model, inputs, return_outputs):
            if self.objective is None:
                return super()._compute_loss(model, inputs, return_outputs)
            return objective_loss(self, model, inputs, return_outputs)

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            # TRL 1.16 always calls this, from `__init__` (dpo_trainer.py:849-857) and from `evaluate`
            # (:1649-1653): it extracts a prompt, appends EOS and tokenizes text columns. The task has
            # encoded the pairs already (prompt_ids, chosen_ids, rejected_ids, with the chat template
            # and the end-of-turn token), so they are taken as they are.
            if "prompt_ids" in dataset.column_names:
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            if eval_dataset is not None and "ref_chosen_logps" in eval_dataset.column_names:
                # reference log-probabilities already in the rows (kept from the base model's
                # evaluation): TRL's `evaluate` would compute them again from the trained model
                # (dpo_trainer.py:1634-1646 refuses that after a step), so transformers' evaluates.
                return Trainer.evaluate(self, eval_dataset, ignore_keys, metric_key_prefix)
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

        def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None, **kw):
            output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, **kw)
            prefix = kw.get("metric_key_prefix", "eval")
            scores = self.preference_scores(dataloader.dataset)
            output.metrics.update({f"{prefix}_{k}": v for k, v in scores.items()})
            return output

        def preference_scores(self, dataset) -> dict[str, float]:
            batch = self.args.per_device_eval_batch_size
            model = self.accelerator.unwrap_model(self.model)
            policy = pair_log_probs(model, dataset, self.data_collator, batch)
            self.last_pairs = policy, self.reference_pairs(dataset, model, batch)
            return preference_scores(*self.last_pairs, self.beta)

        def reference_pairs(self, dataset, model, batch):
            """The reference's pair log-probabilities: from the rows (precomputed), the frozen copy, or
            the model with its adapters off; None when the reference is not in memory."""
            import torch

            if "ref_chosen_logps" in dataset.column_names:
                return torch.tensor(dataset["ref_chosen_logps"]), torch.tensor(dataset["ref_rejected_logps"])
            if self.ref_model is not None:
                ref = self.accelerator.unwrap_model(self.ref_model)
                return pair_log_probs(ref, dataset, self.data_collator, batch)
            if hasattr(model, "disable_adapter"):
                from trl.trainer.utils import use_adapter

                # as TRL's loss takes it (dpo_trainer.py:1328-1336): adapters off, or the "ref" copy
                name = "ref" if "ref" in model.peft_config else None
                with use_adapter(model, adapter_name=name):
                    return pair_log_probs(model, dataset, self.data_collator, batch)
            found = self.reference_logps.get(getattr(dataset, "_fingerprint", None))
            return found

    return make_trainer_class(PreTokenizedDPO)
