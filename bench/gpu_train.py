"""Benchmark: training throughput and MFU of a ~1B-parameter Llama-style model (a benchmark, not a test).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/gpu_train.py                  # needs a CUDA GPU
    HF_HUB_OFFLINE=1 .venv/bin/python bench/gpu_train.py --zero3-offload  # also ZeRO-3 without / with CPU offload
    HF_HUB_OFFLINE=1 .venv/bin/python bench/gpu_train.py --qlora          # also QLoRA: 1B and an 8B-class model
    HF_HUB_OFFLINE=1 .venv/bin/python bench/gpu_train.py --tiny           # CPU smoke test of the same code path

What it does. It writes a corpus of synthetic documents of varied length (pseudo-words, 64 to 2048
words), then trains a Llama-style decoder built from a config (random init, no download: hidden
2048, 16 layers, 16 heads with 8 key/value heads, MLP 7168, vocabulary 32000 from a tokenizer trained
on the corpus, 2048 positions, bf16 mixed precision) four ways, with `finetune run` as a user would:
full fine-tuning and LoRA, each without and with packing (`task.packing = true`). Every run takes
`--warmup` + `--steps` optimizer steps; only the last `--steps` are timed.

How it measures. A probe, loaded into every training process through a `sitecustomize` module on
PYTHONPATH (the runner has no per-step hook), counts the real (non-pad) tokens of every batch the
collator builds, stamps the time of every optimizer step as it is logged (the logging reads the
loss, which waits for the GPU), reads torch.cuda.max_memory_allocated, and ends the run once the
last timed step is logged, before the runner's final checkpoint and model save (minutes and many
GiB of disk that are no part of the measurement). The run directory then says "failed" with
BenchStop: that is this stop, not a failure.

Reported per run: real tokens/s over the timed steps; MFU = tokens/s x FLOPs per token / peak,
with FLOPs per token 6N for full fine-tuning and 4N_frozen + 6N_trainable (about 4N) for LoRA,
N the exact parameter count the run recorded in environment.json, and the peak the MEASURED dense
bf16 matmul rate of the card (8192 x 8192, timed after warm-up); peak memory; the share of real
tokens in the batches. See docs/benchmarks.md for the accounting and what it leaves out.

`--qlora` adds QLoRA runs, packed: the 1B model and a Llama-3-8B-shaped one (hidden 4096, 32
layers, MLP 14336) loaded in 4-bit NF4 with double quantization and bf16 compute, LoRA r = 16 on all
linear layers, gradient checkpointing on (its default there; the recomputation is not counted in
MFU). Every run's table row also shows `finetune plan`'s memory estimate beside the measured peak.

`--zero3-offload` adds a model sized so that its 16 bytes/param of model states exceed the card's
memory, trained with `[distributed] engine = "deepspeed", zero_stage = 3` without offload (expected
to run out of memory) and with optimizer states and weights offloaded to the CPU. DeepSpeed runs go
through the runner's launcher (torchrun); `--nproc N` launches N processes for every run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROBE_ENV = "GPU_TRAIN_PROBE"  # JSON {"dir": ..., "stop_at": ...}: set only for the runs this bench starts
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MODEL_1B = dict(
    hidden_size=2048,
    num_hidden_layers=16,
    num_attention_heads=16,
    num_key_value_heads=8,
    intermediate_size=7168,
)
# Llama-2-7B's layer shape with grouped-query attention; the layer count is sized from the card.
ZERO3_LAYER = dict(hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, intermediate_size=11008)
MODEL_8B = dict(
    hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336
)
MODEL_TINY = dict(
    hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=176
)
GiB = 2**30
BASE_VARIANTS = ("full-padded", "full-packed", "lora-padded", "lora-packed")
ALL_VARIANTS = (
    *BASE_VARIANTS,
    "qlora-packed",
    "qlora-8b-packed",
    "zero2-packed",
    "zero3-packed",
    "zero3",
    "zero3-offload",
)


@dataclass
class Setup:
    """Everything the runs share; `--tiny` swaps in a CPU-sized one."""

    model: dict
    vocab: int
    seq_len: int
    batch_size: int
    grad_accum: int
    warmup: int
    steps: int
    precision: str  # training.mixed_precision
    optimizer: str
    lexicon: int  # distinct pseudo-words: enough for the tokenizer to learn `vocab` pieces
    words: tuple[int, int]  # document lengths in words, drawn log-uniformly
    threads: int | None = None
    gradient_checkpointing: bool = False


@dataclass
class Variant:
    name: str
    strategy: str  # "full", "lora" or "qlora"
    packing: bool
    distributed: dict | None = None
    setup: Setup | None = None  # when it differs from the shared one (the ZeRO-3 model)
    note: str = ""
    result: dict = field(default_factory=dict)


# -- arithmetic ---------------------------------------------------------------------------------


def llama_parameters(config: dict, vocab: int) -> int:
    """Exact parameter count of a Llama decoder without biases and with untied embeddings."""
    h, layers, inter = config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]
    head_dim = h // config["num_attention_heads"]
    kv = config.get("num_key_value_heads", config["num_attention_heads"]) * head_dim
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * inter + 2 * h  # q, o; k, v; gate, up, down; two RMSNorms
    return 2 * vocab * h + layers * per_layer + h  # embeddings, lm_head; layers; final norm


def flops_per_token(total: int, trainable: int, strategy: str) -> int:
    """Model FLOPs per token of one training step (forward 2, backward 4 per weight).

    A frozen weight skips its weight-gradient matmul in the backward pass: 4 FLOPs instead of 6."""
    return 6 * total if strategy == "full" else 6 * trainable + 4 * (total - trainable)


def zero3_model(gpu_bytes: int, margin: float, vocab: int) -> dict:
    """A Llama config whose model states (16 bytes/param in mixed-precision Adam) exceed the card by `margin`."""
    one = llama_parameters({**ZERO3_LAYER, "num_hidden_layers": 1}, vocab)
    fixed = llama_parameters({**ZERO3_LAYER, "num_hidden_layers": 0}, vocab)
    layers = math.ceil((margin * gpu_bytes / 16 - fixed) / (one - fixed))
    return {**ZERO3_LAYER, "num_hidden_layers": max(1, layers)}


def host_available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# -- the data and the recipes ---------------------------------------------------------------------


def pseudo_words(n: int, rng: random.Random) -> list[str]:
    """n distinct pronounceable words: a vocabulary the trained BPE tokenizer can fill 32000 pieces from."""
    syllables = [c + v + e for c in "bcdfghjklmnprstvwz" for v in "aeiou" for e in ("", "n", "r", "s")]
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))))
    return sorted(words)


def write_corpus(path: Path, setup: Setup, rows: int, seed: int = 0) -> float:
    """Documents of log-uniformly varied length, Zipf-distributed words; returns the mean words per row."""
    rng = random.Random(seed)
    lexicon = pseudo_words(setup.lexicon, rng)
    rng.shuffle(lexicon)
    cum, total = [], 0.0
    for rank in range(1, len(lexicon) + 1):
        total += 1.0 / rank
        cum.append(total)
    lo, hi = setup.words
    n_words = 0
    with path.open("w", encoding="utf-8") as fh:
        for _ in range(rows):
            n = int(math.exp(rng.uniform(math.log(lo), math.log(hi))))
            words = rng.choices(lexicon, cum_weights=cum, k=n)
            for i in range(rng.randint(6, 20), n, rng.randint(6, 20)):  # sentence ends
                words[i] += "."
            fh.write(json.dumps({"text": " ".join(words)}) + "\n")
            n_words += n
    return n_words / rows


def corpus_rows(setup: Setup, nproc: int) -> int:
    """Enough rows that neither variant runs out: padded runs take rows, packed runs take tokens."""
    lo, hi = setup.words
    mean_words = (hi - lo) / math.log(hi / lo)  # a lower bound on mean tokens: every word is >= 1 token
    rows_per_step = setup.batch_size * setup.grad_accum * nproc
    steps = setup.warmup + setup.steps
    packed = steps * rows_per_step * setup.seq_len / mean_words
    return math.ceil(1.25 * max(steps * rows_per_step, packed))


def recipe(variant: Variant, setup: Setup, corpus: Path) -> dict:
    """The recipe of one run, as a TOML table."""
    table = {
        "run": {"name": f"gpu-train-{variant.name}", "description": f"bench/gpu_train.py: {variant.name}", "seed": 0},
        "data": {
            "sources": [{"type": "files", "path": str(corpus), "format": "jsonl"}],
            "split": {"train": 1.0, "validation": 0.0, "test": 0.0},  # no evaluation: only training is timed
        },
        "tokenizer": {"type": "trained", "vocab_size": setup.vocab, "max_length": setup.seq_len},
        "model": {
            "type": "config",
            "architecture": "llama",
            "config": {**setup.model, "max_position_embeddings": setup.seq_len, "tie_word_embeddings": False},
        },
        "task": {"type": "causal_lm", "packing": variant.packing},
        "strategy": {"type": "full"},
        "training": {
            "learning_rate": 1e-4,
            "scheduler": "constant",
            "batch_size": setup.batch_size,
            "gradient_accumulation_steps": setup.grad_accum,
            "max_steps": setup.warmup + setup.steps,
            "mixed_precision": setup.precision,
            "optimizer": setup.optimizer,
            "gradient_checkpointing": setup.gradient_checkpointing,
            "log_every": 1,  # every step's end is stamped
        },
        "reporters": [{"type": "rich", "plain": True}],
    }
    if variant.strategy == "lora":
        table["strategy"] = {"type": "lora", "r": 16, "alpha": 32, "target_modules": LORA_TARGETS}
        table["training"]["learning_rate"] = 2e-4
    if variant.strategy == "qlora":
        table["strategy"] = {"type": "lora", "r": 16, "alpha": 32, "target_modules": "all-linear"}
        compute = "bfloat16" if setup.precision == "bf16" else "float32"
        table["model"]["quantization"] = {"bits": 4, "type": "nf4", "double_quant": True, "compute_dtype": compute}
        table["training"]["learning_rate"] = 2e-4
        del table["training"]["gradient_checkpointing"]  # its default on a quantized base: on
    if setup.threads:
        table["run"]["threads"] = setup.threads
    if variant.distributed:
        table["distributed"] = variant.distributed
    return table


def finetune_command() -> list[str]:
    script = Path(sys.executable).with_name("finetune")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "runner.cli"]


def validate(path: Path, env: dict) -> str | None:
    """None when `finetune validate` accepts the recipe, else what it said."""
    proc = subprocess.run([*finetune_command(), "validate", str(path)], env=env, capture_output=True, text=True)
    return None if proc.returncode == 0 else (proc.stdout + proc.stderr).strip()


def plan_estimate(path: Path, env: dict, nproc: int | None) -> str | None:
    """`finetune plan`'s memory per device for the recipe, as it prints it ("10.3 GiB"), or None."""
    cmd = [*finetune_command(), "plan", str(path), *(["--nproc", str(nproc)] if nproc else [])]
    proc = subprocess.run(cmd, env={**env, "COLUMNS": "300"}, capture_output=True, text=True)
    found = re.search(r"memory per device\s*│\s*~([0-9.]+ [KMGT]?i?B)", proc.stdout)
    return found.group(1) if found else None


