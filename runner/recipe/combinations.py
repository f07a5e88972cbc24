"""Checks of how a recipe's components combine, made before anything is built (no torch).

Each yields (key path, message, hint) for the validator to report at the key: the trainer under
the engine, the strategy under its ZeRO stage and on a quantized base, and packing with a model
and strategy known to mix packed samples (runner.pipeline.packing probes the built model too).
"""

from __future__ import annotations

from collections.abc import Iterator

from runner.recipe.resolved import Recipe

Problem = tuple[tuple, str, str | None]  # key path, message, hint

# Causal-LM model types that let packed samples see one another with the 'eager' and 'sdpa' kernels
# (whichever of them builds): `mixing` above 0, where kept-apart samples give exactly 0. Measured on
# transformers 5.24.0 (torch 2.13, CPU, float32) by building each of the 196 model types of
# MODEL_FOR_CAUSAL_LM_MAPPING_NAMES from a tiny random config (2 layers, hidden size 64 or 128, 256
# token ids; a script kept out of the repository): 111 keep packed samples apart, these 64 mix, 21
# could not be built or run that small. 'flex_attention' (forward only, on CPU) agreed wherever it
# builds: the 27 of these that offer it mix with it too; 7 kept-apart ones (llama, qwen2, mistral,
# gemma, gpt_neox, olmo2, granite) gave 0 with it. The 21 not measured (blt, dbrx, gemma3n,
# kimi_linear, musicgen, zamba, zamba2, ...) are left to the build-time probe. Why these mix: a
# mask built without the position ids (opt, afmoe, biogpt, bloom, mpt, xglm, ...), bidirectional
# attention (bert, roberta and the other encoders, unless configured as decoders), a recurrent
# state carried along the row (mamba, rwkv, xlstm, and the hybrids: bamba, jamba, falcon_h1,
# nemotron_h, qwen3_next, qwen3_5, ...), and the decoders of encoder-decoder models (bart, marian,
# pegasus, ...).
MIXES_PACKED_MEASURED_ON = "transformers 5.24.0"
MIXES_PACKED = frozenset(
    {
        "afmoe", "bailing_hybrid", "bamba", "bart", "bert", "bert-generation", "big_bird", "bigbird_pegasus",
        "biogpt", "blenderbot", "blenderbot-small", "bloom", "camembert", "cpmant", "data2vec-text", "electra",
        "ernie", "falcon_h1", "falcon_mamba", "gpt_oss", "granitemoehybrid", "inkling2_loop_text", "inkling2_text",
        "inkling_text", "jamba", "lara_mini", "lfm3", "mamba", "mamba2", "marian", "mbart", "megatron-bert",
        "minimax", "mpt", "mvp", "nemotron_h", "olmo_hybrid", "openai-gpt", "opt", "pegasus", "plbart",
        "prophetnet", "qwen3_5", "qwen3_5_moe", "qwen3_5_moe_text", "qwen3_5_text", "qwen3_next", "qwen4_exp",
        "qwen4_exp_text", "recurrent_gemma", "reformer", "rembert", "roberta", "roberta-prelayernorm", "roc_bert",
        "roformer", "rwkv", "trocr", "xglm", "xlm", "xlm-roberta", "xlm-roberta-xl", "xlnet", "xlstm",
    }
)  # fmt: skip
# The kernels that measurement covers (None: transformers' default, one of them); 'flash_attention_2'
# needs CUDA, and is refused with packing below whatever the architecture. The runner's 'varlen' keeps only
# the attention apart, as these kernels do: recurrent state, bidirectional attention and position
# embeddings not reset by the position ids mix samples under it alike, so the table refuses it too.
MEASURED_KERNELS = (None, "eager", "sdpa", "flex_attention", "varlen")


