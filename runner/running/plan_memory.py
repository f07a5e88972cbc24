"""Memory estimates for a plan: the model states ZeRO accounts for, activations, the start-up peak,
and warnings when a run will not fit. See runner.distributed.memory for what each estimate counts."""

from __future__ import annotations

from runner.recipe.resolved import Recipe


def _weight_bytes(model) -> int:
    """Bytes per element of the model's weights as built (4 unless the model sets a 16-bit dtype)."""
    first = next(iter(model.parameters()), None)
    return first.element_size() if first is not None else 4


def _quantized(recipe: Recipe, model) -> tuple[int, float, str]:
    """Frozen linear weights a quantized base keeps in 4 or 8 bits: (count, bytes each, how)."""
    bits = recipe.model.create().quantization_bits()
    if bits is None:
        return 0, 0.0, ""
    from runner.distributed import memory

    double = bool(getattr(getattr(recipe.model.options, "quantization", None), "double_quant", False))
    each = memory.quantized_bytes_per_param(bits, double and bits == 4)
    count = memory.quantized_weights(model)
    how = f"{count:,} frozen linear weights in {bits} bits, {each:.3g} bytes each with their quantization constants"
    return count, each, how


def _checkpointing(recipe: Recipe) -> bool:
    """Whether the trainer recomputes activations: as set, or by default on a quantized base only."""
    value = getattr(recipe.training.options, "gradient_checkpointing", False)
    return recipe.model.create().quantization_bits() is not None if value is None else bool(value)


def _suggestions(recipe: Recipe, sharding, world_size: int) -> str:
    """What would lower the memory per device, leaving out what the recipe already does."""
    options = recipe.training.options
    tips = []
    if sharding.zero_stage < 3:
        more = "" if world_size > 1 else " with more processes (--nproc)"
        tips.append(f"a higher ZeRO stage{more} ([distributed] engine = 'deepspeed', zero_stage = 3)")
    if sharding.offload_optimizer == "none":
        tips.append("offload_optimizer = 'cpu'")
    if getattr(options, "batch_size", 1) > 1:
        tips.append("a smaller training.batch_size (with gradient_accumulation_steps)")
    if not _checkpointing(recipe):
        tips.append("training.gradient_checkpointing = true")
    return "; try " + ", ".join(tips) if tips else ""


def _speed(recipe: Recipe, model, engine) -> dict:
    """How the trainer will compute (`Trainer.training_speed`): its loss is what the estimate follows."""
    return recipe.training.create().training_speed(model, engine)


def _activations(
    recipe: Recipe, model, spec, max_length: int, precision: str, autocast: bool, loss: str = "plain"
) -> tuple[int, str]:
    """Activation bytes per device and how they were reckoned; (0, why) when the config lacks sizes.

    `autocast`: the weights stay fp32 and matmuls run in 16 bits (the trainer without DeepSpeed):
    the residual stream is fp32, and each forward pass makes 16-bit copies of the weights. `loss`:
    'chunked' or 'liger' never hold all the logits (memory.chunked_loss_bytes counts what they do)."""
    from runner.distributed import activations, memory

    config = getattr(model, "config", None)
    shape = memory.transformer_shape(config)
    if shape is None:
        return 0, "activations unknown: the model config has no layer sizes"
    options = recipe.training.options
    per_row = recipe.training.cls.sequences_per_row  # a preference pair runs two answers forward
    batch = getattr(options, "batch_size", 1) * per_row
    checkpointing = _checkpointing(recipe)
    # Classifier heads output labels, not the vocabulary.
    width = shape.vocab if spec.head in ("causal_lm", "seq2seq_lm") else spec.num_labels or 1
    chunked = loss != "plain" and spec.head == "causal_lm"
    width = 0 if chunked else width  # the chunked loss's share is added below
    seq = max_length + recipe.strategy.create().extra_positions()
    size = 4 if precision == "fp32" else 2
    residual = 4 if autocast or precision == "fp32" else 2
    fused = getattr(config, "_attn_implementation", None) != "eager"
    found = activations.estimate(
        model, batch, seq, shape.heads, shape.hidden, width, size, residual, checkpointing, fused
    )
    if found is None:  # no stack of attention blocks found: the GPT-style formula
        found = memory.activation_bytes(batch, seq, shape.hidden, shape.layers, shape.heads, width, size, checkpointing)
    rows = f"batch {batch // per_row} x {per_row} sequences" if per_row > 1 else f"batch {batch}"
    how = f"{rows} x {seq} tokens, {precision}" + (", gradient checkpointing" if checkpointing else "")
    if chunked:
        found += memory.chunked_loss_bytes(batch * seq, shape.vocab, shape.hidden, size)
        how += f", {loss} loss"
    if autocast and size == 2 and recipe.model.create().quantization_bits() is None:
        found += activations.autocast_copies(model)
        how += ", 16-bit copies of the weights"
    return found, f"activations {memory.format_bytes(found)} ({how})"


