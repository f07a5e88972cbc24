"""The plan's memory estimate for Llama-style 1B, 8B and 70B models: full fine-tuning, LoRA and QLoRA.

    .venv/bin/python bench/llm_memory.py

Builds each architecture on PyTorch's meta device (no weights, no download), applies the runner's
own LoRA strategy (r = 16, all linear layers) and reckons with the same functions `finetune plan`
uses (runner.distributed.memory): weights, gradients and Adam states, plus activations for one row
of 2048 tokens in bf16 with gradient checkpointing. No GPU is needed: these are estimates, not
measurements (docs/llm.md prints them; docs/benchmarks.md compares the plan with measured peaks).
"""

from __future__ import annotations

import warnings

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from runner.components import ModelSpec, RunContext
from runner.distributed import memory
from runner.toolkit.modeling import count_parameters

# Llama 3.2 1B, Llama 3.1 8B and 70B: the published config sizes.
SIZES = {
    "1B": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=True),
    "8B": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, tie_word_embeddings=False),
    "70B": dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=8, tie_word_embeddings=False),
}  # fmt: skip
VOCAB, SEQ, BATCH = 128256, 2048, 1


def lora(model):
    from plugins.strategies.peft_methods import Lora

    strategy = Lora(Lora.Options(r=16, alpha=32, target_modules="all-linear"))
    spec = ModelSpec(head="causal_lm", vocab_size=VOCAB, max_length=SEQ)
    return strategy.apply(model, RunContext(seed=0, cache_dir=None), spec)


def main() -> None:
    warnings.filterwarnings("ignore")
    fmt = memory.format_bytes
    print("| model | parameters | full (bf16, Adam) | LoRA r=16 (bf16 base) | QLoRA r=16 (4-bit NF4) |")
    print("|---|---|---|---|---|")
    for name, sizes in SIZES.items():
        config = AutoConfig.for_model("llama", vocab_size=VOCAB, **sizes)
        with torch.device("meta"):
            full = AutoModelForCausalLM.from_config(config)
        total = count_parameters(full)["total"]
        activations = memory.activation_bytes(
            BATCH, SEQ, config.hidden_size, config.num_hidden_layers, config.num_attention_heads, VOCAB, 2, True
        )
        with torch.device("meta"):
            adapted = lora(AutoModelForCausalLM.from_config(config))
        counts = count_parameters(adapted)
        row = [name, f"{total / 1e9:.2f} B"]
        row.append(fmt(memory.model_state_bytes(total, total, precision="bf16").device + activations))
        row.append(fmt(memory.model_state_bytes(counts["total"], counts["trainable"]).device + activations))
        quantized = memory.quantized_weights(adapted)
        each = memory.quantized_bytes_per_param(4, double_quant=True)
        # peft keeps the unquantized weights (embeddings, norms, head) and the adapters in fp32.
        states = memory.model_state_bytes(
            counts["total"], counts["trainable"], precision="fp32", quantized=quantized, quantized_bytes=each
        )
        row.append(fmt(states.device + activations))
        print("| " + " | ".join(row) + " |")
    print(f"\nactivations: {BATCH} row x {SEQ} tokens, bf16, gradient checkpointing; logits in fp32")


if __name__ == "__main__":
    main()
