"""The TRL baseline of bench/side_by_side.py: a plain SFTTrainer script, as its documentation recommends.

    python bench/_trl_sft.py --model DIR --data corpus.jsonl --max-length 2048 --batch-size 8 \
        --learning-rate 1e-4 --max-steps 30 [--lora] [--bf16] [--set key=value ...]

It is the script most users would write: the model and the tokenizer from a local directory, the
JSONL corpus through `datasets`, `SFTConfig(packing=True)`, which TRL's docs recommend and which with
its default `packing_strategy="bfd"` also turns on padding-free batches (each batch flattened into
one row, with position ids and cu_seq_lens marking the samples), and TRL's defaults otherwise: its
chunked ("fused LM head") loss, AdamW, the linear schedule, `dtype="float32"` weights under bf16
autocast. Attention: FlashAttention-2 where the `flash_attn` package and a GPU are there (TRL's docs
say packing is meant for FlashAttention), else transformers' default, `sdpa`, which keeps the
samples apart with a block-diagonal mask derived from the position ids.

The settings the comparison needs equal on both sides are flags: sequence length, batch, gradient
accumulation, learning rate, steps, seed, optimizer, precision, gradient checkpointing (TRL's
default is on; the benchmark passes the runner's, off, so that neither side recomputes
activations), LoRA r/alpha/targets/dropout. `--set key=value` passes any other SFTConfig field
(`--set activation_checkpointing=true`), the value read as TOML (else as a string).
"""

from __future__ import annotations

import argparse
import importlib.util
import tomllib


def value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="local directory of the model and its tokenizer")
    p.add_argument("--data", required=True, help="JSONL file with a 'text' column")
    p.add_argument("--output", default="trl-sft-output")
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--learning-rate", type=float, default=2e-5)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--optimizer", default=None, help="TrainingArguments.optim (default: transformers')")
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (TRL's default where supported)")
    p.add_argument("--gradient-checkpointing", choices=("on", "off"), default="off")
    p.add_argument(
        "--attn", default="auto", help="attn_implementation; auto: flash_attention_2 if installed, else sdpa"
    )
    p.add_argument("--lora", action="store_true", help="LoRA instead of full fine-tuning")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument("--lora-dropout", type=float, default=None, help="default: peft's (0.0)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any other SFTConfig field")
    return p.parse_args(argv)


def attention(requested: str) -> str:
    import torch

    if requested != "auto":
        return requested
    flash = importlib.util.find_spec("flash_attn") is not None
    return "flash_attention_2" if flash and torch.cuda.is_available() else "sdpa"


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    dataset = load_dataset("json", data_files=args.data, split="train")
    extra = dict(item.split("=", 1) for item in args.set)
    config = SFTConfig(
        output_dir=args.output,
        max_length=args.max_length,
        packing=True,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        learning_rate=args.learning_rate,
        max_steps=args.max_steps,
        seed=args.seed,
        bf16=args.bf16,
        activation_checkpointing=args.gradient_checkpointing == "on",  # the new name of gradient_checkpointing
        save_strategy="no",
        model_init_kwargs={"attn_implementation": attention(args.attn)},
        **({"optim": args.optimizer} if args.optimizer else {}),
        **{key: value(text) for key, text in extra.items()},
    )
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
            **({"lora_dropout": args.lora_dropout} if args.lora_dropout is not None else {}),
        )
    trainer = SFTTrainer(
        model=args.model, args=config, train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config
    )
    trainer.train()


if __name__ == "__main__":
    main()