def _processes(world_size: int) -> str:
    return f"{world_size} process" + ("es" if world_size != 1 else "")


def _fit_warnings(device: int, host: int, world_size: int, per_machine: int, accelerator, tips: str) -> list[str]:
    """Warnings when `device` bytes per process, plus `host` offloaded bytes per process, will not fit.
    Host memory is a machine's: its `per_machine` processes share it, not all `world_size`."""
    from runner.distributed.memory import format_bytes as fmt

    here = _processes(per_machine) + (" on each machine" if per_machine != world_size else "")
    if not accelerator.cuda:
        # Every process of a machine trains in the same RAM, offloaded states included.
        need = (device + host) * per_machine
        if accelerator.memory and need > accelerator.memory:
            return [f"the estimate of {fmt(need)} for {here} exceeds the {fmt(accelerator.memory)} of RAM{tips}"]
        return []
    warnings = []
    if accelerator.memory and device > accelerator.memory:
        have = f"{fmt(accelerator.memory)} of {accelerator.name}"
        warnings.append(f"the estimate of {fmt(device)} per device exceeds the {have}{tips}")
    if accelerator.host_memory and host * per_machine > accelerator.host_memory:
        warnings.append(
            f"offloaded states need {fmt(host * per_machine)} of CPU memory for {here}, more than the "
            f"host's {fmt(accelerator.host_memory)} of RAM; try offloading to 'nvme'"
        )
    return warnings