# -- the peak -----------------------------------------------------------------------------------


def measure_peak(tiny: bool, threads: int | None) -> dict:
    """Dense matmul FLOP/s of this device, after warm-up: bf16 8192^3 on a GPU, fp32 1024^3 on the CPU."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    cuda = torch.cuda.is_available() and not tiny
    device, dtype, n, iters = ("cuda", torch.bfloat16, 8192, 50) if cuda else ("cpu", torch.float32, 1024, 10)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(5):
        a @ b
    sync()
    best = math.inf
    for _ in range(5):  # the best of five rounds: a peak, not an average over interruptions
        start = time.perf_counter()
        for _ in range(iters):
            a @ b
        sync()
        best = min(best, time.perf_counter() - start)
    info = {"flops": 2 * n**3 * iters / best, "n": n, "dtype": str(dtype).removeprefix("torch.")}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(device=f"GPU: {props.name}", memory=props.total_memory, kind="GPU")
    else:
        info.update(device=f"CPU: {os.cpu_count()} cores, {torch.get_num_threads()} threads", memory=None, kind="CPU")
    return info


def peak_in_child(tiny: bool, threads: int | None, work: Path) -> dict:
    """Measured in a process of its own, so that this one never holds GPU memory the runs need."""
    out = work / "peak.json"
    cmd = [sys.executable, __file__, "--measure-peak", str(out)] + (["--tiny"] if tiny else [])
    cmd += ["--threads", str(threads)] if threads else []
    subprocess.run(cmd, check=True)
    return json.loads(out.read_text())


# -- the probe, inside every training process ---------------------------------------------------------


class BenchStop(SystemExit):
    """Ends a run after its last timed step: a quiet exit (status 0) through the runner's cleanup."""


