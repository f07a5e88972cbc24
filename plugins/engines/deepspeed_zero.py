"""Engine `deepspeed`: DeepSpeed ZeRO stages 0-3 with optional CPU/NVMe offload.

The DeepSpeed config is generated from the recipe: batch sizes, gradient accumulation, gradient
clipping and precision come from `[training]` (DeepSpeed's "auto" values, which the trainer fills
in), so they cannot disagree. A `deepspeed_config` table extends it for settings the recipe has no
key for; it is checked by DeepSpeed's own config model before any process starts.

Everything DeepSpeed needs from a run is reached through the `Engine` methods below, and done by
this plugin's own modules: the launch environment and the quieting of DeepSpeed's prints
(`_quiet`), ZeRO-3's partitioned build and streamed save (`_zero3`, `_zero_init`), and resuming
on another number of processes through universal checkpoints (`_universal`). It trains with
trainers built on transformers, which takes the config as `TrainingArguments(deepspeed=...)`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from plugins.engines import _quiet, _universal
from runner import Engine, EngineOptions, FinetuneError, Sharding, hookimpl, world_size

Offload = Literal["none", "cpu", "nvme"]

# What [training] decides; a deepspeed_config table that sets them would be silently overridden.
FROM_TRAINING = {
    "train_batch_size": "training.batch_size (times processes and gradient_accumulation_steps)",
    "train_micro_batch_size_per_gpu": "training.batch_size",
    "gradient_accumulation_steps": "training.gradient_accumulation_steps",
    "gradient_clipping": "training.max_grad_norm",
    "bf16": "training.mixed_precision",
    "fp16": "training.mixed_precision",
}


class DeepSpeedOptions(EngineOptions):
    zero_stage: Literal[0, 1, 2, 3] = Field(
        default=2,
        description="ZeRO stage: 1 shards optimizer states, 2 also gradients, 3 also the weights (0: none).",
    )
    offload_optimizer: Offload = Field(
        default="none", description="Keep optimizer states (and the optimizer step) on 'cpu' or 'nvme'."
    )
    offload_params: Offload = Field(default="none", description="Keep weights on 'cpu' or 'nvme' (ZeRO-3 only).")
    nvme_path: str | None = Field(default=None, description="Directory on a fast local disk for 'nvme' offload.")
    overlap_comm: bool = Field(default=True, description="Overlap gradient reduction with the backward pass.")
    contiguous_gradients: bool = Field(default=True, description="Copy gradients into one buffer (less fragmentation).")
    reduce_bucket_size: int | None = Field(
        default=None, gt=0, description="Elements reduced at once (default: hidden_size^2, from the model)."
    )
    allgather_bucket_size: int | None = Field(
        default=None, gt=0, description="Elements gathered at once in stages 1-2 (default: DeepSpeed's 5e8)."
    )
    stage3_prefetch_bucket_size: int | None = Field(
        default=None, gt=0, description="ZeRO-3: elements of weights fetched ahead (default: from the model)."
    )
    stage3_param_persistence_threshold: int | None = Field(
        default=None, ge=0, description="ZeRO-3: weights smaller than this stay whole (default: from the model)."
    )
    deepspeed_config: dict[str, Any] = Field(
        default_factory=dict,
        description="Raw DeepSpeed config merged over the generated one, for experts; checked by DeepSpeed.",
    )

    # Field validators (not one model validator) so that each error points at its own key.
    @field_validator("offload_optimizer")
    @classmethod
    def _optimizer_stage(cls, value, info: ValidationInfo):
        stage = info.data.get("zero_stage", 2)
        if value != "none" and stage == 0:
            raise ValueError("offload_optimizer needs zero_stage 1, 2 or 3")
        if value == "nvme" and stage != 3:
            raise ValueError("offload_optimizer = 'nvme' needs zero_stage = 3 (ZeRO-Infinity)")
        return value

    @field_validator("offload_params")
    @classmethod
    def _params_stage(cls, value, info: ValidationInfo):
        stage = info.data.get("zero_stage", 2)
        if value != "none" and stage != 3:
            raise ValueError(f"offload_params needs zero_stage = 3 (got zero_stage = {stage})")
        return value

    @model_validator(mode="after")
    def _nvme_needs_a_path(self):
        if "nvme" in (self.offload_optimizer, self.offload_params) and not self.nvme_path:
            raise ValueError("'nvme' offload needs nvme_path, a directory on a fast local disk")
        return self

    @field_validator("deepspeed_config")
    @classmethod
    def _not_from_training(cls, value):
        for key, instead in FROM_TRAINING.items():
            if key in value:
                raise ValueError(f"{key} comes from the recipe: set {instead} instead")
        return value


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class DeepSpeed(Engine):
    """DeepSpeed ZeRO (stages 0-3), with optimizer and weight offload to CPU or NVMe."""

    name = "deepspeed"
    Options = DeepSpeedOptions
    frameworks = ("transformers",)  # the config goes to transformers' DeepSpeed integration
    casts_weights = True  # 16-bit weights, fp32 masters in the optimizer states (the ZeRO paper's accounting)
    aliases = {
        "stage": "zero_stage",
        "zero": "zero_stage",
        "gradient_clipping": "training.max_grad_norm",
        "offload_param": "offload_params",
        "config": "deepspeed_config",
    }

    def sharding(self) -> Sharding:
        o = self.options
        return Sharding(o.zero_stage, o.offload_optimizer, o.offload_params)

    def _offload(self, where: str) -> dict[str, Any]:
        device = {"device": where, "pin_memory": True}
        return {**device, "nvme_path": self.options.nvme_path} if where == "nvme" else device

    def deepspeed_config(self) -> dict[str, Any]:
        o = self.options
        zero: dict[str, Any] = {
            "stage": o.zero_stage,
            "overlap_comm": o.overlap_comm,
            "contiguous_gradients": o.contiguous_gradients,
            "reduce_bucket_size": o.reduce_bucket_size or "auto",
        }
        if o.allgather_bucket_size and o.zero_stage in (1, 2):
            zero["allgather_bucket_size"] = o.allgather_bucket_size
        if o.zero_stage == 3:
            zero["stage3_prefetch_bucket_size"] = o.stage3_prefetch_bucket_size or "auto"
            zero["stage3_param_persistence_threshold"] = o.stage3_param_persistence_threshold or "auto"
        if o.offload_optimizer != "none":
            zero["offload_optimizer"] = self._offload(o.offload_optimizer)
        if o.offload_params != "none":
            zero["offload_param"] = self._offload(o.offload_params)
        config: dict[str, Any] = {
            "zero_optimization": zero,
            # "auto": the trainer fills these in from [training], so the two cannot disagree
            "train_batch_size": "auto",
            "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto",
            "bf16": {"enabled": "auto"},
            "fp16": {"enabled": "auto"},
            "steps_per_print": 10**9,  # progress is the reporters' job
            "wall_clock_breakdown": False,
        }
        if o.offload_optimizer != "none":
            # An offloaded optimizer step runs DeepSpeed's CPU Adam; a torch optimizer would be refused.
            adam = {"lr": "auto", "betas": "auto", "eps": "auto", "weight_decay": "auto"}
            config["optimizer"] = {"type": "AdamW", "params": adam}
        return _merge(config, o.deepspeed_config)

    # -- launch ----------------------------------------------------------------------------------
    def launch_environment(self) -> dict[str, str]:
        """DS_ACCELERATOR=cpu on a machine without GPUs: else every import of DeepSpeed warns that
        it guessed the CPU (`_quiet`)."""
        return _quiet.cpu_accelerator()

    def check_launch(self, world_size: int) -> None:
        """Let DeepSpeed's own config model judge the merged config (unknown keys, bad values)."""
        if not self.options.deepspeed_config:
            return
        try:
            from deepspeed.runtime.config import DeepSpeedConfig
        except ImportError as exc:
            raise FinetuneError(f"engine 'deepspeed' needs DeepSpeed installed ({exc})") from None
        concrete = self.deepspeed_config()
        concrete.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1, gradient_clipping=1.0)
        concrete.pop("train_batch_size")
        concrete["bf16"], concrete["fp16"] = {"enabled": False}, {"enabled": False}
        zero = concrete["zero_optimization"]
        for key in ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold"):
            if zero.get(key) == "auto":
                zero[key] = 1
        try:
            DeepSpeedConfig(concrete)
        except Exception as exc:  # DeepSpeed raises pydantic errors, AssertionError or ValueError
            first = str(exc).strip().splitlines()
            raise FinetuneError(
                f"distributed.deepspeed_config is not a valid DeepSpeed config: {' '.join(first[:3])}",
                hint="see https://www.deepspeed.ai/docs/config-json/",
            ) from None

    # -- resume: ZeRO shards cut for another number of processes ----------------------------------
    def checkpoint_world_size(self, checkpoint: Path) -> int | None:
        """The ranks whose ZeRO optimizer shards the checkpoint holds (None: whole states)."""
        return _universal.shard_count(checkpoint)

    def prepare_checkpoint(self, checkpoint: Path, world_size: int, say, why: str = "", instead: str = "") -> bool:
        """Convert a checkpoint of another number of processes to a universal one (`_universal`)."""
        sharding = self.sharding()
        offload = (sharding.offload_optimizer, sharding.offload_params)
        return _universal.prepare(checkpoint, world_size, sharding.zero_stage, offload, say, why, instead)

    # -- build, train, save ----------------------------------------------------------------------
    @contextlib.contextmanager
    def building(self, model, trainer):
        """DeepSpeed's communication backend starts quietly; under ZeRO-3 the model is built
        partitioned, a random-init one with one process's draws (`_zero3`, `_zero_init`)."""
        from plugins.engines import _zero3

        _quiet.quiet_collectives()  # before DeepSpeed's first collective (zero.Init's, or the trainer's)
        _quiet.quiet_deepspeed_comm()  # before DeepSpeed's communication backend starts
        config = _zero3.build_config(self.deepspeed_config(), self.options.zero_stage, model, trainer.options)
        if config is None:
            yield
            return
        from plugins.engines._zero_init import seeded_from_config

        _zero3.register(config)
        with _zero3.freed_layers_returned(), seeded_from_config():
            yield

    def trainer_settings(self, framework: str, checkpoint: Path | None) -> dict[str, Any]:
        """`TrainingArguments(deepspeed=...)`: the config, set to load `checkpoint` as universal when
        it holds the shards of another number of processes (a FinetuneError when not converted)."""
        if framework not in self.frameworks:
            raise FinetuneError(f"engine 'deepspeed' cannot set up a trainer built on {framework or 'no framework'}")
        return {"deepspeed": _universal.universal_load(self.deepspeed_config(), checkpoint, world_size())}

    def whole_model(self, model):
        from plugins.engines import _zero3

        return _zero3.gathered(list(model.parameters()))  # only ZeRO-3's partitioned weights: else nothing

    def save_model(self, model, strategy, directory: Path, write_rest, publish) -> None:
        """Under ZeRO-3, gathered to rank 0 one layer at a time (`_zero3.save`)."""
        from plugins.engines import _zero3

        if not _zero3.partitioned(model):
            return super().save_model(model, strategy, directory, write_rest, publish)
        _zero3.save(model, strategy, directory, write_rest, publish, lambda: self.whole_model(model))


@hookimpl
def register_engines(register):
    register(DeepSpeed)
