"""Parameter-efficient strategies through peft: lora, ia3, loha, lokr, prefix_tuning, prompt_tuning,
p_tuning. The base model stays frozen; what trains is saved as an adapter that plain peft loads
(`AutoPeftModelFor...`, `PeftModel.from_pretrained`). For classification the new head trains too
and is saved with the adapter.

Weight-update methods (lora, ia3, loha, lokr) can be merged into the base weights by
`finetune export RUN --merge`; prompt methods (prefix, prompt, p-tuning) add virtual tokens to the
input and cannot.
"""

from __future__ import annotations

import inspect
import types
from typing import Literal

from pydantic import Field, model_validator

from runner import FinetuneError, Fraction, Options, PositiveFloat, Strategy, hookimpl

TASK_TYPES = {
    "sequence_classification": "SEQ_CLS",
    "causal_lm": "CAUSAL_LM",
    "token_classification": "TOKEN_CLS",
    "seq2seq_lm": "SEQ_2_SEQ_LM",
}
# Attention projections for architectures peft has no default for.
EXTRA_TARGETS = {"distilbert": ["q_lin", "v_lin"], "gpt_neox": ["query_key_value"]}

TargetModules = Field(
    default=None,
    description="Module names to adapt, or 'all-linear' for every linear layer but the output "
    "(the usual choice for LLMs and QLoRA); default: peft's choice for the architecture, attention.",
)
ModulesToSave = Field(
    default=None, description="Modules trained in full and saved with the adapter (the task head is automatic)."
)
VirtualTokens = Field(default=20, gt=0, le=512, description="Number of virtual tokens added to every input.")


class PeftStrategy(Strategy):
    """Common ground of the peft methods: wrapping, saving, loading, merging."""

    can_merge = True
    quantized_bases = (4, 8)
    quiet_warnings = (
        # LoRA on GPT-2's Conv1D layers (weights stored transposed): peft notices and sets
        # fan_in_fan_out=True itself, which is the right setting.
        "fan_in_fan_out is set to False but the target module is `Conv1D`",
        # peft reads transformers' old property name while preparing a quantized base.
        "`is_gradient_checkpointing` is deprecated",
    )

    def peft_config(self, model, ctx, spec, task_type: str):
        raise NotImplementedError

    def default_targets(self, model) -> list[str] | None:
        return EXTRA_TARGETS.get(getattr(model.config, "model_type", None))

    def apply(self, model, ctx, spec):
        from peft import get_peft_model, prepare_model_for_kbit_training

        from plugins.strategies._lora_casts import skip_autocast_input_casts

        model_type = getattr(model.config, "model_type", "?")
        if getattr(model, "is_quantized", False):
            # Norms, embeddings and head in fp32 for stable adapter training; gradient checkpointing
            # is the trainer's (transformers 5 checkpoints without reentrancy, so inputs need no grad).
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        try:
            adapted = get_peft_model(model, self.peft_config(model, ctx, spec, TASK_TYPES[spec.head]))
        except (ValueError, TypeError, KeyError) as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise FinetuneError(
                f"strategy '{self.name}' cannot adapt this '{model_type}' model: {detail}",
                hint="name the modules with strategy.target_modules, or choose another strategy",
            ) from exc
        skip_autocast_input_casts(adapted)  # exact: see plugins/strategies/_lora_casts.py
        return adapted

    def saves_adapter(self) -> bool:
        return True

    def load(self, directory, spec, base):
        from peft import PeftModel

        return PeftModel.from_pretrained(base(), directory)

    def merge(self, model):
        return model.merge_and_unload()


class LoraOptions(Options):
    r: int = Field(default=8, gt=0, description="Rank of the update matrices.")
    alpha: PositiveFloat = Field(default=16, description="Scaling numerator: updates are scaled by alpha / r.")
    dropout: Fraction | None = Field(
        default=None,
        description="Dropout on the adapter input. Default: 0 for a language model (causal LM), as peft, torchtune, "
        "LLaMA-Factory and Unsloth default, and what lets mixed precision skip a copy of each adapter's input; "
        "0.05 for the other heads (small classification data).",
    )
    target_modules: list[str] | Literal["all-linear"] | None = TargetModules
    modules_to_save: list[str] | None = ModulesToSave
    bias: Literal["none", "all", "lora_only"] = Field(default="none", description="Which biases train.")
    use_rslora: bool = Field(default=False, description="Rank-stabilised scaling alpha / sqrt(r).")
    use_dora: bool = Field(default=False, description="Weight-decomposed LoRA (DoRA).")