class Probe:
    """Real tokens per batch, the time of every logged optimizer step, and peak memory of one process."""

    def __init__(self, out_dir: Path, stop_at: int):
        self.out_dir, self.stop_at = out_dir, stop_at
        self.batches: list[tuple[int, int]] = []  # (real tokens, padded tokens), in collation order
        self.steps: list[tuple[int, float]] = []  # (optimizer step, perf_counter when it was logged)
        self.written = False

    def install(self) -> None:
        import atexit

        from runner.pipeline import events
        from runner.toolkit import collate

        for cls in (collate.PadCollator, collate.PackedCollator):
            cls.__call__ = self._counting(cls.__call__)
        log = events.Events.log

        def timed_log(events_self, step, values):
            self.steps.append((step, time.perf_counter()))
            log(events_self, step, values)
            if step >= self.stop_at:
                self.write(stopped=True)
                raise BenchStop(0)

        events.Events.log = timed_log
        atexit.register(self.write, stopped=False)  # a run that fails (out of memory) still reports its peak

    def _counting(self, call):
        def counted(collator, features):
            batch = call(collator, features)
            real = sum(len(f["input_ids"]) for f in features)
            self.batches.append((real, batch["input_ids"].numel()))
            return batch

        return counted

    def write(self, stopped: bool) -> None:
        memory = peak_memory()
        if self.written or not (self.batches or self.steps or memory["memory_kind"] == "GPU"):
            return  # a launcher process: it trained nothing (a run that ran out of GPU memory early still reports)
        self.written = True
        record = {
            "pid": os.getpid(),
            "rank": int(os.environ.get("RANK", "0")),
            "stopped": stopped,
            "batches": self.batches,
            "steps": self.steps,
            **memory,
        }
        (self.out_dir / f"probe-{os.getpid()}.json").write_text(json.dumps(record))


