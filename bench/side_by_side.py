"""Benchmark: the runner beside a plain TRL SFTTrainer script, same model, data and settings (not a test).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/side_by_side.py          # needs a CUDA GPU: 4 runs, ~6 min on an H100
    HF_HUB_OFFLINE=1 .venv/bin/python bench/side_by_side.py --tiny   # CPU smoke test of the same code path

What it trains. bench/gpu_train.py's ~1B Llama-style model (hidden 2048, 16 layers, 16 heads with 8
key/value heads, MLP 7168, 32000-entry vocabulary trained on its synthetic corpus, 2048 positions),
packed rows of 2048 tokens, batch 8, bf16 mixed precision over float32 weights, adamw_torch_fused,
learning rate 1e-4 (full) / 2e-4 (LoRA) on the linear schedule, seed 0, `--warmup` + `--steps`
optimizer steps. Four runs: full fine-tuning and LoRA (r 16, alpha 32, every linear layer but the
output), each with

- the runner: `finetune run` of a generated recipe (`task.packing = true`), the runner's defaults
  for everything else: loss, attention kernel, compile, LoRA dropout; `--runner-set
  training.loss=chunked` and the like add or override recipe keys;
- TRL: bench/_trl_sft.py, a plain SFTTrainer script with `packing=True` as TRL's docs recommend (its
  default "bfd" strategy, padding-free batches), TRL's defaults otherwise; `--trl-set key=value`
  passes other SFTConfig fields.

Both start from the same saved base (tokenizer and weights, see _side_common.py) and read the same
JSONL corpus. Gradient checkpointing is off on both sides (TRL's default is on; `--gradient-
checkpointing` turns it on for both).

How it measures. The same probe (bench/_probe.py) in both: real tokens (non-pad) of each
micro-batch counted in `Trainer.training_step`, every optimizer step stamped after
`torch.cuda.synchronize()`, the loss of every step, `torch.cuda.max_memory_allocated()`. Reported
per run: real tokens/s over the timed steps (after `--warmup`), MFU against the measured bf16 matmul
peak (6N FLOPs per token for full, 4N_frozen + 6N_trainable for LoRA, N counted in the process),
step time, peak memory, the final loss (the mean of the last 5 steps), then runner / TRL ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _side_common as common

gpu_train = common.gpu_train
RUNS = ("full-runner", "full-trl", "lora-runner", "lora-trl")


def select(only: list[str] | None) -> list[str]:
    """--only names: a run, or full/lora/runner/trl for every run that has it in its name."""
    if not only:
        return list(RUNS)
    return [run for run in RUNS if any(name == run or name in run.split("-") for name in only)]


def run_one(name: str, setup, base: Path, pad_id: int, work: Path, env: dict, args) -> dict:
    strategy, tool = name.split("-")
    out = work / name
    shutil.rmtree(out, ignore_errors=True)  # an earlier call's run in the same --workdir
    out.mkdir()
    stop_at = setup.warmup + setup.steps
    probe = {"stop_at": stop_at, "pad_id": pad_id, "profile": None}
    run_dir = None
    if tool == "runner":
        import tomli_w

        extra = common.dotted(args.runner_set, "--runner-set")
        table = common.runner_recipe(name, strategy, setup, base, work / "corpus.jsonl", extra, args.lora_dropout)
        path = out / "recipe.toml"
        path.write_text(tomli_w.dumps(table), encoding="utf-8")  # `finetune run` validates it first
        run_dir = out / "run"
        cmd = [*gpu_train.finetune_command(), "run", str(path), "--output", str(run_dir)]
    else:
        cmd = common.trl_command(strategy, setup, base, work / "corpus.jsonl", out, args)
    print(f"[{name}] {shlex.join(cmd)}", flush=True)
    problem, wall = common.launch(cmd, out, env, probe, args.timeout)
    result = collect(out / "probe", setup, strategy)
    result.update(wall_s=wall, log=str(out / "run.log"), command=shlex.join(cmd))
    if problem:
        result["outcome"] = problem
    if result["outcome"] != "ok":
        result["detail"] = common.failure_detail(out / "run.log", run_dir)
        if "out of memory" in result["detail"].lower() or "OutOfMemoryError" in result["detail"]:
            result["outcome"] = "OOM"
    print(f"[{name}] {result['outcome']} in {wall:.0f} s", flush=True)
    return result


def collect(probe_dir: Path, setup, strategy: str) -> dict:
    """Tokens/s over the timed steps, step time, peak memory, FLOPs/token and the final loss of one run."""
    probes = [json.loads(p.read_text()) for p in sorted(probe_dir.glob("probe-*.json"))]
    if not probes:
        return {"outcome": "failed"}
    peak = max(p["peak_memory"] for p in probes)  # a run that ran out of memory before its first step still says
    probes = [p for p in probes if p["steps"]] or probes  # a launcher process that touched CUDA trained nothing
    main = min(probes, key=lambda p: p["rank"])
    keys = ("parameters", "trainable", "attn_implementation", "lora_dropout", "compiled", "settings")
    result = {k: main.get(k) for k in keys}
    result.update(peak_memory=peak, memory_kind=main["memory_kind"])
    if main.get("parameters"):
        result["flops_per_token"] = gpu_train.flops_per_token(main["parameters"], main["trainable"], strategy)
    steps = {s["step"]: s for s in main["steps"]}
    first, last = setup.warmup, setup.warmup + setup.steps
    if not main["stopped"] or first not in steps or last not in steps:
        return {**result, "outcome": "failed"}
    timed = [steps[k] for k in range(first + 1, last + 1) if k in steps]
    real = sum(s["real"] for p in probes for s in p["steps"] if first < s["step"] <= last)
    computed = sum(s["computed"] for p in probes for s in p["steps"] if first < s["step"] <= last)
    seconds = steps[last]["time"] - steps[first]["time"]
    losses = [s["loss"] for s in sorted(main["steps"], key=lambda s: s["step"]) if s["loss"] is not None]
    result.update(
        outcome="ok",
        seconds=seconds,
        tokens=real,
        tokens_per_s=real / seconds,
        real_share=real / computed if computed else None,
        step_s=seconds / len(timed),
        losses=losses,
        final_loss=sum(losses[-common.LOSS_LAST :]) / len(losses[-common.LOSS_LAST :]) if losses else None,
    )
    return result


# -- the table ----------------------------------------------------------------------------------------


def mfu(result: dict, peak: dict) -> float | None:
    tps, fpt = result.get("tokens_per_s"), result.get("flops_per_token")
    return tps * fpt / peak["flops"] if tps and fpt else None


def ratios(runs: dict, peak: dict) -> dict:
    """runner / TRL for each strategy where both ran: tokens/s, MFU, step time, memory; the loss difference."""
    out = {}
    for strategy in ("full", "lora"):
        a, b = runs.get(f"{strategy}-runner", {}), runs.get(f"{strategy}-trl", {})
        if a.get("outcome") != "ok" or b.get("outcome") != "ok":
            continue
        ma, mb = mfu(a, peak), mfu(b, peak)
        out[strategy] = {
            "tokens_per_s": a["tokens_per_s"] / b["tokens_per_s"],
            "mfu": ma / mb if ma and mb else None,
            "step_s": a["step_s"] / b["step_s"],
            "peak_memory": a["peak_memory"] / b["peak_memory"],
            "final_loss_rel_diff": (a["final_loss"] - b["final_loss"]) / b["final_loss"]
            if a.get("final_loss") and b.get("final_loss")
            else None,
        }
    return out


COLUMNS = ("run", "tool", "real tokens/s", "MFU", "step", "peak memory", f"final loss (last {common.LOSS_LAST})",
           "attention", "LoRA dropout", "outcome")  # fmt: skip


def row(name: str, r: dict, peak: dict) -> list[str]:
    strategy, tool = name.split("-")
    m = mfu(r, peak)
    dropout = r.get("lora_dropout")
    return [
        strategy,
        "runner" if tool == "runner" else "TRL",
        f"{r['tokens_per_s']:,.0f}" if r.get("tokens_per_s") else "-",
        f"{100 * m:.1f}%" if m else "-",
        f"{r['step_s']:.3f} s" if r.get("step_s") else "-",
        f"{gpu_train.fmt_bytes(r['peak_memory'])} ({r['memory_kind']})" if r.get("peak_memory") else "-",
        f"{r['final_loss']:.4f}" if r.get("final_loss") is not None else "-",
        r.get("attn_implementation") or "-",
        "-" if strategy == "full" or dropout is None else f"{dropout:g}",
        r.get("outcome", "-"),
    ]


def differences(runs: dict) -> list[str]:
    """The TrainingArguments in which the two tools' runs of a strategy differ, as the probe read them."""
    lines = []
    for strategy in ("full", "lora"):
        a = runs.get(f"{strategy}-runner", {}).get("settings") or {}
        b = runs.get(f"{strategy}-trl", {}).get("settings") or {}
        differ = [f"{k} {a[k]} / {b[k]}" for k in a if k in b and a[k] != b[k]]
        if a and b:
            lines.append(f"{strategy}: settings that differ (runner / TRL): {'; '.join(differ) or 'none'}")
    return lines


