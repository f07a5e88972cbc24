"""Benchmark: packing against dynamic padding for instruction tuning (a benchmark, not a test).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/packing.py                 # about a minute on 2 CPU cores
    HF_HUB_OFFLINE=1 .venv/bin/python bench/packing.py --rows 3000 --epochs 2

It trains recipes/quickstart-instruct.toml (generated two-turn chats, ChatML, a small GPT-2 built
from a config) three ways with `finetune run ... --set ...`, everything else equal:

- padded-random: each batch padded to its longest row, rows in random order;
- padded: the runner's default, padding per batch with rows of similar length batched together;
- packed: `task.packing = true`, several samples per row of at most max_length tokens (best fit),
  position ids restarting per sample (samples never attend to each other): fewer, fuller rows.

Reported per variant: real (non-pad) training tokens per second, i.e. the encoded lengths of the
training split times the epochs, divided by the Trainer's train_runtime (which includes the
per-epoch validation and checkpoint, the same for all three); the share of real tokens in what
the model computed on; and the final validation perplexity. Packing takes fewer optimizer steps
per epoch (more samples per step), so after one epoch its perplexity is not the padded runs'.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from padding import finetune_command, padding_stats, train_lengths

from runner.pipeline.packing import best_fit

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "quickstart-instruct.toml"
VARIANTS = {
    "padded-random": ["task.packing=false", "training.group_by_length=false"],
    "padded": ["task.packing=false", "training.group_by_length=true"],
    "packed": ["task.packing=true"],
}


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    console = Console(highlight=False)
    common = [
        f"data.sources[0].rows={args.rows}",
        f"training.epochs={args.epochs}",
        f"run.threads={args.threads}",
        "task.sample_prompts=[]",
        "training.eval_on_start=false",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-packing-") as tmp:
        work = Path(tmp)
        env["FINETUNE_CACHE"] = str(work / "cache")
        for name, variant in VARIANTS.items():
            overrides = [*common, *variant]
            cmd = [*finetune_command(), "run", str(RECIPE), *[a for o in overrides for a in ("--set", o)]]
            cmd += ["--output", str(work / name)]
            console.print(f"[bold]{name}[/]: {shlex.join(cmd)}", soft_wrap=True)
            subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
            metrics = json.loads((work / name / "metrics.json").read_text())
            recipe = tomllib.loads((work / name / "recipe.resolved.toml").read_text())
            max_length = json.loads((work / name / "environment.json").read_text())["max_length"]
            lengths = train_lengths(RECIPE, overrides, work / name, max_length, work / "cache")
            run = {
                "batch_size": recipe["training"]["batch_size"],
                "gradient_accumulation_steps": recipe["training"]["gradient_accumulation_steps"],
                "epochs": recipe["training"]["epochs"],
                "seed": recipe["run"]["seed"],
                "max_length": max_length,
            }
            if name == "packed":  # rows of at most max_length; the collator pads a batch to its longest row
                rows = best_fit(lengths, max_length)
                share = sum(lengths) / (len(rows) * max_length)  # a lower bound: rows are padded to max_length
            elif name == "padded":
                share = padding_stats(lengths, "dynamic", run)["real_token_share"]  # the runner's exact order
            else:
                share = random_order_share(lengths, run)
            runtime = metrics["train"]["train_runtime"]
            results[name] = {
                "tokens_per_second": sum(lengths) * args.epochs / runtime,
                "train_runtime_s": runtime,
                "real_token_share": share,
                "validation_perplexity": metrics["validation"]["perplexity"],
            }
    table = Table(title=f"packing benchmark: {args.rows} rows, {args.epochs:g} epoch(s), {args.threads} threads")
    for column in ("variant", "real tokens/s", "vs padded", "real-token share", "validation perplexity"):
        table.add_column(column, justify="right")
    base = results["padded"]["tokens_per_second"]
    for name, r in results.items():
        table.add_row(
            name,
            f"{r['tokens_per_second']:,.0f}",
            f"{r['tokens_per_second'] / base:.2f}x",
            f"{r['real_token_share']:.3f}",
            f"{r['validation_perplexity']:.4f}",
        )
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def random_order_share(lengths: list[int], run: dict) -> float:
    """Real-token share with rows in a random order: an estimate, from one seeded shuffle per epoch
    (the Trainer's own random order is seeded differently)."""
    import math

    import torch

    real = padded = 0
    generator = torch.Generator().manual_seed(run["seed"])
    for _ in range(math.ceil(run["epochs"])):
        order = torch.randperm(len(lengths), generator=generator).tolist()
        for i in range(0, len(order), run["batch_size"]):
            rows = [lengths[j] for j in order[i : i + run["batch_size"]]]
            real += sum(rows)
            padded += max(rows) * len(rows)
    return real / padded


if __name__ == "__main__":
    sys.exit(main())
