"""The pieces trainers `grpo` and `rloo` (plugins/trainers/grpo.py) build on TRL's `GRPOTrainer` and
`RLOOTrainer`, made on first use so that importing the plugin imports neither torch nor TRL:

- `prompt_rows`: the training rows as TRL samples them: each row's prompt rendered by its task (the chat
  template and its generation prompt, as the task's own generation renders it) and the row's index;
- `prompt_lengths`: what the prompts' token lengths mean for the run: an error where a prompt and its
  answer cannot fit the model's positions, a warning where the held-out evaluation will cut prompts;
- `RowsForRewards`: the rows as read, with the task's reference answer, that the recipe's rewards see;
- `reward_functions`: each `runner.Reward` as the callable TRL calls, checked (`Reward.checked_scores`);
- `suspects`: the check for reward hacking — answers training favoured (above their group's mean) whose
  answer could not be extracted, or that were cut at the length cap;
- `make_sampling_trainer_class`: the hf trainer's `Trainer` subclass (NaN check, checkpoint manifests,
  ...) on top of TRL's trainer, which logs `suspects` every step;
- `held_out_scores`: the loss of held-out reference answers, without a transformers Trainer.
"""

from __future__ import annotations

from typing import Any

from runner import Reward

# What `suspects` logs: the share of sampled answers favoured without an extractable answer; how much more
# often the favoured answers were cut at max_completion_length than the others.
NO_ANSWER, CUT = "suspect/favoured_without_answer", "suspect/favoured_when_cut"
ROW = "row_index"  # the column that leads a sampled prompt back to its row (TRL passes it to the rewards)
REFERENCE = Reward.REFERENCE  # the task's reference answer, added to each row the rewards see


class RowsForRewards:
    """The training rows the rewards read, by index: every column as read, and `reference`, the task's
    reference answer (an instruction row's last assistant message) where the row has no such column."""

    def __init__(self):
        self.rows: list[dict[str, Any]] = []

    def add(self, dataset, references: list[str]) -> range:
        start = len(self.rows)
        for row, reference in zip(dataset, references, strict=True):
            self.rows.append({REFERENCE: reference, **row})
        return range(start, len(self.rows))

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


def prompt_rows(parts, tokenizer, rows: RowsForRewards):
    """A `datasets.Dataset` of `prompt` (rendered) and `row_index`, from [(task, raw rows)] per source."""
    from datasets import Dataset

    prompts: list[str] = []
    index: list[int] = []
    for task, dataset in parts:
        rendered = task.prompts(dataset, tokenizer=tokenizer)
        prompts += [prompt for prompt, _ in rendered]
        index += list(rows.add(dataset, [reference for _, reference in rendered]))
    return Dataset.from_dict({"prompt": prompts, ROW: index})


def prompt_lengths(prompts: list[str], tokenizer, model, completion: int) -> list[str]:
    """Warnings about the prompts' token lengths; a FinetuneError where sampling cannot work.

    TRL samples from the whole prompt (it never cuts one): a prompt whose tokens and `completion` new
    ones exceed the model's position limit would fail deep inside sampling, so it is refused here. The
    held-out evaluation keeps a prompt's last tokenizer.max_length tokens (plugins/tasks/_chat_answers.py):
    a model trained on whole prompts would be scored on cut ones, which the warning says."""
    from runner import FinetuneError, position_limit

    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]] or [0]
    longest = max(lengths)
    limit = position_limit(model.config)
    if limit is not None and longest + completion > limit:
        raise FinetuneError(
            f"the longest training prompt has {longest} tokens: with max_completion_length {completion} it needs "
            f"{longest + completion} positions, and the model has {limit}",
            hint="shorten the prompts (filter the data), or lower training.max_completion_length",
        )
    cut = sum(n > tokenizer.model_max_length for n in lengths)
    if not cut:
        return []
    return [
        f"{cut} of {len(lengths)} training prompts are longer than tokenizer.max_length "
        f"({tokenizer.model_max_length} tokens; the longest has {longest}): training samples from the whole "
        "prompt, the held-out evaluation keeps the last tokenizer.max_length tokens of each — raise "
        "tokenizer.max_length to score whole prompts"
    ]


def reward_functions(rewards, rows: RowsForRewards) -> list:
    """Each reward as a function TRL calls with the sampled batch (prompts, completions and the dataset's
    other columns as lists), named by the reward's key (TRL logs `rewards/<key>/mean`)."""
    functions = []
    for reward in rewards:

        def score(prompts, completions, completion_ids=None, _reward=reward, **columns):
            batch = [rows[i] for i in columns[ROW]]
            return _reward.checked_scores(list(prompts), list(completions), batch)

        score.__name__ = reward.key()
        functions.append(score)
    return functions


def suspects(rewards, completions, completion_ids, eos: list[int], cap: int, total, start: int, generations: int):
    """Signs that the rewards pay for something else than right answers, among the answers training favours
    (their total reward above their group's mean):
    - NO_ANSWER: the share of all answers that are favoured though a reward that extracts an answer
      (`extracted`, as answer_match has) found none in them (left out where no reward extracts);
    - CUT: the share of favoured answers that stopped at the length cap without an end, less that share
      among the others: above 0, training prefers answers for running long (a length-paying reward).
    `total`: the weighted total reward of every answer of the batch (all processes, in process order, groups
    of `generations` answers in a row); these answers are those from `start`."""
    import torch

    means = torch.nanmean(total.view(-1, generations), dim=1).repeat_interleave(generations)
    window = slice(start, start + len(completions))
    favoured = (total[window] > means[window]).tolist()
    out = {}
    extractors = [r for r in rewards if callable(getattr(r, "extracted", None))]
    if extractors:
        found = [r.extracted(completions) for r in extractors]
        empty = [any(values[i] is None for values in found) for i in range(len(completions))]
        out[NO_ANSWER] = sum(f and e for f, e in zip(favoured, empty, strict=True)) / len(completions)
    cut = [len(ids) >= cap and (not ids or ids[-1] not in eos) for ids in completion_ids]
    out[CUT] = _share(cut, favoured) - _share(cut, [not f for f in favoured])
    return out