def engine_problems(recipe: Recipe) -> Iterator[Problem]:
    """The trainer must train under the engine, and the strategy under its ZeRO stage."""
    engine, trainer, strategy = recipe.distributed, recipe.training, recipe.strategy
    if not engine.cls.trains_with(trainer.cls):  # declared by the engine class: Engine.frameworks
        yield (
            (*engine.key, "engine"),
            f"trainer '{trainer.name}' cannot train under engine '{engine.name}'",
            f"the engine sets up trainers built on {', '.join(engine.cls.frameworks or ())}; "
            f"'{trainer.name}' is built on {trainer.cls.framework or 'none of them'}",
        )
    stage = engine.create().sharding().zero_stage
    if stage > strategy.cls.max_zero_stage:
        yield (
            (*engine.key, "zero_stage"),
            f"strategy '{strategy.name}' does not work under ZeRO stage {stage}",
            f"use zero_stage <= {strategy.cls.max_zero_stage}",
        )


def quantization_problems(recipe: Recipe) -> Iterator[Problem]:
    """A quantized base trains only through adapters, and ZeRO-3 must be able to shard it."""
    bits = recipe.model.create().quantization_bits()
    if bits is None:
        return
    strategy, engine = recipe.strategy, recipe.distributed
    widths = strategy.cls.quantized_bases
    if bits not in widths:
        why = (
            f"trains on {' or '.join(map(str, widths))}-bit bases only"
            if widths
            else "trains the base's own weights, which model.quantization keeps frozen"
        )
        yield (
            (*strategy.key, "type"),
            f"strategy '{strategy.name}' {why}; this base is quantized to {bits} bits",
            "use an adapter strategy (lora, ia3, ...) on a quantized base, or drop model.quantization",
        )
    if engine.create().sharding().zero_stage == 3:
        quantization = getattr(recipe.model.options, "quantization", None)
        storage = getattr(quantization, "quant_storage", None)
        if bits == 8:
            reason = "DeepSpeed ZeRO-3 cannot partition 8-bit bitsandbytes weights"
        elif storage != getattr(quantization, "compute_dtype", storage):
            reason = "ZeRO-3 partitions 4-bit weights only when they are stored in the compute dtype"
        else:
            return
        yield (
            (*engine.key, "zero_stage"),
            f"{reason} (model.quantization)",
            "use zero_stage = 2, or for 4 bits set model.quantization.quant_storage = compute_dtype",
        )


def packing_problems(recipe: Recipe) -> Iterator[Problem]:
    """A packing task needs a model, kernel and strategy that keep packed samples apart: what is
    known to mix them before any model is built."""
    if not getattr(recipe.task.options, "packing", False):
        return
    key = (*recipe.task.key, "packing")
    model = recipe.model
    if recipe.strategy.create().extra_positions():
        yield (
            key,
            "packing cannot keep samples apart under a strategy that adds virtual tokens: peft puts them once in "
            "front of each row and drops or shifts the position ids that keep samples apart, so the samples of a "
            "row attend to one another",
            "set task.packing = false, or use an adapter strategy such as lora",
        )
    component = model.create()
    architecture, kernel = component.architecture(), component.attention_kernel()
    if kernel == "flash_attention_2":
        yield (
            (*model.key, "attn_implementation"),
            "packing would mix samples: transformers' 'flash_attention_2' keeps packed samples apart only in a "
            "batch of one row (it reads their boundaries from the position ids then alone); the runner batches "
            "several packed rows, which it attends across",
            "use attn_implementation = 'varlen' (it calls flash-attn's variable-length kernel where flash-attn is "
            "installed), or leave it unset",
        )
    if architecture in MIXES_PACKED and kernel in MEASURED_KERNELS:
        shown = f"'{kernel}'" if kernel else "its default"
        yield (
            key,
            f"packing would mix samples: the {architecture} architecture with {shown} attention lets the samples "
            f"of a packed row see one another (measured on {MIXES_PACKED_MEASURED_ON})",
            "set task.packing = false, or use an architecture that keeps packed samples apart (llama, qwen2, ...)",
        )