def peak_memory() -> dict:
    """torch.cuda.max_memory_allocated on a GPU; on the CPU the process's peak resident set (all of it)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return {
            "peak_memory": torch.cuda.max_memory_allocated(),
            "peak_reserved": torch.cuda.max_memory_reserved(),
            "memory_kind": "GPU",
        }
    import resource

    return {"peak_memory": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "memory_kind": "CPU RSS"}


def install_probe() -> None:
    """Entry point of the generated sitecustomize: install the probe when this bench started the process."""
    config = json.loads(os.environ[PROBE_ENV])
    Probe(Path(config["dir"]), config["stop_at"]).install()


SITECUSTOMIZE = """\
# Written by bench/gpu_train.py: loads its probe into every Python process of a benchmark run.
import os
import sys
if os.environ.get({env!r}):
    # Python runs this before `-m` puts the working directory on sys.path: where the runner is not
    # installed (only the repository), the probe finds it here.
    sys.path.append({root!r})
    try:
        import importlib.util
        spec = importlib.util.spec_from_file_location("gpu_train_probe", {path!r})
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
        module.install_probe()
    except Exception as exc:
        print(f"bench/gpu_train.py: probe not installed: {{exc!r}}", file=sys.stderr)
"""


# -- running a variant --------------------------------------------------------------------------


def run_variant(variant: Variant, setup: Setup, work: Path, env: dict, args) -> dict:
    """Validate and run one variant with `finetune run`; return what the probe and the run directory say."""
    out = work / variant.name
    out.mkdir()
    path = out / "recipe.toml"
    import tomli_w

    path.write_text(tomli_w.dumps(recipe(variant, setup, work / "corpus.jsonl")), encoding="utf-8")
    problem = validate(path, env)
    if problem:
        return {"outcome": "invalid recipe", "detail": problem}
    estimate = plan_estimate(path, env, args.nproc)
    run_dir, probe_dir = out / "run", out / "probe"
    probe_dir.mkdir()
    stop_at = setup.warmup + setup.steps
    run_env = {**env, PROBE_ENV: json.dumps({"dir": str(probe_dir), "stop_at": stop_at})}
    cmd = [*finetune_command(), "run", str(path), "--output", str(run_dir)]
    cmd += ["--nproc", str(args.nproc)] if args.nproc else []
    print(f"[{variant.name}] {shlex.join(cmd)}", flush=True)
    log = out / "run.log"
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as fh:
        try:
            subprocess.run(cmd, cwd=ROOT, env=run_env, stdout=fh, stderr=subprocess.STDOUT, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            return {"outcome": f"timed out after {args.timeout} s", "log": str(log)}
    result = collect(probe_dir, run_dir, setup, variant)
    result.update(wall_s=time.perf_counter() - start, log=str(log), plan_estimate=estimate)
    if result["outcome"] != "ok":
        result["detail"] = failure_detail(run_dir, log)
        if "out of memory" in result["detail"].lower() or "OutOfMemoryError" in result["detail"]:
            result["outcome"] = "OOM"
    print(f"[{variant.name}] {result['outcome']} in {result['wall_s']:.0f} s", flush=True)
    return result


def collect(probe_dir: Path, run_dir: Path, setup: Setup, variant: Variant) -> dict:
    """Tokens/s over the timed steps (all processes), peak memory (the largest process), the parameters."""
    probes = [json.loads(p.read_text()) for p in sorted(probe_dir.glob("probe-*.json"))]
    result: dict = {"processes": len(probes)}
    if probes:
        result["peak_memory"] = max(p["peak_memory"] for p in probes)
        result["memory_kind"] = probes[0]["memory_kind"]
    environment = run_dir / "environment.json"
    if environment.is_file():
        counts = json.loads(environment.read_text())["parameters"]
        result.update(parameters=counts["total"], trainable=counts["trainable"])
        result["flops_per_token"] = flops_per_token(counts["total"], counts["trainable"], variant.strategy)
    # Only processes that trained count: a launcher that merely touched CUDA never reaches the stop.
    probes = [p for p in probes if p["batches"] or p["steps"]]
    if not probes or not all(p["stopped"] for p in probes):
        return {**result, "outcome": "failed"}
    main = min(probes, key=lambda p: p["rank"])
    times = dict(main["steps"])
    first, last = setup.warmup, setup.warmup + setup.steps
    window = slice(first * setup.grad_accum, last * setup.grad_accum)  # the micro-batches of the timed steps
    real = sum(r for p in probes for r, _ in p["batches"][window])
    padded = sum(n for p in probes for _, n in p["batches"][window])
    seconds = times[last] - times[first]
    result.update(outcome="ok", seconds=seconds, tokens=real, tokens_per_s=real / seconds, real_share=real / padded)
    result["step_s"] = seconds / setup.steps
    return result


def failure_detail(run_dir: Path, log: Path) -> str:
    """The run's own error (status.json), else the end of its log."""
    status = run_dir / "status.json"
    if status.is_file():
        error = json.loads(status.read_text()).get("error")
        if error and not error.startswith("BenchStop"):
            return error
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines() if log.is_file() else []
    errors = [line for line in lines if "error" in line.lower()]
    return (errors[-1] if errors else "\n".join(lines[-5:])).strip()[:500]


