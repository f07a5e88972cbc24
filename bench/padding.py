"""Benchmark: the classic tutorial's pad-to-the-maximum against this runner's dynamic padding.

This is a benchmark, not a test: it asserts nothing, takes minutes, and its numbers depend on the
machine. Run it with

    HF_HUB_OFFLINE=1 .venv/bin/python bench/padding.py                # about 3 minutes on 2 CPU cores
    HF_HUB_OFFLINE=1 .venv/bin/python bench/padding.py --rows 3000 --epochs 4 --json padding.json

(`make bench` runs the first line.)

What it does. It trains the same recipe (recipes/quickstart.toml: generated tweet-like sentiment
posts, a tokenizer trained on them, a tiny GPT-2 classifier built from a config) twice, with
`finetune run ... --set ... --output DIR` exactly as a user would:

- classic: every text padded to the model maximum (`tokenizer.padding = "max_length"`,
  `tokenizer.max_length = 1024`) and batches drawn at random (`training.group_by_length = false`),
  as in the classic Hugging Face fine-tuning tutorial;
- dynamic: this runner's defaults, each batch padded to its longest row
  (`tokenizer.padding = "dynamic"`) and rows of similar length batched together
  (`training.group_by_length = true`), with the same `tokenizer.max_length = 1024`.

Everything else is identical: the model (GPT-2 config n_layer=2, n_head=4, n_embd=64,
n_positions=1024 for both), the data, the splits, the epochs, the seed, the batch size and
`run.threads`. `training.log_every` is set to the same value for both (it changes what is logged,
not what is trained).

What it reports, per variant, read from the run directories:

- train samples/s: `train_samples_per_second` from metrics.json (the Hugging Face Trainer's figure:
  rows x epochs / train_runtime; train_runtime includes the per-epoch validation and checkpoint
  saving, which dominate a very short dynamic run);
- steps-only samples/s: rows trained between consecutive training-log records of metrics.jsonl
  divided by the time between them, leaving out intervals that contain an epoch end (validation,
  checkpoint). This is the speed of the training steps themselves;
- test (and validation) accuracy from metrics.json;
- padding efficiency: the share of real (non-pad) tokens in the training batches, i.e. the sum of
  the encoded lengths divided by rows x padded width. For classic the width is always max_length;
  for dynamic it is the longest row of each batch, with the batches rebuilt exactly as the runner's
  length-grouped sampler builds them (same seed and per-epoch generator), over every pass the run
  made over the training split (a fractional last epoch counts as a whole pass). Evaluation batches
  are padded the same way but are not counted here.

The ratio printed is dynamic / classic. At the default size (1 epoch of 800 rows, chosen so that
the classic variant finishes in a few minutes on 2 CPU cores) the tiny model has taken ~20
optimizer steps and both accuracies are still near chance (3 classes): use `--rows 3000 --epochs 4`
(the quickstart's size; the classic variant then needs about 40 minutes on 2 CPU cores, far less on
a GPU) to compare accuracy meaningfully. `--workdir DIR` keeps both run directories (and their logs)
for a closer look.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = ROOT / "recipes" / "quickstart.toml"

VARIANTS = {
    "classic": {
        "title": "classic: every row padded to max_length, random batches",
        "overrides": ['tokenizer.padding="max_length"', "training.group_by_length=false"],
    },
    "dynamic": {
        "title": "dynamic: the runner's default, each batch padded to its longest row, length-grouped batches",
        "overrides": ['tokenizer.padding="dynamic"', "training.group_by_length=true"],
    },
}
ORDER = ("dynamic", "classic")  # the short run first: a broken setup fails in seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Classic pad-to-max_length vs dynamic padding + length grouping (a benchmark, not a test).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--rows", type=int, default=800, help="synthetic rows generated (80%% train, 10%% val, 10%% test)")
    p.add_argument("--epochs", type=float, default=1.0, help="training epochs, both variants")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="run.threads (torch CPU threads), both")
    p.add_argument("--batch-size", type=int, default=None, help="training.batch_size, both (None: the recipe's)")
    p.add_argument("--seed", type=int, default=None, help="run.seed, both (None: the recipe's)")
    p.add_argument("--max-length", type=int, default=1024, help="model n_positions and tokenizer.max_length")
    p.add_argument("--log-every", type=int, default=10, help="training.log_every, both (for steps-only speed)")
    p.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE, help="a quickstart-like classification recipe")
    p.add_argument("--only", choices=sorted(VARIANTS), help="run one variant only")
    p.add_argument("--workdir", type=Path, help="keep the run directories here (default: a temporary directory)")
    p.add_argument("--json", type=Path, help="also write a JSON summary here")
    args = p.parse_args(argv)
    for name in ("rows", "threads", "max_length", "log_every"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be > 0")
    if args.epochs <= 0 or (args.batch_size is not None and args.batch_size <= 0):
        p.error("--epochs and --batch-size must be > 0")
    return args


def common_overrides(args: argparse.Namespace) -> list[str]:
    model = f"{{ n_layer = 2, n_head = 4, n_embd = 64, n_positions = {args.max_length} }}"
    out = [
        f"model.config={model}",
        f"tokenizer.max_length={args.max_length}",
        f"data.sources[0].rows={args.rows}",
        f"training.epochs={args.epochs}",
        f"training.log_every={args.log_every}",
        f"run.threads={args.threads}",
    ]
    if args.batch_size is not None:
        out.append(f"training.batch_size={args.batch_size}")
    if args.seed is not None:
        out.append(f"run.seed={args.seed}")
    return out


def finetune_command() -> list[str]:
    script = Path(sys.executable).with_name("finetune")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "runner.cli"]


def run_variant(name: str, recipe: Path, overrides: list[str], out_dir: Path, env: dict, console) -> dict:
    cmd = [*finetune_command(), "run", str(recipe)]
    for override in overrides:
        cmd += ["--set", override]
    cmd += ["--output", str(out_dir)]
    log = out_dir.with_name(out_dir.name + ".log")
    console.print(f"[bold]{name}[/]: {shlex.join(cmd)}", soft_wrap=True)
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as fh:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)[-40:])
        console.print(f"[red]{name} failed (exit {proc.returncode}); last lines of {log}:[/]\n{tail}", markup=False)
        raise SystemExit(1)
    console.print(f"  done in {wall:.1f} s")
    return {"command": shlex.join(cmd), "wall_s": wall}


def rows_in_step(step: int, steps_per_epoch: int, n_train: int, rows_per_step: int) -> int:
    """Training rows consumed by optimizer step `step` (1-based); the last step of an epoch is short."""
    if (step - 1) % steps_per_epoch == steps_per_epoch - 1:
        return n_train - (steps_per_epoch - 1) * rows_per_step
    return rows_per_step


def steps_only_speed(records: list[dict], n_train: int, rows_per_step: int) -> dict | None:
    """Rows/s over the logged intervals that contain only training steps (no epoch end)."""
    steps_per_epoch = math.ceil(n_train / rows_per_step)
    logs = sorted((r for r in records if r.get("split") == "train" and r.get("step")), key=lambda r: r["step"])
    others = [r["time"] for r in records if r.get("split") != "train"]
    rows = seconds = steps = 0
    for a, b in zip(logs, logs[1:], strict=False):
        sa, sb = a["step"], b["step"]
        if sb <= sa or any(s % steps_per_epoch == 0 for s in range(sa, sb)):
            continue  # an epoch ended at or after step sa: validation and a checkpoint happened in between
        if any(a["time"] < t < b["time"] for t in others):
            continue
        rows += sum(rows_in_step(s, steps_per_epoch, n_train, rows_per_step) for s in range(sa + 1, sb + 1))
        seconds += b["time"] - a["time"]
        steps += sb - sa
    if not steps or seconds <= 0:
        return None
    return {"samples_per_second": rows / seconds, "steps": steps, "seconds": seconds}


def read_run(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    env = json.loads((run_dir / "environment.json").read_text(encoding="utf-8"))
    recipe = tomllib.loads((run_dir / "recipe.resolved.toml").read_text(encoding="utf-8"))
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    training = recipe["training"]
    n_train = env["split_sizes"]["train"]
    rows_per_step = training["batch_size"] * training.get("gradient_accumulation_steps", 1)
    train = metrics["train"]
    return {
        "train_samples_per_second": train.get("train_samples_per_second"),
        "train_runtime_s": train.get("train_runtime"),
        "global_step": train.get("global_step"),
        "steps_only": steps_only_speed(records, n_train, rows_per_step),
        "test_accuracy": metrics.get("test", {}).get("accuracy"),
        "validation_accuracy": metrics.get("validation", {}).get("accuracy"),
        "split_sizes": env["split_sizes"],
        "max_length": env.get("max_length"),
        "batch_size": training["batch_size"],
        "gradient_accumulation_steps": training.get("gradient_accumulation_steps", 1),
        "epochs": training["epochs"],
        "seed": recipe["run"]["seed"],
        "threads": recipe["run"].get("threads"),
        "torch": env.get("packages", {}).get("torch"),
        "device": env.get("device"),
    }


def train_lengths(recipe: Path, overrides: list[str], run_dir: Path, max_length: int, cache_dir: Path) -> list[int]:
    """The encoded lengths of the training split, as the run encoded it (read from its cache)."""
    os.environ["FINETUNE_CACHE"] = str(cache_dir)
    from transformers import AutoTokenizer

    from runner import load_recipe
    from runner.components import RunContext
    from runner.pipeline.data import prepare_data
    from runner.pipeline.encoding import encode_splits
    from runner.pipeline.run import quiet_libraries

    quiet_libraries(debug=False)
    validated = load_recipe(recipe, overrides)
    task = validated.task.create()
    quiet = lambda text: None  # noqa: E731
    ctx = RunContext(seed=validated.run.seed, cache_dir=cache_dir, info=quiet, warn=quiet)
    data = prepare_data(validated, task, ctx)
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
    encoded, _ = encode_splits(task, tokenizer, {"train": data.splits["train"]}, max_length, cache_dir)
    return [int(n) for n in encoded["train"]["length"]]


def padding_stats(lengths: list[int], variant: str, run: dict) -> dict:
    """Real-token share of the training batches, over every pass the run made over the training split."""
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    batch, passes, max_length = run["batch_size"], math.ceil(run["epochs"]), run["max_length"]
    real = sum(lengths) * passes
    if variant == "classic":
        padded = len(lengths) * max_length * passes
        n_batches = math.ceil(len(lengths) / batch) * passes
    else:
        padded = n_batches = 0
        group = batch * run["gradient_accumulation_steps"]
        for epoch in range(passes):
            # As plugins/trainers/_hf_trainer.py's EpochSeededLengthSampler orders rows for this epoch.
            generator = torch.Generator().manual_seed(run["seed"] * 1_000_003 + epoch)
            order = get_length_grouped_indices(lengths, group, generator=generator)
            for i in range(0, len(order), batch):
                rows = [lengths[j] for j in order[i : i + batch]]
                padded += max(rows) * len(rows)
                n_batches += 1
    rows_seen = len(lengths) * passes
    return {
        "real_token_share": real / padded,
        "real_tokens": real,
        "padded_tokens": padded,
        "mean_real_length": real / rows_seen,
        "mean_padded_length": padded / rows_seen,
        "batches": n_batches,
        "passes": passes,
    }


def ratio(a, b) -> float | None:
    return a / b if a and b else None


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    args = parse_args(argv)
    console = Console(highlight=False)
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.update({k: env[k] for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM")})
    variants = [args.only] if args.only else list(ORDER)
    common = common_overrides(args)

    with tempfile.TemporaryDirectory(prefix="bench-padding-") as tmp:
        work = args.workdir.resolve() if args.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        cache_dir = work / "cache"  # a private encoding cache: the bench neither reads nor fills the user's
        env["FINETUNE_CACHE"] = str(cache_dir)
        results: dict[str, dict] = {}
        started = time.perf_counter()
        for name in variants:
            out_dir = work / name
            if out_dir.exists() and any(out_dir.iterdir()):
                console.print(f"[red]{out_dir} exists and is not empty: choose another --workdir[/]")
                return 2
            overrides = [*common, *VARIANTS[name]["overrides"]]
            info = run_variant(name, args.recipe, overrides, out_dir, env, console)
            results[name] = {"overrides": overrides, **info, **read_run(out_dir)}
            results[name]["run_dir"] = str(out_dir) if args.workdir else None
        total = time.perf_counter() - started

        console.print("computing padding efficiency from the encoded training split ...")
        for name in variants:  # each run's own tokenizer (trained on the same rows: they should agree)
            r = results[name]
            lengths = train_lengths(args.recipe, r["overrides"], work / name, r["max_length"], cache_dir)
            r["padding"] = padding_stats(lengths, name, r)
        first = results[variants[0]]

    sizes = first["split_sizes"]
    table = Table(
        title=f"padding benchmark: {args.recipe.name}, {sizes.get('train')} training rows, {first['epochs']:g} "
        f"epoch(s), batch {first['batch_size']}, {args.threads} thread(s), max_length {first['max_length']}"
    )
    table.add_column("")
    for name in variants:
        table.add_column(name, justify="right")
        console.print(f"{VARIANTS[name]['title']}", soft_wrap=True)
    both = len(variants) == 2
    if both:
        table.add_column("dynamic/classic", justify="right")

    def row(label, values, digits=2, show_ratio=True):
        cells = [fmt(v, digits) for v in values]
        if both:
            r = ratio(values[0], values[1]) if show_ratio else None
            cells.append(f"{r:.3g}x" if r else "-")
        table.add_row(label, *cells)

    get = lambda key: [results[n][key] for n in variants]  # noqa: E731
    row("train samples/s (metrics.json)", get("train_samples_per_second"), 1)
    steps_only = [(s or {}).get("samples_per_second") for s in get("steps_only")]
    row("train samples/s, steps only (metrics.jsonl)", steps_only, 1)
    row("train_runtime (s)", get("train_runtime_s"), 1)
    row("wall time of `finetune run` (s)", get("wall_s"), 1)
    row("optimizer steps", get("global_step"), show_ratio=False)
    row("test accuracy", get("test_accuracy"), 4)
    row("validation accuracy", get("validation_accuracy"), 4)
    pads = get("padding")
    row("real-token share of training batches", [p["real_token_share"] for p in pads], 4)
    row("mean padded length (tokens/row)", [p["mean_padded_length"] for p in pads], 1)
    row("mean real length (tokens/row)", [p["mean_real_length"] for p in pads], 1, show_ratio=False)
    console.print(table)

    summary = {
        "benchmark": "bench/padding.py",
        "config": {
            "recipe": str(args.recipe),
            "rows": args.rows,
            "epochs": args.epochs,
            "threads": args.threads,
            "batch_size": first["batch_size"],
            "seed": first["seed"],
            "max_length": args.max_length,
            "log_every": args.log_every,
            "split_sizes": first["split_sizes"],
            "torch": first["torch"],
            "device": first["device"],
        },
        "variants": results,
        "total_run_wall_s": total,
    }
    if both:
        c, d = results["classic"], results["dynamic"]
        summary["speedup"] = {
            "train_samples_per_second": ratio(d["train_samples_per_second"], c["train_samples_per_second"]),
            "steps_only_samples_per_second": ratio(
                (d["steps_only"] or {}).get("samples_per_second"), (c["steps_only"] or {}).get("samples_per_second")
            ),
        }
        s = summary["speedup"]
        console.print(
            f"speed-up of the runner's default over the classic padding: {fmt(s['train_samples_per_second'], 1)}x "
            f"(metrics.json train_samples_per_second), {fmt(s['steps_only_samples_per_second'], 1)}x (steps only)"
        )
        accuracies = [a for a in get("test_accuracy") if a is not None]
        if accuracies and max(accuracies) < 0.6:
            console.print(
                "[dim]note: test accuracy is still near chance (3 classes) at this size; compare accuracy with "
                "--rows 3000 --epochs 4 (the quickstart's size; ~40 min for the classic variant on 2 CPU cores).[/]"
            )
    console.print(f"total time of the runs: {total:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        console.print(f"summary written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
