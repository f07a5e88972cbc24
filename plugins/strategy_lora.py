"""Strategy `lora`: low-rank adapters through peft; the base model stays frozen.

Target modules default to the attention projections peft knows for the architecture (with a few
additions peft lacks). For classification the new head trains too and is saved with the adapter.
The saved adapter loads with plain peft (`AutoPeftModelFor...`, `PeftModel.from_pretrained`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from runner import FinetuneError, Options, PositiveFloat, Strategy, hookimpl
from runner.options import Fraction

# Architectures peft has no default for.
EXTRA_TARGETS = {"distilbert": ["q_lin", "v_lin"], "gpt_neox": ["query_key_value"]}
TASK_TYPES = {"sequence_classification": "SEQ_CLS", "causal_lm": "CAUSAL_LM"}


class LoraOptions(Options):
    r: int = Field(default=8, gt=0, description="Rank of the update matrices.")
    alpha: PositiveFloat = Field(default=16, description="Scaling numerator: updates are scaled by alpha / r.")
    dropout: Fraction = Field(default=0.05, description="Dropout on the adapter input.")
    target_modules: list[str] | None = Field(
        default=None, description="Module names to adapt (default: the architecture's attention projections)."
    )
    modules_to_save: list[str] | None = Field(
        default=None,
        description="Modules trained in full and saved with the adapter (the head is automatic).",
    )
    bias: Literal["none", "all", "lora_only"] = Field(default="none", description="Which biases train.")
    use_rslora: bool = Field(default=False, description="Rank-stabilised scaling alpha / sqrt(r).")
    use_dora: bool = Field(default=False, description="Weight-decomposed LoRA (DoRA).")


class Lora(Strategy):
    """LoRA adapters (peft): only the adapters and the task head train."""

    name = "lora"
    Options = LoraOptions
    aliases = {"lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "rank": "r"}
    can_merge = True

    def targets(self, model) -> list[str] | None:
        if self.options.target_modules:
            return self.options.target_modules
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as KNOWN

        model_type = getattr(model.config, "model_type", None)
        found = KNOWN.get(model_type) or EXTRA_TARGETS.get(model_type)
        if found is None:
            raise FinetuneError(
                f"strategy 'lora': no default target modules for architecture '{model_type}'",
                hint='name them with strategy.target_modules, e.g. ["q_proj", "v_proj"]',
            )
        return list(found)

    def apply(self, model, ctx, spec):
        from peft import LoraConfig, get_peft_model

        o = self.options
        config = LoraConfig(
            r=o.r,
            lora_alpha=o.alpha,
            lora_dropout=o.dropout,
            target_modules=self.targets(model),
            modules_to_save=o.modules_to_save,
            bias=o.bias,
            use_rslora=o.use_rslora,
            use_dora=o.use_dora,
            task_type=TASK_TYPES[spec.head],
        )
        try:
            return get_peft_model(model, config)
        except ValueError as exc:
            raise FinetuneError(f"strategy 'lora': {exc}") from exc

    def saves_adapter(self) -> bool:
        return True

    def save(self, model, directory):
        model.save_pretrained(directory)

    def load(self, directory, spec, base):
        from peft import PeftModel

        return PeftModel.from_pretrained(base(), directory)


@hookimpl
def register_strategies(register):
    register(Lora)