# -- the setups and the table --------------------------------------------------------------------------


def make_setup(args) -> Setup:
    if args.tiny:
        setup = Setup(
            model=MODEL_TINY, vocab=512, seq_len=256, batch_size=4, grad_accum=1, warmup=3, steps=8,
            precision="no", optimizer="adamw_torch", lexicon=3000, words=(8, 200),
            threads=args.threads or os.cpu_count(),
        )  # fmt: skip
    else:
        setup = Setup(
            model=MODEL_1B, vocab=32000, seq_len=2048, batch_size=8, grad_accum=1, warmup=5, steps=30,
            precision="bf16", optimizer="adamw_torch_fused", lexicon=60000, words=(64, 2048), threads=args.threads,
        )  # fmt: skip
    chosen = {k: getattr(args, k) for k in ("batch_size", "grad_accum", "warmup", "steps") if getattr(args, k)}
    return replace(setup, gradient_checkpointing=args.gradient_checkpointing, **chosen)


def make_variants(args, setup: Setup, peak: dict) -> list[Variant]:
    variants = [
        Variant("full-padded", "full", False),
        Variant("full-packed", "full", True),
        Variant("lora-padded", "lora", False),
        Variant("lora-packed", "lora", True),
    ]
    if args.qlora:
        variants.append(Variant("qlora-packed", "qlora", True))
        eight = setup if args.tiny else replace(setup, model=MODEL_8B, batch_size=min(setup.batch_size, 4))
        note = "tiny model (smoke test)" if args.tiny else describe_model(MODEL_8B, setup.vocab, setup.seq_len)
        variants.append(Variant("qlora-8b-packed", "qlora", True, setup=eight, note=note))
    if args.deepspeed:  # the same model and data through DeepSpeed on the card: what ZeRO costs where it fits
        for stage in (2, 3):
            variants.append(Variant(f"zero{stage}-packed", "full", True, {"engine": "deepspeed", "zero_stage": stage}))
    if args.zero3_offload:
        variants += zero3_variants(args, setup, peak)
    by_name = {v.name: v for v in variants}
    return [by_name[name] for name in args.only if name in by_name] if args.only else variants


