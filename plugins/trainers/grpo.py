"""Trainers `grpo` and `rloo`: reinforcement fine-tuning from the recipe's rewards, on TRL's `GRPOTrainer`
(group relative policy optimisation) and `RLOOTrainer` (REINFORCE with leave-one-out baselines).

For every training prompt the model samples `generations` answers; each reward of the recipe
(`[[rewards]]`, registered plugins, never code named in a recipe) scores them, and their weighted sum,
compared within the prompt's group, pushes the policy towards the better answers. It is trainer `hf`
(plugins/trainers/hf.py) underneath: the same arguments, engine settings, precision, checkpoints,
resume, Ctrl-C stop and NaN check.

The prompts come from a generating task (`instruction`): each row's conversation up to its last
assistant turn, rendered with the chat template, as the task's own generation renders it; the rewards
see the row as read plus `reference`, the task's reference answer. `batch_size` counts answers, not
prompts: each optimizer step takes batch_size x gradient_accumulation_steps x processes answers, of
that divided by `generations` prompts.

Per logged step the events carry the mean and spread of each reward (`rewards/<name>/mean`, `.../std`),
the total (`reward`, `reward_std`), the share of groups whose answers all scored alike and so teach
nothing (`frac_reward_zero_std`), the answers' lengths and the share cut at `max_completion_length`,
and the KL to the reference where `beta` > 0.
"""

from __future__ import annotations

import importlib.util
import math
from typing import ClassVar, Literal

from pydantic import Field

from plugins.trainers._grpo import CUT, NO_ANSWER
from plugins.trainers._hf_trainer import LOGGED
from plugins.trainers._preference import trl_missing
from plugins.trainers._reference import copy_refused
from plugins.trainers.hf import HF, HFTrainerOptions
from runner import MAX_STEPS, FinetuneError, NonNegativeFloat, PositiveFloat, hookimpl

# What TRL logs per step that the run's events carry (rewards/<name>/mean and /std are added per reward).
GRPO_LOGGED = (
    "reward",
    "reward_std",
    "frac_reward_zero_std",
    "kl",
    "entropy",
    "completions/mean_length",
    "completions/clipped_ratio",
    "clip_ratio/region_mean",
    NO_ANSWER,
    CUT,
)
# A share of favoured answers (plugins/trainers/_grpo.py `suspects`) over the last quarter of the logged
# steps above which the run warns that the rewards may be gamed.
SUSPECT_WARNING = 0.1


class SamplingOptions(HFTrainerOptions):
    """What the trainers that sample answers and learn from rewards (grpo, rloo) share."""

    learning_rate: PositiveFloat = Field(default=1e-6, description="Peak learning rate (TRL's default).")
    generations: int = Field(
        default=8,
        ge=2,
        le=1024,
        description="Answers sampled per prompt (a group); batch_size x gradient_accumulation_steps x processes "
        "must be a multiple of it.",
    )
    temperature: PositiveFloat = Field(default=1.0, description="Sampling temperature of the answers.")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling: the share of probability kept.")
    top_k: int = Field(default=0, ge=0, description="Sample among the k likeliest tokens only (0: all).")
    max_completion_length: int | None = Field(
        default=None,
        gt=0,
        le=1_000_000,
        description="Longest sampled answer in tokens (default: the task's max_new_tokens).",
    )
    beta: NonNegativeFloat = Field(
        default=0.0,
        description="Weight of the KL divergence to the reference model (0: none, and no reference kept; "
        "DeepSeek-R1 used 0.001). With adapters the reference is the base with them off, else a frozen copy.",
    )
    epsilon: PositiveFloat = Field(default=0.2, description="Clipping of the probability ratio (PPO's epsilon).")
    epsilon_high: PositiveFloat | None = Field(
        default=None, description="Upper clipping bound, if other than epsilon (DAPO suggests 0.28)."
    )
    iterations: int = Field(
        default=1, ge=1, le=1024, description="Optimisation passes over each batch of sampled answers (mu)."
    )
    mask_truncated_completions: bool = Field(
        default=False, description="Leave answers cut at max_completion_length out of the loss (DAPO)."
    )
    disable_dropout: bool = Field(
        default=True,
        description="Switch the model's dropout off while training (TRL's default): the probabilities of an answer "
        "sampled without dropout are then the ones its loss reads, and the reference's the same way.",
    )
    generation: Literal["transformers", "vllm"] = Field(
        default="transformers",
        description="What samples the answers: 'transformers' (generate, on any machine) or 'vllm' (TRL's colocated "
        "vLLM engine, far faster on a CUDA GPU; needs the vllm package, which is not in the lock).",
    )
    # The hf trainer's defaults that do not fit sampling: TRL groups prompts itself, and a validation
    # split is evaluated by the core after training (loss on its reference answers, text metrics).
    group_by_length: bool = Field(default=False, description="Not used by grpo: answers are sampled in groups.")
    keep_best: bool = Field(default=False, description="Not used by grpo: it ends with the last weights.")


