"""What bench/side_by_side.py and bench/profile_step.py share: the setup, the base model, the runs.

The model, the corpus and the peak measurement are bench/gpu_train.py's (imported, not copied).
Both tools start from the same base directory, written once: the tokenizer the runner's `trained`
tokenizer learns from the corpus, and the Llama-style model built from the config with seed 0, in
float32 safetensors. The runner reads it with `[tokenizer] type = "pretrained"` and
`[model] type = "pretrained"`, the TRL script with `from_pretrained`: the same weights, vocabulary
and data on both sides.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
# bench/ is no package: its modules are found through the path; the runner's plugins through ROOT.
sys.path[:0] = [p for p in (str(BENCH), str(ROOT)) if p not in sys.path]

import _probe  # noqa: E402
import gpu_train  # noqa: E402, F401  (side_by_side.py and profile_step.py use it as common.gpu_train)

LOSS_LAST = 5  # the final loss: the mean of the last this many steps


def parse_value(text: str):
    """A command-line value read as TOML (1e-4, true, "x", [1, 2]); anything else as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def dotted(pairs: list[str], flag: str) -> dict:
    """`section.key=value` pairs as {section: {key: value}}; exits 2 on a malformed one."""
    out: dict = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not section or not name:
            print(f"{flag} {pair!r}: expected SECTION.KEY=VALUE, e.g. training.loss=chunked", file=sys.stderr)
            raise SystemExit(2)
        out.setdefault(section, {})[name] = parse_value(text)
    return out


def environment(work: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["FINETUNE_CACHE"] = str(work / "cache")
    env["HF_DATASETS_CACHE"] = str(work / "hf-datasets")
    hook = work / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(_probe.sitecustomize(BENCH / "_probe.py", ROOT))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")]))
    return env


def prepare_base(work: Path, setup, corpus: Path) -> tuple[Path, int]:
    """The shared tokenizer and model (float32 safetensors) in work/base; returns it and the pad id."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from plugins.tokenizers.trained import Trained, TrainedTokenizerOptions

    base = work / "base"
    texts = [json.loads(line)["text"] for line in corpus.read_text(encoding="utf-8").splitlines()]
    options = TrainedTokenizerOptions(vocab_size=setup.vocab, max_length=setup.seq_len)
    tokenizer = Trained(options).build(None, lambda: iter(texts))
    tokenizer.save_pretrained(base)
    config = AutoConfig.for_model(
        "llama",
        **setup.model,
        vocab_size=len(tokenizer),
        max_position_embeddings=setup.seq_len,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    from transformers.utils import logging

    logging.disable_progress_bar()  # its shard-writing bar would break into the benchmark's output
    model.save_pretrained(base)
    del model
    return base, tokenizer.pad_token_id


def runner_recipe(name: str, strategy: str, setup, base: Path, corpus: Path, extra: dict, lora_dropout) -> dict:
    """The runner's recipe: packed, the base from `base`, the runner's defaults beyond what must match."""
    table = {
        "run": {"name": f"side-by-side-{name}", "description": f"bench/side_by_side.py: {name}", "seed": 0},
        "data": {
            "sources": [{"type": "files", "path": str(corpus), "format": "jsonl"}],
            "split": {"train": 1.0, "validation": 0.0, "test": 0.0},  # no evaluation: only training is timed
        },
        "tokenizer": {"type": "pretrained", "path": str(base), "max_length": setup.seq_len},
        "model": {"type": "pretrained", "path": str(base)},
        "task": {"type": "causal_lm", "packing": True},
        "strategy": {"type": "full"},
        "training": {
            "learning_rate": learning_rate(strategy),
            "batch_size": setup.batch_size,
            "gradient_accumulation_steps": setup.grad_accum,
            "max_steps": setup.warmup + setup.steps,
            "mixed_precision": setup.precision,
            "optimizer": setup.optimizer,
            "gradient_checkpointing": setup.gradient_checkpointing,
        },
        "reporters": [{"type": "rich", "plain": True}],
    }
    if strategy == "lora":
        table["strategy"] = {"type": "lora", "r": 16, "alpha": 32, "target_modules": "all-linear"}
        if lora_dropout is not None:
            table["strategy"]["dropout"] = lora_dropout
    if setup.threads:
        table["run"]["threads"] = setup.threads
    for section, keys in extra.items():
        table.setdefault(section, {}).update(keys)
    return table


def learning_rate(strategy: str) -> float:
    return 1e-4 if strategy == "full" else 2e-4


def trl_command(strategy: str, setup, base: Path, corpus: Path, out: Path, args) -> list[str]:
    cmd = [sys.executable, str(BENCH / "_trl_sft.py"), "--model", str(base), "--data", str(corpus)]
    cmd += ["--output", str(out / "trl-output"), "--max-length", str(setup.seq_len)]
    cmd += ["--batch-size", str(setup.batch_size), "--grad-accum", str(setup.grad_accum)]
    cmd += ["--learning-rate", str(learning_rate(strategy)), "--max-steps", str(setup.warmup + setup.steps)]
    cmd += ["--seed", "0", "--optimizer", setup.optimizer, "--attn", args.trl_attn]
    cmd += ["--gradient-checkpointing", "on" if setup.gradient_checkpointing else "off"]
    cmd += ["--bf16"] if setup.precision == "bf16" else []
    cmd += ["--threads", str(setup.threads)] if setup.threads else []
    if strategy == "lora":
        cmd += ["--lora", "--lora-r", "16", "--lora-alpha", "32"]
        cmd += ["--lora-dropout", str(args.lora_dropout)] if args.lora_dropout is not None else []
    for item in args.trl_set:
        cmd += ["--set", item]
    return cmd


def launch(cmd: list[str], out: Path, env: dict, probe: dict, timeout: int) -> tuple[str | None, float]:
    """Runs one training process with the probe; returns (what went wrong or None, wall seconds)."""
    probe_dir = out / "probe"
    probe_dir.mkdir(parents=True, exist_ok=True)
    run_env = {**env, _probe.ENV: json.dumps({**probe, "dir": str(probe_dir)})}
    start = time.perf_counter()
    with (out / "run.log").open("w", encoding="utf-8") as fh:
        try:
            subprocess.run(cmd, cwd=ROOT, env=run_env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"timed out after {timeout} s", time.perf_counter() - start
    return None, time.perf_counter() - start


def failure_detail(log: Path, run_dir: Path | None = None) -> str:
    """The run's own error (status.json of a runner run), else the last error line of its log."""
    status = run_dir / "status.json" if run_dir else None
    if status is not None and status.is_file():
        error = json.loads(status.read_text()).get("error")
        if error and not error.startswith("BenchStop"):
            return error
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines() if log.is_file() else []
    errors = [i for i, line in enumerate(lines) if "error" in line.lower() and "BenchStop" not in line]
    shown = lines[errors[-1] : errors[-1] + 5] if errors else lines[-5:]  # the error and what it goes on to say
    return "\n".join(shown).strip()[:800]