def table(runs: dict, peak: dict) -> str:
    rows = [list(COLUMNS), ["---"] * len(COLUMNS)]
    together = ratios(runs, peak)
    for strategy in ("full", "lora"):
        for tool in ("runner", "trl"):
            name = f"{strategy}-{tool}"
            if name in runs:
                rows.append(row(name, runs[name], peak))
        q = together.get(strategy)
        if q:
            loss = q["final_loss_rel_diff"]
            rows.append([
                strategy, "**runner / TRL**", f"**{q['tokens_per_s']:.2f}x**",
                f"{q['mfu']:.2f}x" if q["mfu"] else "-", f"{q['step_s']:.2f}x", f"{q['peak_memory']:.2f}x",
                f"{100 * loss:+.2f}%" if loss is not None else "-", "", "", "",
            ])  # fmt: skip
    return "\n".join("| " + " | ".join(cells) + " |" for cells in rows)


def versions() -> dict:
    out = {}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "flash-attn", "liger-kernel"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def write_json(path: Path, peak: dict, setup, runs: dict, args) -> None:
    payload = {
        "peak": peak,
        "setup": setup.__dict__,
        "versions": versions(),
        "runner_set": args.runner_set,
        "trl_set": args.trl_set,
        "runs": runs,
        "ratios": ratios(runs, peak),
    }
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