def _share(flags: list[bool], among: list[bool]) -> float:
    chosen = [flag for flag, keep in zip(flags, among, strict=True) if keep]
    return sum(chosen) / len(chosen) if chosen else 0.0


def make_sampling_trainer_class(kind: str = "grpo"):
    """The hf trainer's class on TRL's GRPOTrainer (`kind` "grpo") or RLOOTrainer ("rloo"): both sample
    groups of answers, score them with the reward functions and build a reference the same way."""
    from trl import GRPOTrainer, RLOOTrainer

    from plugins.trainers._hf_trainer import make_trainer_class

    class RowsGRPO({"grpo": GRPOTrainer, "rloo": RLOOTrainer}[kind]):
        """TRL's trainer on the rendered prompts, with a frozen reference it is handed."""

        def __init__(self, *args, reference=None, beta: float = 0.0, **kwargs):
            super().__init__(*args, **kwargs)
            # TRL builds a full model's reference by loading the policy's `name_or_path` again (grpo_trainer.py
            # :991-1003, rloo_trainer.py:677-689): a model built from a config, or from an earlier run, has no such
            # path. It is built with beta 0 (no reference), then given the frozen copy made here.
            if beta and reference is not None:
                self.ref_model = self._prepared_reference(reference)
            self.beta = beta
            self.rewards = []  # the recipe's runner.Reward components, for the suspects check

        def _prepared_reference(self, reference):
            """The reference as TRL prepares one it built itself (grpo_trainer.py:1074-1077, 1182-1188): its
            LM head fused to give per-token log-probabilities, then placed by the accelerator or DeepSpeed."""
            from trl.models import prepare_deepspeed
            from trl.trainer.utils import add_fused_lm_head

            cast = getattr(self.args, "cast_lm_head_to_fp32", False)  # GRPO's option; RLOO has none
            fp32 = {"cast_lm_head_to_fp32": cast} if cast else {}
            add_fused_lm_head(reference, temperature=self.temperature, **fp32)
            if self.is_deepspeed_enabled:
                return prepare_deepspeed(reference, self.accelerator)
            return self.accelerator.prepare_model(reference, evaluation_mode=True)

        def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, *args, **kwargs):
            # TRL scores the left-padded prompt and answer without position ids (grpo_trainer.py:1448-1492),
            # and a model then counts positions from the first pad (GPT-2 from 0 at the pad, Llama's cache
            # positions likewise), where generation counted them from the first real token: every prompt
            # shorter than the batch's longest was scored at other positions than it was sampled at.
            wrapped = PositionsFromMask(model)
            return super()._get_per_token_logps_and_entropies(wrapped, input_ids, attention_mask, *args, **kwargs)

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            per_reward = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            if self.model.training and self.rewards:
                weights = self.reward_weights.to(per_reward.device).unsqueeze(0)
                total = (per_reward * weights).nansum(dim=1)
                shares = suspects(
                    self.rewards, [_text(c) for c in completions], completion_ids_list, self.eos_token_ids,
                    self.max_completion_length, total, self.accelerator.process_index * len(prompts),
                    self.num_generations,
                )  # fmt: skip
                for key, value in shares.items():
                    self._metrics["train"][key].append(value)
            return per_reward

    return make_trainer_class(RowsGRPO)


class PositionsFromMask:
    """A model called with position ids counted from each row's first real token, as generation counts
    them: a left-padded row then reads its tokens at the positions it has alone."""

    def __init__(self, model):
        self.model = model

    def __call__(self, **inputs):
        mask = inputs.get("attention_mask")
        if mask is not None and inputs.get("position_ids") is None:
            positions = mask.long().cumsum(-1) - 1
            inputs["position_ids"] = positions.masked_fill(mask == 0, 1)  # as transformers' generation does
        return self.model(**inputs)


def _text(completion) -> str:
    """A completion as text: TRL gives a conversational prompt's answers as [{role, content}]."""
    return completion if isinstance(completion, str) else completion[0]["content"]


def held_out_scores(model, dataset, collator, task, compute_metrics, batch_size: int) -> dict[str, float]:
    """The loss of the held-out rows' reference answers (token-weighted: each answer token counts once) and
    the task's metrics on them, computed here rather than by a transformers Trainer: one made after a
    DeepSpeed run would start DeepSpeed's inference engine, which only ZeRO-3 has. Every process scores
    every row (held-out splits are small), so none waits for another."""
    import numpy as np
    import torch
    from transformers import EvalPrediction

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows = []
    try:
        for start in range(0, len(dataset), batch_size):
            batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            batch = {k: v.to(device) for k, v in batch.items() if hasattr(v, "to")}
            with torch.no_grad():
                logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
            rows.append(np.asarray(task.preprocess_logits(logits, batch["labels"]).float().cpu()))
    finally:
        model.train(was_training)
    table = np.concatenate(rows) if rows else np.zeros((0, 2))
    out = {"loss": float(table[:, 0].sum() / max(table[:, 1].sum(), 1))}
    if callable(compute_metrics):
        out.update(compute_metrics(EvalPrediction(predictions=table, label_ids=np.zeros(len(table)))))
    return out