def zero3_variants(args, setup: Setup, peak: dict) -> list[Variant]:
    """ZeRO-3 without and with CPU offload on a model whose model states exceed the card."""
    if args.tiny:  # nothing is too big for the host here: the same tiny model, to exercise the code path
        big, note = setup, "tiny model (smoke test of the code path)"
    else:
        config = zero3_model(peak["memory"], args.zero3_margin, setup.vocab)
        n = llama_parameters(config, setup.vocab)
        big = replace(setup, model=config, batch_size=args.zero3_batch, warmup=2, steps=args.zero3_steps)
        big.gradient_checkpointing = True  # the activations of a 5B+ model at 2048 tokens would not fit either
        note = (
            f"{describe_model(config, setup.vocab, setup.seq_len)}: N = {n:,}; model states at 16 bytes/param "
            f"= {16 * n / GiB:.1f} GiB > {peak['memory'] / GiB:.1f} GiB on the card"
        )
        host, need = host_available_bytes(), 18 * n  # fp32 master, Adam m and v, fp32 grads, bf16 weights
        if host is not None and need > host:
            print(f"warning: CPU offload needs about {need / GiB:.0f} GiB of host memory; {host / GiB:.0f} available")
    big = replace(big, optimizer="adamw_torch")  # DeepSpeed's tested path; offload swaps in its CPU Adam anyway
    stage3 = {"engine": "deepspeed", "zero_stage": 3}
    offload = {**stage3, "offload_optimizer": "cpu", "offload_params": "cpu"}
    return [
        Variant("zero3", "full", True, stage3, big, note),
        Variant("zero3-offload", "full", True, offload, big, note),
    ]


def fmt_bytes(n) -> str:
    return "-" if n is None else f"{n / GiB:.2f} GiB"


def fmt_si(x: float) -> str:
    """1.23 G, 456 M, 7.8 k: FLOPs per token span six orders of magnitude between --tiny and 1B."""
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g}"


def describe_model(config: dict, vocab: int, seq_len: int) -> str:
    c = config
    return (
        f"llama: hidden {c['hidden_size']}, {c['num_hidden_layers']} layers, {c['num_attention_heads']} heads "
        f"({c['num_key_value_heads']} key/value), MLP {c['intermediate_size']}, vocab {vocab}, {seq_len} positions"
    )


COLUMNS = ("variant", "params N", "trainable", "FLOPs/token", "real tokens/s", "real-token share", "MFU",
           "peak memory", "plan estimate", "outcome")  # fmt: skip


def table_row(v: Variant, peak: dict, world: int) -> list[str]:
    """One variant's cells; "-" where the run did not get that far."""
    r = v.result
    tps, fpt = r.get("tokens_per_s"), r.get("flops_per_token")
    return [
        v.name,
        f"{r['parameters']:,}" if "parameters" in r else "-",
        f"{r['trainable']:,}" if "trainable" in r else "-",
        fmt_si(fpt) if fpt else "-",
        f"{tps:,.0f}" if tps else "-",
        f"{r['real_share']:.3f}" if "real_share" in r else "-",
        f"{100 * tps * fpt / (peak['flops'] * world):.1f}%" if tps and fpt else "-",
        f"{fmt_bytes(r['peak_memory'])} ({r['memory_kind']})" if r.get("peak_memory") else "-",
        r.get("plan_estimate") or "-",
        r["outcome"],
    ]