def memory_facts(
    recipe: Recipe, model, counts: dict, spec, max_length: int, world_size: int = 1, per_machine: int | None = None
):
    """Rows for the plan table estimating memory per device, and warnings when it will not fit.

    See runner.distributed.memory for what the estimate counts. `world_size` processes in all shard
    the states, `per_machine` of them (default: all) share a machine's RAM. Returns (facts, warnings).
    """
    per_machine = per_machine or world_size
    from runner.distributed import memory

    fmt = memory.format_bytes
    accelerator = memory.detect_accelerator()
    engine = recipe.distributed.create()
    sharding = engine.sharding()
    precision = memory.resolve_precision(getattr(recipe.training.options, "mixed_precision", "auto"), accelerator)
    # DeepSpeed casts the model to 16-bit and keeps fp32 master weights in its optimizer (the ZeRO
    # paper's accounting); without it the trainer autocasts and the model's own (fp32) weights are
    # the master copy, which costs what fp32 training costs.
    deepspeed = engine.casts_weights  # DeepSpeed's engine declares it
    states_precision = precision if deepspeed else ("fp32" if _weight_bytes(model) >= 4 else "bf16")
    quantized, quantized_bytes, quantized_how = _quantized(recipe, model)
    if quantized:
        # Preparing a quantized base for training keeps its other weights (embeddings, norms, head)
        # and the adapters in fp32; an fp32 trainable weight costs what a mixed-precision one does.
        states_precision = "fp32"
    states = memory.model_state_bytes(
        counts["total"],
        counts["trainable"],
        world_size,
        sharding.zero_stage,
        sharding.offload_optimizer,
        sharding.offload_params,
        states_precision,
        quantized=quantized,
        quantized_bytes=quantized_bytes,
    )
    speed = _speed(recipe, model, engine)
    activations, how = _activations(
        recipe, model, spec, max_length, precision, autocast=not deepspeed, loss=speed.get("loss", "plain")
    )
    device = states.device + activations
    # A frozen reference model (preference tuning) holds weights only, in the dtype the model trains in.
    copies = recipe.training.create().frozen_copies(recipe.strategy.create())
    reference = copies * counts["total"] * (2 if deepspeed and precision != "fp32" else _weight_bytes(model))
    device += reference
    # The libraries and data a run holds besides the model: on the CPU the plan holds them too (its
    # model is on the meta device), so its own resident memory measures them.
    footprint = 0 if accelerator.cuda else memory.resident_bytes()
    device += footprint
    parts = f"model states {fmt(states.device)} + {how}"
    if reference:
        parts += f" + reference model {fmt(reference)}"
    if footprint:
        parts += f" + libraries and data {fmt(footprint)}"
    elif accelerator.cuda:
        parts += "; not counted: the CUDA context and allocator, some hundreds of MiB more"
    facts = {"memory per device": f"~{fmt(device)}: {parts}"}
    if "loss" in speed:
        facts["loss"] = f"{speed['loss']}: {speed['loss_why']}"
    if quantized_how:
        facts["quantized base"] = quantized_how
    if reference:
        copy = "copy" if copies == 1 else "copies"
        facts["reference model"] = f"{copies} frozen {copy} of the model, {fmt(reference)}"
    facts["sharding"] = f"ZeRO stage {sharding.zero_stage} over {_processes(world_size)}"
    if per_machine != world_size:
        facts["sharding"] += f" ({per_machine} per machine)"
    offloads = {"optimizer": sharding.offload_optimizer, "weights": sharding.offload_params}
    if any(where != "none" for where in offloads.values()):
        facts["sharding"] += ", offload " + ", ".join(f"{k} to {v}" for k, v in offloads.items() if v != "none")
    if states.host:
        facts["host memory (offload)"] = f"{fmt(states.host)} per process, {fmt(states.host * per_machine)} per machine"
    if states.nvme:
        facts["NVMe (offload)"] = f"{fmt(states.nvme)} per process"
    facts["start-up peak"] = _startup(model, counts, world_size, sharding.zero_stage, quantized, deepspeed, precision)
    facts["accelerator"] = f"{accelerator.name}, {fmt(accelerator.memory)}" if accelerator.memory else accelerator.name
    tips = _suggestions(recipe, sharding, world_size)
    return facts, _fit_warnings(device, states.host, world_size, per_machine, accelerator, tips)


def _startup(model, counts: dict, world_size: int, zero_stage: int, quantized: int, deepspeed: bool, precision: str):
    """What one process holds of the weights while the model is built: under ZeRO-3 (zero.Init)
    its shard plus the largest layer, otherwise the whole model."""
    from runner.distributed import memory

    # zero.Init creates the weights in the training dtype: 16-bit under DeepSpeed's mixed precision
    width = 2 if deepspeed and precision != "fp32" else _weight_bytes(model)
    largest = memory.largest_layer(model)
    peak = memory.startup_bytes(counts["total"], largest, world_size, zero_stage, width)
    shown = memory.format_bytes(peak)
    if zero_stage == 3 and world_size > 1 and not quantized:
        return f"~{shown} of weights per process: its shard, plus the largest layer ({largest:,} parameters) whole"
    return f"~{shown} of weights per process: each builds the whole model before it is sharded"
