"""Profile: where a training step's time goes, full fine-tuning against LoRA, on the same model (not a test).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/profile_step.py           # needs a CUDA GPU: ~2 min on an H100
    HF_HUB_OFFLINE=1 .venv/bin/python bench/profile_step.py --tiny    # CPU smoke test of the same code path

It trains bench/side_by_side.py's setup (the ~1B Llama-style model, packed rows of 2048 tokens,
batch 8, bf16; `--tiny`: the tiny CPU model) with the runner (`finetune run`, or the TRL script
with `--tool trl`), once with full fine-tuning and once with LoRA (r 16, alpha 32, every linear
layer), and runs `torch.profiler` over `--profile-steps` optimizer steps after `--warmup` ones,
inside the training process (bench/_probe.py). It prints, for each:

- the top ops by self time on the CPU and on the GPU (CUDA kernels' time, attributed to the op
  that launched them);
- where the step goes: the self time of the ops under each module kind, forward and backward: for
  LoRA its frozen base linear, its dropout, A, B and its scaling and add; the trained linear layers
  of full fine-tuning; the output layer, the attention core, the norms, the MLP activations, the
  embedding; the optimizer; everything else. A backward op counts for the module whose forward op
  recorded its autograd node. On a GPU the shares are of GPU time, on the CPU of CPU time.

The profiler slows the profiled steps down: the step times it prints are not throughput figures
(bench/side_by_side.py measures those).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _side_common as common
import side_by_side

gpu_train = common.gpu_train


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    side_by_side.add_shared_arguments(p)
    p.add_argument("--profile-steps", type=int, default=3, help="optimizer steps under the profiler (default 3)")
    p.add_argument("--only", nargs="+", choices=("full", "lora"), help="profile only these")
    p.add_argument("--tool", choices=("runner", "trl"), default="runner", help="whose step to profile")
    p.add_argument("--trl-set", action="append", default=[], metavar="KEY=VALUE", help="as in side_by_side.py")
    p.add_argument("--trl-attn", default="auto", help="as in side_by_side.py")
    p.add_argument("--json", type=Path, help="also write the profiles here")
    args = p.parse_args(argv)
    side_by_side.check_positive(p, args)
    if args.profile_steps < 1:
        p.error("--profile-steps must be >= 1")
    return args


def profile(strategy: str, setup, base: Path, pad_id: int, work: Path, env: dict, args) -> dict:
    name = f"{strategy}-{args.tool}"
    out = work / f"profile-{name}"
    shutil.rmtree(out, ignore_errors=True)  # an earlier call's profile in the same --workdir
    out.mkdir()
    if args.tool == "runner":
        import tomli_w

        extra = common.dotted(args.runner_set, "--runner-set")
        table = common.runner_recipe(name, strategy, setup, base, work / "corpus.jsonl", extra, args.lora_dropout)
        path = out / "recipe.toml"
        path.write_text(tomli_w.dumps(table), encoding="utf-8")
        cmd = [*gpu_train.finetune_command(), "run", str(path), "--output", str(out / "run")]
    else:
        cmd = common.trl_command(strategy, setup, base, work / "corpus.jsonl", out, args)
    stop_at = setup.warmup + args.profile_steps
    probe = {"stop_at": stop_at, "pad_id": pad_id, "profile": {"start": setup.warmup, "steps": args.profile_steps}}
    print(f"[{name}] {shlex.join(cmd)}", flush=True)
    problem, wall = common.launch(cmd, out, env, probe, args.timeout)
    found = sorted((out / "probe").glob("profile-*.json"))
    if not found:
        detail = problem or common.failure_detail(out / "run.log", out / "run" if args.tool == "runner" else None)
        print(f"[{name}] no profile: {detail}")
        return {"outcome": "failed", "detail": detail}
    record = json.loads(found[0].read_text())
    probes = [r for r in (json.loads(p.read_text()) for p in (out / "probe").glob("probe-*.json")) if r["steps"]]
    if probes:
        steps = {s["step"]: s["time"] for s in probes[0]["steps"]}
        if setup.warmup in steps and stop_at in steps:
            record["profiled_step_s"] = (steps[stop_at] - steps[setup.warmup]) / args.profile_steps
        record.update({k: probes[0].get(k) for k in ("parameters", "trainable", "attn_implementation", "lora_dropout")})
    print(f"[{name}] profiled in {wall:.0f} s", flush=True)
    return {"outcome": "ok", **record}


def ms(us: float, steps: int) -> str:
    return f"{us / 1000 / steps:,.1f}"


def top_table(record: dict, key: str, title: str) -> str:
    steps = record["steps"]
    rows = [f"{title} (ms per step; self time)", "| op | calls | self CPU | self GPU |", "| --- | --- | --- | --- |"]
    for op in record[key][:10]:
        rows.append(f"| {op['name'][:70]} | {op['calls']} | {ms(op['self_cpu_us'], steps)} | "
                    f"{ms(op['self_device_us'], steps)} |")  # fmt: skip
    return "\n".join(rows)


def where_table(records: dict) -> str:
    """The time under each label, per strategy: forward, backward, share of the step."""
    names = [n for n, r in records.items() if r.get("outcome") == "ok"]
    device = any(records[n]["total_self_device_us"] for n in names)
    unit = "GPU" if device else "CPU"
    labels: list[str] = []
    for n in names:
        for label in sorted(records[n]["labels"], key=lambda k: -sum(records[n]["labels"][k])):
            if label not in labels:
                labels.append(label)
    head = ["module kind"] + [f"{n}: fwd / bwd ms, share" for n in names]
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for label in labels:
        cells = [label]
        for n in names:
            r = records[n]
            cell = r["labels"].get(label)
            if cell is None:
                cells.append("-")
                continue
            fwd, bwd = (cell[1], cell[3]) if device else (cell[0], cell[2])
            total = r["total_self_device_us"] if device else r["total_self_cpu_us"]
            cells.append(f"{ms(fwd, r['steps'])} / {ms(bwd, r['steps'])}, {100 * (fwd + bwd) / total:.1f}%")
        rows.append("| " + " | ".join(cells) + " |")
    totals = ["**step total**"]
    for n in names:
        r = records[n]
        total = r["total_self_device_us"] if device else r["total_self_cpu_us"]
        step = r.get("profiled_step_s")
        totals.append(f"**{ms(total, r['steps'])} ms of {unit} self time**" + (f" ({step:.3f} s wall)" if step else ""))
    rows.append("| " + " | ".join(totals) + " |")
    return f"where the step goes ({unit} self time per step, profiled steps):\n" + "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not args.tiny and not torch.cuda.is_available():
        print("no CUDA GPU here: this profile needs one. For a CPU smoke test of the code path, add --tiny.")
        return 0
    setup = side_by_side.make_setup(args)
    if args.warmup is None:
        setup.warmup = 2 if args.tiny else 5
    setup.steps = args.profile_steps
    records: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-profile-step-") as tmp:
        work = args.workdir.resolve() if args.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        env, base, pad_id = side_by_side.prepare(args, setup, work, peak=False)[:3]
        print(f"profiling: {setup.warmup} warm-up steps, then {args.profile_steps} under the profiler; "
              f"batch {setup.batch_size}, {setup.seq_len} tokens per row; precision {setup.precision}")  # fmt: skip
        for strategy in args.only or ("full", "lora"):
            records[f"{strategy}-{args.tool}"] = profile(strategy, setup, base, pad_id, work, env, args)
    device = "GPU" if any(r.get("top_device") for r in records.values()) else "CPU (no GPU time recorded)"
    print(f"\ndevice: {device}")
    for name, r in records.items():
        if r.get("outcome") != "ok":
            continue
        dropout = r.get("lora_dropout")
        print(f"\n[{name}] attention {r.get('attn_implementation')}; trainable {r.get('trainable'):,} of "
              f"{r.get('parameters'):,}" + (f"; LoRA dropout {dropout:g}" if dropout is not None else ""))  # fmt: skip
        print(top_table(r, "top_cpu", "top ops by self CPU time"))
        if r.get("top_device"):
            print(top_table(r, "top_device", "top ops by self GPU time"))
    print()
    print(where_table(records))
    if args.json:
        args.json.write_text(json.dumps(records, indent=2) + "\n")
    failed = [name for name, r in records.items() if r.get("outcome") != "ok"]
    if failed:
        print(f"no profile: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