class Lora(PeftStrategy):
    """LoRA adapters (peft), optionally DoRA or rank-stabilised: only adapters and the head train."""

    name = "lora"
    Options = LoraOptions
    aliases = {"lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "rank": "r"}

    @classmethod
    def check(cls, options, recipe):
        # Seen with peft 0.21 and bitsandbytes 0.50 on the CPU: DoRA on an 8-bit layer fails in the
        # first forward (AttributeError: a missing quantization state); not tried on a GPU. 4-bit works.
        if options.use_dora and recipe.model.create().quantization_bits() == 8:
            yield ("use_dora",), "DoRA on an 8-bit base fails in peft 0.21; use bits = 4 or plain LoRA"

    def peft_config(self, model, ctx, spec, task_type):
        from peft import LoraConfig

        o = self.options
        return LoraConfig(
            r=o.r,
            lora_alpha=o.alpha,
            lora_dropout=o.dropout if o.dropout is not None else (0.0 if spec.head == "causal_lm" else 0.05),
            target_modules=o.target_modules or self.default_targets(model),
            modules_to_save=o.modules_to_save,
            bias=o.bias,
            use_rslora=o.use_rslora,
            use_dora=o.use_dora,
            task_type=task_type,
        )


class IA3Options(Options):
    target_modules: list[str] | Literal["all-linear"] | None = TargetModules
    feedforward_modules: list[str] | None = Field(
        default=None, description="Which target modules are feed-forward layers (scaled at their input)."
    )
    modules_to_save: list[str] | None = ModulesToSave


class IA3(PeftStrategy):
    """(IA)^3: learned rescaling vectors on keys, values and feed-forward activations."""

    name = "ia3"
    Options = IA3Options

    def peft_config(self, model, ctx, spec, task_type):
        from peft import IA3Config

        o = self.options
        return IA3Config(
            target_modules=o.target_modules,
            feedforward_modules=o.feedforward_modules,
            modules_to_save=o.modules_to_save,
            task_type=task_type,
        )


class LycorisOptions(Options):
    r: int = Field(default=8, gt=0, description="Rank.")
    alpha: PositiveFloat = Field(default=8, description="Scaling numerator.")
    rank_dropout: Fraction = Field(default=0.0, description="Dropout on the rank dimension.")
    module_dropout: Fraction = Field(default=0.0, description="Chance of skipping the adapter for a batch.")
    target_modules: list[str] | Literal["all-linear"] | None = TargetModules
    modules_to_save: list[str] | None = ModulesToSave


class LoHa(PeftStrategy):
    """LoHa: low-rank Hadamard-product updates (Linear and Conv layers only: not GPT-2's Conv1D)."""

    name = "loha"
    Options = LycorisOptions
    # peft 0.21 wraps 4-bit layers with LoHa/LoKr without unpacking their weights (the first forward
    # fails on a shape mismatch); 8-bit layers work.
    quantized_bases = (8,)

    def peft_config(self, model, ctx, spec, task_type):
        from peft import LoHaConfig

        o = self.options
        return LoHaConfig(
            r=o.r,
            alpha=o.alpha,
            rank_dropout=o.rank_dropout,
            module_dropout=o.module_dropout,
            target_modules=o.target_modules or self.default_targets(model),
            modules_to_save=o.modules_to_save,
            task_type=task_type,
        )


class LoKr(PeftStrategy):
    """LoKr: low-rank Kronecker-product updates (Linear and Conv layers only: not GPT-2's Conv1D)."""

    name = "lokr"
    Options = LycorisOptions
    quantized_bases = (8,)  # as LoHa

    def peft_config(self, model, ctx, spec, task_type):
        from peft import LoKrConfig

        o = self.options
        return LoKrConfig(
            r=o.r,
            alpha=o.alpha,
            rank_dropout=o.rank_dropout,
            module_dropout=o.module_dropout,
            target_modules=o.target_modules or self.default_targets(model),
            modules_to_save=o.modules_to_save,
            task_type=task_type,
        )


class _VirtualTokenStrategy(PeftStrategy):
    can_merge = False
    # ZeRO-3 works since checkpoints gather the prompt encoder on every rank before rank 0 saves it
    # (plugins/trainers/_hf_trainer.py, `_prompt_encoder_gathered`): saving used to hang.

    @classmethod
    def check(cls, options, recipe):
        # Only the virtual tokens and the task head train: they steer what a pretrained base knows.
        # On a random base there is nothing to steer (the quickstart with prompt, p- or prefix
        # tuning scored 0.36-0.41 test accuracy against 0.36 for always answering the commonest label).
        if recipe.model.create().base_reference() is None:
            yield (
                ("type",),
                (
                    f"'{cls.name}' trains virtual tokens in front of a frozen base, which needs a pretrained "
                    f"model; model '{recipe.model.name}' is randomly initialised. Use strategy 'full', 'freeze' "
                    "or 'lora' on it, or a pretrained model"
                ),
            )

    def extra_positions(self) -> int:
        return self.options.num_virtual_tokens

    def merge(self, model):
        raise FinetuneError(
            f"strategy '{self.name}' cannot be merged: its virtual tokens are extra inputs, not weight updates",
            hint="load the adapter with peft instead (model/ holds it)",
        )


class PrefixOptions(Options):
    num_virtual_tokens: int = VirtualTokens
    projection: bool = Field(default=False, description="Reparameterise the prefix through a two-layer MLP.")
    projection_hidden_size: int = Field(default=128, gt=0, description="Hidden size of that MLP.")


def _forward_taking_past_key_values(self, *args, past_key_values=None, **kwargs):
    if past_key_values is not None:
        kwargs["cache"] = past_key_values
    return type(self).forward(self, *args, **kwargs)


def _accept_prefix(model, head: str):
    """Let peft hand the prefix to a classifier whose forward names it `cache`.

    transformers 5.24 renamed `past_key_values` to `cache` (the old name is accepted until 5.40).
    peft 0.21 looks for the old name in the signatures of a classifier and of its backbone, and
    without it refuses prefix tuning for sequence and token classification. This gives those
    forwards a signature with the old name, passing the prefix on as `cache`. Generating heads are
    left alone: peft passes them the prefix without looking, and generation reads the signature.
    """
    if head not in ("sequence_classification", "token_classification"):
        return model
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    for module in (model, backbone):
        if module is None:
            continue
        names = inspect.signature(module.forward).parameters
        if "cache" in names and "past_key_values" not in names:
            module.forward = types.MethodType(_forward_taking_past_key_values, module)
    return model


class PrefixTuning(_VirtualTokenStrategy):
    """Prefix tuning: learned key/value prefixes in every attention layer."""

    name = "prefix_tuning"
    Options = PrefixOptions

    def apply(self, model, ctx, spec):
        return super().apply(_accept_prefix(model, spec.head), ctx, spec)

    def load(self, directory, spec, base):
        return super().load(directory, spec, lambda: _accept_prefix(base(), spec.head))

    def peft_config(self, model, ctx, spec, task_type):
        from peft import PrefixTuningConfig

        o = self.options
        return PrefixTuningConfig(
            num_virtual_tokens=o.num_virtual_tokens,
            prefix_projection=o.projection,
            encoder_hidden_size=o.projection_hidden_size,
            task_type=task_type,
        )


class PromptTuningOptions(Options):
    num_virtual_tokens: int = VirtualTokens
    init: Literal["random", "text"] = Field(
        default="random", description="Start the prompt from random vectors or from the embeddings of init_text."
    )
    init_text: str | None = Field(default=None, description="With init = 'text': e.g. 'Classify the sentiment:'.")

    @model_validator(mode="after")
    def _text(self):
        if self.init == "text" and not self.init_text:
            raise ValueError("init = 'text' needs init_text")
        if self.init == "random" and self.init_text:
            raise ValueError("init_text is used only with init = 'text'")
        return self


class PromptTuning(_VirtualTokenStrategy):
    """Prompt tuning: learned soft-prompt embeddings before the input (random or text init)."""

    name = "prompt_tuning"
    Options = PromptTuningOptions

    def peft_config(self, model, ctx, spec, task_type):
        from peft import PromptTuningConfig

        o = self.options
        # peft loads the tokenizer by path to embed init_text; while planning there is none yet,
        # and a random start has the same parameter count.
        text = o.init == "text" and ctx.tokenizer_dir is not None
        return PromptTuningConfig(
            num_virtual_tokens=o.num_virtual_tokens,
            prompt_tuning_init="TEXT" if text else "RANDOM",
            prompt_tuning_init_text=o.init_text if text else None,
            tokenizer_name_or_path=str(ctx.tokenizer_dir) if text else None,
            task_type=task_type,
        )


class PTuningOptions(Options):
    num_virtual_tokens: int = VirtualTokens
    encoder: Literal["mlp", "lstm"] = Field(default="mlp", description="The prompt encoder network.")
    encoder_hidden_size: int = Field(default=128, gt=0, description="Hidden size of the prompt encoder.")
    encoder_num_layers: int = Field(default=2, gt=0, description="Layers of the prompt encoder.")
    encoder_dropout: Fraction = Field(default=0.0, description="Dropout in the prompt encoder.")


class PTuning(_VirtualTokenStrategy):
    """P-tuning: virtual tokens produced by a small trained prompt encoder."""

    name = "p_tuning"
    Options = PTuningOptions

    def peft_config(self, model, ctx, spec, task_type):
        from peft import PromptEncoderConfig

        o = self.options
        return PromptEncoderConfig(
            num_virtual_tokens=o.num_virtual_tokens,
            encoder_reparameterization_type=o.encoder.upper(),
            encoder_hidden_size=o.encoder_hidden_size,
            encoder_num_layers=o.encoder_num_layers,
            encoder_dropout=o.encoder_dropout,
            task_type=task_type,
        )


@hookimpl
def register_strategies(register):
    for cls in (Lora, IA3, LoHa, LoKr, PrefixTuning, PromptTuning, PTuning):
        register(cls)
