"""The options of trainer `hf` (plugins/trainers/hf.py): `HFTrainerOptions`, which every trainer
built on transformers' Trainer takes (the preference trainers extend it), and `HFOptions`, trainer
hf's own, which add the loss it computes itself."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from runner import MAX_BATCH, MAX_STEPS, Fraction, NonNegativeFloat, Options, PositiveFloat

Interval = Literal["epoch"] | int

# Our names of the bitsandbytes optimizers -> transformers' names.
BNB_OPTIMIZERS = {"adamw_8bit": "adamw_bnb_8bit", "paged_adamw_8bit": "paged_adamw_8bit"}


class HFTrainerOptions(Options):
    learning_rate: PositiveFloat = Field(default=5e-5, description="Peak learning rate.")
    batch_size: int = Field(
        default=16, gt=0, le=MAX_BATCH, description="Rows per device per micro-batch (at most 2**20)."
    )
    eval_batch_size: int | None = Field(
        default=None, gt=0, le=MAX_BATCH, description="Rows per evaluation batch (default: 2x)."
    )
    gradient_accumulation_steps: int = Field(
        default=1, gt=0, le=MAX_BATCH, description="Micro-batches per optimizer step (at most 2**20)."
    )
    epochs: PositiveFloat = Field(
        default=3.0, le=MAX_STEPS, description="Passes over the training data (a run plans at most 10**9 steps)."
    )
    max_steps: int | None = Field(
        default=None,
        gt=0,
        le=MAX_STEPS,
        description="Stop after this many optimizer steps (overrides epochs; at most 10**9).",
    )
    weight_decay: NonNegativeFloat = Field(default=0.0, description="AdamW weight decay.")
    warmup_ratio: Fraction = Field(default=0.0, description="Share of steps spent warming the learning rate up.")
    warmup_steps: int = Field(default=0, ge=0, le=MAX_STEPS, description="Warm-up steps (instead of warmup_ratio).")
    scheduler: Literal[
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
        "constant",
        "constant_with_warmup",
        "inverse_sqrt",
    ] = Field(default="linear", description="Learning-rate schedule after warm-up.")
    optimizer: Literal["adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adamw_8bit", "paged_adamw_8bit"] = (
        Field(
            default="adamw_torch",
            description="Optimizer. 'adamw_8bit' and 'paged_adamw_8bit' (bitsandbytes, the `quantization` extra) keep "
            "Adam's states in 8 bits; 'paged' lets them spill to CPU memory on a CUDA GPU.",
        )
    )
    max_grad_norm: NonNegativeFloat = Field(default=1.0, description="Clip gradients to this norm (0: no clipping).")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        default="auto", description="'auto': bf16 on GPUs that have it, else fp16 on GPU, none on CPU."
    )
    eval_every: Interval = Field(default="epoch", description="Evaluate every N steps, or every 'epoch'.")
    eval_on_start: bool = Field(default=False, description="Also evaluate before the first step (step 0).")
    save_every: Interval | None = Field(
        default=None, description="Checkpoint every N steps or 'epoch' (default: as eval_every)."
    )
    log_every: int = Field(default=10, gt=0, le=MAX_STEPS, description="Log training loss every N steps.")
    keep_checkpoints: int = Field(default=2, gt=0, description="Newest complete checkpoints to keep (plus the best).")
    keep_best: bool = Field(default=True, description="End with the weights of the best evaluation, not the last.")
    best_metric: str = Field(
        default="loss", description="Validation metric that decides 'best': 'loss' or a metric key."
    )
    early_stopping_patience: int | None = Field(
        default=None, gt=0, description="Stop after this many evaluations without improvement."
    )
    group_by_length: bool = Field(default=True, description="Batch rows of similar length together (less padding).")
    gradient_checkpointing: bool | None = Field(
        default=None,
        description="Recompute activations to save memory (default: on for a quantized base, off otherwise).",
    )
    dataloader_workers: int = Field(default=0, ge=0, le=1024, description="Worker processes loading batches.")
    compile: bool = Field(
        default=False,
        description="torch.compile the model (transformers' torch_compile): the first steps compile it, later "
        "ones may run faster. Needs a C++ compiler on the CPU; off by default until measured faster.",
    )

    @model_validator(mode="after")
    def _consistent(self):
        for name in ("eval_every", "save_every"):
            every = getattr(self, name)
            if isinstance(every, int) and not 0 < every <= MAX_STEPS:
                raise ValueError(f"{name} must be 'epoch' or a number of steps from 1 to {MAX_STEPS:,} (got {every})")
        if self.warmup_ratio and self.warmup_steps:
            raise ValueError("give warmup_ratio or warmup_steps, not both")
        save = self.save_every if self.save_every is not None else self.eval_every
        if self.keep_best or self.early_stopping_patience:
            why = "keep_best" if self.keep_best else "early_stopping_patience"
            if isinstance(save, int) != isinstance(self.eval_every, int) or (
                isinstance(save, int) and save % self.eval_every
            ):
                raise ValueError(
                    f"with {why}, checkpoints must fall on evaluations: save_every ({save}) must be "
                    f"eval_every ({self.eval_every}) or a multiple of it"
                )
        return self


class HFOptions(HFTrainerOptions):
    """Trainer hf's options: those every trainer built on transformers' Trainer takes, and the loss
    it computes itself (the preference trainers compute their own)."""

    loss: Literal["auto", "plain", "chunked", "liger"] = Field(
        default="auto",
        description="Causal-LM loss: 'chunked' never holds all the fp32 logits (a chunk of tokens at a time, "
        "recomputed in backward); 'liger' is Liger Kernel's fused kernel (CUDA, the liger-kernel package); "
        "'plain' is the model's own; 'auto': liger where installed on CUDA, else chunked from a 32,000-token "
        "vocabulary, else plain.",
    )
