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

REWARD_KEYS = ("reward_accuracy", "reward_margin")
PREFERENCE_KEYS = (*REWARD_KEYS, "likelihood_accuracy")


def pair_log_probs(model, dataset, collator, batch_size: int, device=None):
    """(chosen, rejected): float tensors of the summed log-probabilities of each pair's answers under
    `model`, from plain logits (the collator puts a batch's chosen rows first, then its rejected
    ones, with `completion_mask` marking the answer tokens)."""
    import torch

    device = device or next(model.parameters()).device
    chosen, rejected = [], []
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
            summed = (token * batch["completion_mask"][:, 1:].to(device)).sum(dim=1).cpu()
            c, r = summed.chunk(2)
            chosen.append(c)
            rejected.append(r)
    finally:
        model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


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


def make_dpo_trainer_class():
    from transformers import Trainer
    from trl import DPOTrainer

    from plugins.trainers._hf_trainer import make_trainer_class

    class PreTokenizedDPO(DPOTrainer):
        """TRL's DPOTrainer on the preference task's encoded pairs."""

        reference_logps: dict = {}  # dataset fingerprint -> the reference's pair log-probabilities

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