def table(variants: list[Variant], peak: dict, world: int) -> str:
    """The results as a markdown table."""
    rows = [COLUMNS, ["---"] * len(COLUMNS), *(table_row(v, peak, world) for v in variants)]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: a tiny model, fp32, a few steps")
    p.add_argument("--only", nargs="+", choices=ALL_VARIANTS, metavar="VARIANT",
                   help="run only these, in this order: " + " ".join(ALL_VARIANTS))  # fmt: skip
    p.add_argument("--steps", type=int, help="timed optimizer steps (default 30; --tiny 8)")
    p.add_argument("--warmup", type=int, help="untimed optimizer steps first (default 5; --tiny 3)")
    p.add_argument("--batch-size", type=int, help="rows per micro-batch (default 8; --tiny 4)")
    p.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default 1)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations (not counted in MFU)")
    p.add_argument("--threads", type=int, help="torch CPU threads (run.threads; --tiny: all cores)")
    p.add_argument("--qlora", action="store_true", help="add QLoRA (4-bit NF4 base) on the 1B and an 8B-class model")
    p.add_argument("--deepspeed", action="store_true", help="add ZeRO-2 and ZeRO-3 (no offload) on the same model")
    p.add_argument("--zero3-offload", action="store_true", help="add ZeRO-3 without and with CPU offload")
    p.add_argument("--zero3-margin", type=float, default=1.05, help="model states / GPU memory of that model")
    p.add_argument("--zero3-batch", type=int, default=4, help="rows per micro-batch for the ZeRO-3 model")
    p.add_argument("--zero3-steps", type=int, default=5, help="timed steps for the ZeRO-3 model (2 warm-up)")
    p.add_argument("--nproc", type=int, help="finetune run --nproc N: N processes, one per GPU, for every run")
    p.add_argument("--timeout", type=int, default=3600, help="seconds one run may take")
    p.add_argument("--workdir", type=Path, help="keep corpus, recipes, run directories and logs here")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--measure-peak", type=Path, help=argparse.SUPPRESS)  # the child process of peak_in_child
    args = p.parse_args(argv)
    for name in ("steps", "warmup", "batch_size", "grad_accum", "nproc", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.measure_peak:
        args.measure_peak.write_text(json.dumps(measure_peak(args.tiny, args.threads)))
        return 0
    import torch

    if not args.tiny and not torch.cuda.is_available():
        print("no CUDA GPU here: this benchmark needs one. For a CPU smoke test of the code path, add --tiny.")
        return 0
    setup = make_setup(args)
    world = args.nproc or 1
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory(prefix="bench-gpu-train-") as tmp:
        work = args.workdir.resolve() if args.workdir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        env["FINETUNE_CACHE"] = str(work / "cache")
        hook = work / "hook"
        hook.mkdir(exist_ok=True)
        probe = SITECUSTOMIZE.format(env=PROBE_ENV, path=str(Path(__file__).resolve()), root=str(ROOT))
        (hook / "sitecustomize.py").write_text(probe)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")]))

        peak = peak_in_child(args.tiny, setup.threads, work)
        print(f"device: {peak['device']}; measured dense {peak['dtype']} matmul ({peak['n']}^3): "
              f"{peak['flops'] / 1e12:.3f} TFLOP/s ({peak['kind']} peak)")  # fmt: skip
        n = llama_parameters(setup.model, setup.vocab)
        print(f"model: {describe_model(setup.model, setup.vocab, setup.seq_len)}: N = {n:,} parameters")
        variants = make_variants(args, setup, peak)
        rows = max(corpus_rows(v.setup or setup, world) for v in variants)
        mean = write_corpus(work / "corpus.jsonl", setup, rows)
        print(f"corpus: {rows} synthetic documents, {setup.words[0]}-{setup.words[1]} words (mean {mean:.0f})")
        print(f"timing: {setup.warmup} warm-up steps, then {setup.steps} timed; batch {setup.batch_size} x "
              f"{setup.grad_accum} accumulation x {world} process(es); precision {setup.precision}")  # fmt: skip
        for v in variants:
            if v.note:
                print(f"[{v.name}] {v.note}")
            v.result = run_variant(v, v.setup or setup, work, env, args)
            if v.result.get("detail"):
                print(f"[{v.name}] {v.result['detail']}")
            if args.json:  # after every run: what was measured survives a later run that hangs or is killed
                write_json(args.json, peak, setup, variants)

    print()
    print(f"peak: {peak['flops'] / 1e12:.3f} TFLOP/s measured ({peak['device']}, {peak['dtype']} matmul)")
    print(table(variants, peak, world))
    return 0


def write_json(path: Path, peak: dict, setup: Setup, variants: list[Variant]) -> None:
    payload = {"peak": peak, "setup": setup.__dict__, "variants": {v.name: v.result for v in variants if v.result}}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
