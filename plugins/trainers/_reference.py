"""The reference model of the preference trainers that keep one (`dpo`, `kto`): which kind a recipe
gets, what `finetune plan` counts for it, the frozen copy made as training starts, and TRL's copy of a
fresh adapter dropped where the base with adapters off is the same reference."""

from __future__ import annotations

import copy


def keeps_copy(reference: str, strategy) -> bool:
    """Whether the reference is a frozen copy of the whole model (not the base under its adapters)."""
    return reference == "copy" or (reference == "auto" and not strategy.saves_adapter())


def copy_refused(recipe) -> bool:
    """Whether a frozen copy of the model cannot be made: ZeRO-3 shards the weights as they are built."""
    return recipe.distributed.create().sharding().shards_weights


def reference_problems(options, recipe):
    """A frozen copy cannot be made where ZeRO-3 shards the weights as they are built."""
    if keeps_copy(options.reference, recipe.strategy.create()) and copy_refused(recipe):
        yield (
            ("reference",),
            "a frozen copy of the model cannot be made under ZeRO-3, which shards the weights as they are "
            "built: use reference = 'precomputed' (or an adapter strategy, whose reference is the base)",
        )


def frozen_reference(model, reference: str):
    """The frozen copy of the model as training starts ('copy', or 'auto' without adapters), or None."""
    if reference == "copy" or (reference == "auto" and not hasattr(model, "peft_config")):
        return copy.deepcopy(model).eval().requires_grad_(False)
    return None


def drop_fresh_adapter_copy(model, frozen) -> None:
    """TRL 1.16 gives a peft model without ref_model a frozen copy of its adapter, named "ref", as the
    reference (dpo_trainer.py:666-695), for an adapter trained before. The strategy has just attached a
    fresh one, and a fresh LoRA (B = 0) or IA3 (ones) adapter changes nothing: the base with adapters
    off is the model as training starts, and is the reference TRL takes once "ref" is gone
    (:1328-1336), without a second adapter in every checkpoint and model/. A virtual-token adapter
    (prompt, prefix, p-tuning) starts other than the base: it keeps TRL's frozen copy of its start."""
    if frozen is None and hasattr(model, "peft_config") and _starts_as_identity(model):
        model.delete_adapter("ref")


def _starts_as_identity(model) -> bool:
    """Whether the model's fresh adapter leaves the base's outputs as they are (a "ref" copy to drop)."""
    if "ref" not in model.peft_config:
        return False
    config = model.peft_config["default"]
    kind = str(getattr(config.peft_type, "value", config.peft_type))
    return (kind == "LORA" and getattr(config, "init_lora_weights", True) is True) or kind == "IA3"