class GRPOOptions(SamplingOptions):
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo"] = Field(
        default="dapo",
        description="How token losses are summed: 'dapo' (over the batch's answer tokens; no length bias), "
        "'grpo' (per answer, then averaged: favours short right answers), 'dr_grpo' (a constant), 'bnpo' "
        "(the local batch's tokens), 'cispo' (clipped importance weights), 'sapo' (soft gating).",
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        default="group",
        description="Divide each advantage by the rewards' spread in its group ('group'), in the batch "
        "('batch'), or not at all ('none', as Dr. GRPO recommends).",
    )


class RLOOOptions(SamplingOptions):
    beta: NonNegativeFloat = Field(
        default=0.05,
        description="Weight of the KL divergence to the reference model, added to the reward (TRL's RLOO default; "
        "0: none, and no reference kept). With adapters the reference is the base with them off, else a frozen copy.",
    )
    normalize_advantages: bool = Field(
        default=False, description="Scale the advantages of each batch of sampled answers to mean 0 and spread 1."
    )


class GRPO(HF):
    """Reinforcement fine-tuning (GRPO and its loss variants) from the recipe's rewards, with TRL's GRPOTrainer."""

    name = "grpo"
    Options = GRPOOptions
    takes_rewards = True
    quiet_warnings = ("`is_gradient_checkpointing` is deprecated",)
    aliases: ClassVar[dict[str, str]] = {
        **HF.aliases,
        "num_generations": "generations",
        "num_iterations": "iterations",
        "reward_funcs": "rewards",
        "reward_weights": "rewards",
    }

    @classmethod
    def check(cls, options, recipe):
        yield from super().check(options, recipe)
        yield from trl_missing(cls.name)
        if not recipe.task.cls.generates:
            yield (
                ("type",),
                f"trainer '{cls.name}' samples answers to prompts: task '{recipe.task.name}' has none "
                "(use task 'instruction')",
            )
        if not recipe.rewards:
            yield (
                ("type",),
                f"trainer '{cls.name}' learns from rewards and the recipe names none: add [[rewards]] tables "
                "(e.g. type = 'answer_match'; `finetune reference` lists them)",
            )
        if options.generation == "vllm" and importlib.util.find_spec("vllm") is None:
            yield (
                ("generation",),
                "generation = 'vllm' needs vLLM, which is not installed: pip install vllm (CUDA only)",
            )
        answers = options.batch_size * options.gradient_accumulation_steps
        if answers % options.generations:
            yield (
                ("generations",),
                f"each step takes batch_size x gradient_accumulation_steps = {answers} answers, not a multiple of "
                f"generations = {options.generations}: a prompt's group would be split",
            )
        if keeps_copy(options, recipe.strategy.create()) and copy_refused(recipe):
            yield (
                ("beta",),
                "beta > 0 keeps a frozen copy of the model as the reference, which cannot be made under ZeRO-3 "
                "(it shards the weights as they are built): use an adapter strategy, whose reference is the base",
            )
        for key in ("group_by_length", "keep_best", "early_stopping_patience"):
            if getattr(options, key):
                why = "samples its own batches and keeps the last weights"
                yield ((key,), f"trainer '{cls.name}' {why}: {key} is not used")

    # -- the trainer ---------------------------------------------------------------------------------
    def fit(self, job):
        self.logged = (*LOGGED, *GRPO_LOGGED, *(f"rewards/{r.key()}/{s}" for r in job.rewards for s in ("mean", "std")))
        outcome = super().fit(job)
        for warning in suspect_warnings(self._last.state.log_history, self._max_completion_length(job.task)):
            job.events.warn(warning)
        return outcome

    def _argument_values(self, job, has_eval: bool) -> dict:
        values = super()._argument_values(job, False)  # the core evaluates held-out rows itself
        values["train_sampling_strategy"] = "random"  # TRL's RepeatSampler, seeded
        return values

    def _max_completion_length(self, task) -> int:
        return self.options.max_completion_length or getattr(task.options, "max_new_tokens", None) or 128

    def _make_trainer(self, job, has_eval: bool, callbacks: list):
        from plugins.trainers._grpo import (
            RowsForRewards,
            make_sampling_trainer_class,
            prompt_lengths,
            prompt_rows,
            reward_functions,
        )
        from plugins.trainers._reference import frozen_reference

        o = self.options
        if o.generation == "vllm":
            import torch

            if not torch.cuda.is_available():
                raise FinetuneError("training.generation = 'vllm' needs a CUDA GPU", hint="use 'transformers' here")
        stop = getattr(job.task, "stop_tokens", lambda tokenizer: [])(job.tokenizer)
        if stop:  # TRL stops sampling at the model's eos ids: the template's end of turn is one
            job.model.generation_config.eos_token_id = stop
        rows = RowsForRewards()
        train = prompt_rows(job.rows, job.tokenizer, rows)
        completion = self._max_completion_length(job.task)
        for warning in prompt_lengths(list(train["prompt"]), job.tokenizer, job.model, completion):
            job.events.warn(warning)
        config = self._config_class()(
            **self._argument_values(job, False),
            num_generations=o.generations,
            max_completion_length=completion,
            temperature=o.temperature,
            top_p=o.top_p,
            top_k=o.top_k,
            beta=0.0,  # the reference is handed over after construction (plugins/trainers/_grpo.py)
            epsilon=o.epsilon,
            epsilon_high=o.epsilon_high,
            **self._own_arguments(),
            num_iterations=o.iterations,
            mask_truncated_completions=o.mask_truncated_completions,
            use_vllm=o.generation == "vllm",
            vllm_mode="colocate",  # in this process, sharing its GPU: no server to start
            reward_weights=[r.options.weight for r in job.rewards],
            disable_dropout=o.disable_dropout,
            log_completions=False,
            shuffle_dataset=True,
        )
        reference = frozen_reference(job.model, "auto") if o.beta else None
        trainer = make_sampling_trainer_class(self.name)(
            model=job.model,
            reward_funcs=reward_functions(job.rewards, rows),
            args=config,
            train_dataset=train,
            processing_class=job.tokenizer,
            callbacks=callbacks,
            reference=reference,
            beta=o.beta,
        )
        trainer.rewards = job.rewards
        return trainer

    def _config_class(self):
        from trl import GRPOConfig

        return GRPOConfig

    def _own_arguments(self) -> dict:
        """The config's arguments that only this trainer's TRL class takes."""
        return dict(loss_type=self.options.loss_type, scale_rewards=self.options.scale_rewards)

    def frozen_copies(self, strategy) -> int:
        """A frozen copy of the model as training starts, where beta > 0 and no adapter's base serves."""
        return int(keeps_copy(self.options, strategy))

    def evaluate(self, job, dataset) -> dict[str, float]:
        """The loss of the held-out rows' reference answers and the task's metrics on them (plugins/trainers/
        _grpo.py `held_out_scores`); the core scores the model's own answers with the rewards."""
        from plugins.trainers._grpo import held_out_scores

        batch = self.options.eval_batch_size or 2 * self.options.batch_size
        return held_out_scores(job.model, dataset, job.collator, job.task, job.compute_metrics, batch)

    def planned_steps(self, train_rows: int, world_size: int = 1) -> int | None:
        """Each prompt is sampled `generations` times: a step takes the answers of batch_size x
        gradient_accumulation_steps x processes / generations prompts."""
        o = self.options
        if o.max_steps:
            return o.max_steps
        prompts = max(1, o.batch_size * o.gradient_accumulation_steps * world_size // o.generations)
        steps = math.ceil(math.ceil(train_rows / prompts) * o.iterations * o.epochs)
        if steps > MAX_STEPS:
            raise FinetuneError(
                f"training.epochs = {o.epochs:g} plans {steps:,} optimizer steps, "
                f"more than the {MAX_STEPS:,} a run may take"
            )
        return steps


class RLOO(GRPO):
    """Reinforcement fine-tuning (REINFORCE with leave-one-out baselines) from the rewards, with TRL's RLOOTrainer."""

    name = "rloo"
    Options = RLOOOptions

    def _config_class(self):
        from trl import RLOOConfig

        return RLOOConfig

    def _own_arguments(self) -> dict:
        return dict(normalize_advantages=self.options.normalize_advantages)


def suspect_warnings(history: list[dict], cap: int) -> list[str]:
    """What the reward-hacking check saw in the last quarter of the logged steps, said when it is much."""
    logs = [h for h in history if CUT in h]
    last = logs[len(logs) - max(1, len(logs) // 4) :]
    out = []
    said = {
        NO_ANSWER: "of the answers training favoured in its last steps had no answer the rewards could extract",
        CUT: f"more of the answers training favoured in its last steps than of the others were cut at {cap} tokens",
    }
    for key, what in said.items():
        values = [h[key] for h in last if h.get(key) is not None]
        share = sum(values) / len(values) if values else 0.0
        if share > SUSPECT_WARNING:
            out.append(
                f"possible reward hacking: {share:.0%} {what} (metrics.jsonl: {key}); check that every reward "
                "pays for a right answer, not for its form or length alone"
            )
    return out


def keeps_copy(options, strategy) -> bool:
    """Whether the run keeps a frozen copy of the model as the reference: beta > 0 without adapters."""
    return bool(options.beta) and not strategy.saves_adapter()


@hookimpl
def register_trainers(register):
    register(GRPO)
    register(RLOO)