# -- the command line --------------------------------------------------------------------------------


def add_shared_arguments(p: argparse.ArgumentParser) -> None:
    """The options side_by_side.py and profile_step.py share."""
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: a tiny model, fp32, a few steps")
    p.add_argument("--steps", type=int, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, help="untimed optimizer steps before them")
    p.add_argument("--batch-size", type=int, help="rows of --seq-len tokens per micro-batch (default 8; --tiny 4)")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default 1)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations, on both sides")
    p.add_argument("--threads", type=int, help="torch CPU threads (--tiny: 1)")
    p.add_argument("--lora-dropout", type=float, help="LoRA dropout on both sides (default: each tool's own)")
    p.add_argument("--runner-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="add or override a runner recipe key: training.loss=chunked")  # fmt: skip
    p.add_argument("--timeout", type=int, default=900, help="seconds one run may take")
    p.add_argument("--workdir", type=Path, help="keep the corpus, base model, recipes, logs and probe records here")


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    add_shared_arguments(p)
    p.add_argument("--only", nargs="+", metavar="RUN",
                   help="run only these: " + " ".join(RUNS) + ", or full / lora / runner / trl")  # fmt: skip
    p.add_argument("--trl-set", action="append", default=[], metavar="KEY=VALUE",
                   help="another SFTConfig field for the TRL script, e.g. gradient_checkpointing=true")  # fmt: skip
    p.add_argument("--trl-attn", default="auto",
                   help="TRL attn_implementation (auto: flash_attention_2 if installed, else sdpa)")  # fmt: skip
    p.add_argument("--json", type=Path, help="also write every figure here (rewritten after each run)")
    args = p.parse_args(argv)
    check_positive(p, args)
    known = set(RUNS) | {"full", "lora", "runner", "trl"}
    for name in args.only or []:
        if name not in known:
            p.error(f"--only {name}: choose from {', '.join(sorted(known))}")
    return args


def check_positive(p: argparse.ArgumentParser, args) -> None:
    for name in ("steps", "warmup", "batch_size", "grad_accum", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    common.dotted(args.runner_set, "--runner-set")  # a malformed pair fails here, before any work


def make_setup(args):
    """gpu_train's setup (the 1B model, or the tiny one), with this benchmark's step defaults."""
    defaults = {"warmup": 2, "steps": 4} if args.tiny else {"warmup": 5, "steps": 25}
    chosen = {k: getattr(args, k) or v for k, v in defaults.items()}
    # --tiny: one thread unless told otherwise. A smoke run shares its CPU (CI, tests), and OpenMP
    # threads that spin at each barrier on an oversubscribed CPU made tiny steps 10-30x slower here.
    threads = args.threads or (1 if args.tiny else None)
    shim = argparse.Namespace(
        tiny=args.tiny, threads=threads, batch_size=args.batch_size, grad_accum=args.grad_accum,
        gradient_checkpointing=args.gradient_checkpointing, **chosen,
    )  # fmt: skip
    return gpu_train.make_setup(shim)


def prepare(args, setup, work: Path, peak: bool = True) -> tuple[dict, Path, int, dict | None]:
    """The environment with the probe, the measured peak (unless `peak` is False), the corpus and the base."""
    env = common.environment(work)
    measured = None
    if peak:
        measured = gpu_train.peak_in_child(args.tiny, setup.threads, work)
        print(f"device: {measured['device']}; measured dense {measured['dtype']} matmul ({measured['n']}^3): "
              f"{measured['flops'] / 1e12:.3f} TFLOP/s ({measured['kind']} peak)")  # fmt: skip
    n = gpu_train.llama_parameters(setup.model, setup.vocab)
    print(f"model: {gpu_train.describe_model(setup.model, setup.vocab, setup.seq_len)}: N = {n:,} parameters")
    rows = gpu_train.corpus_rows(setup, 1)
    key = {k: getattr(setup, k) for k in ("model", "vocab", "seq_len", "lexicon", "words")}
    stamp = work / "base.json"  # what an earlier call with this --workdir prepared: reused when it fits
    done = json.loads(stamp.read_text()) if stamp.is_file() else {}
    if done.get("key") == json.loads(json.dumps(key)) and done.get("rows", 0) >= rows:
        base, pad_id = work / "base", done["pad_id"]
        print(f"corpus and base: reused from {work} ({done['rows']} documents)")
        return env, base, pad_id, measured
    stamp.unlink(missing_ok=True)
    mean = gpu_train.write_corpus(work / "corpus.jsonl", setup, rows)
    print(f"corpus: {rows} synthetic documents, {setup.words[0]}-{setup.words[1]} words (mean {mean:.0f})")
    base, pad_id = common.prepare_base(work, setup, work / "corpus.jsonl")
    stamp.write_text(json.dumps({"key": key, "rows": rows, "pad_id": pad_id}))
    print(f"base: tokenizer and float32 weights in {base}")
    return env, base, pad_id, measured


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not args.tiny and not torch.cuda.is_available():
        print("no CUDA GPU here: this benchmark needs one. For a CPU smoke test of the code path, add --tiny.")
        return 0
    setup = make_setup(args)
    names = select(args.only)
    runs: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-side-by-side-") as tmp:
        work = args.workdir.resolve() if args.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        env, base, pad_id, peak = prepare(args, setup, work)
        print(f"timing: {setup.warmup} warm-up steps, then {setup.steps} timed; batch {setup.batch_size} x "
              f"{setup.grad_accum} accumulation, {setup.seq_len} tokens per row; precision {setup.precision}; "
              f"optimizer {setup.optimizer}")  # fmt: skip
        for name in names:
            runs[name] = run_one(name, setup, base, pad_id, work, env, args)
            if runs[name].get("detail"):
                print(f"[{name}] {runs[name]['detail']}")
            if args.json:  # after every run: what was measured survives a later run that hangs or is killed
                write_json(args.json, peak, setup, runs, args)
    print()
    print(f"peak: {peak['flops'] / 1e12:.3f} TFLOP/s measured ({peak['device']}, {peak['dtype']} matmul)")
    print(table(runs, peak))
    for name, r in runs.items():
        attention = r.get("attn_implementation") or ""
        if name.endswith("trl") and r.get("memory_kind") == "GPU" and "flash" not in attention:
            print(
                f"{name}: TRL ran packed, padding-free batches on '{attention}', not on the FlashAttention its "
                "docs name for packing: each batch is one row of all its samples under a dense "
                "block-diagonal mask. Install flash-attn, or pass --trl-attn, for the baseline its docs describe."
            )
    for line in differences(runs):
        print(line)
    failed = [name for name, r in runs.items() if r.get("outcome") != "ok"]
    if failed:  # the smoke runs in .ci/run fail on this; the figures of the others are printed above
        print(f"not ok: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
