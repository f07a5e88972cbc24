"""The reward model a recipe names, found, checked, loaded and run: by the `win_rate` audit
(plugins/audits/win_rate.py), which judges answers with it, and by the `reward_model` reward
(plugins/rewards/model_score.py), which scores sampled answers with it.

`reward_model` (the audit's) and `path` (the reward's) name, relative to the working directory
(like `[model] type = "run"`'s path):
- a completed run directory of this runner (runs/<name>/<time>), or a folder of runs (its newest
  completed one): its model/ (a full model, or an adapter merged here into its base);
- a folder holding a transformers model (config.json), or a PEFT adapter over one;
- a Hugging Face Hub id ("org/name").
It must be a sequence classifier with one output (AutoModelForSequenceClassification with
num_labels = 1): a reward model as TRL's RewardTrainer, and this runner's reward training, save
one. Remote code is never run (trust_remote_code stays off).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from plugins.models.from_run import find_run, run_model_meta
from runner import FinetuneError, clip, hub_load_error, open_run, position_limit

ADAPTER = "adapter_config.json"
BATCH = 8


def _local(value: str) -> Path | None:
    """The local path `value` names, or None for a Hub id. A value that exists, that reads as a path
    (/, ./, ../, ~, more than one "/"), or whose first part is a local folder ("runs/x"), is local."""
    path = Path(os.path.expanduser(value))
    if path.exists() or value.startswith(("/", "./", "../", "~")) or value.count("/") > 1:
        return path
    if len(path.parts) > 1 and Path(path.parts[0]).is_dir():  # "runs/reward" where ./runs exists
        return path
    return None


def _is_run(path: Path) -> bool:
    """Whether `path` is a run directory, or a folder of them (not a model folder)."""
    if (path / "config.json").is_file() or (path / ADAPTER).is_file():
        return False
    try:
        open_run(path)
        return True
    except FinetuneError:
        return any(p.is_dir() and (p / "status.json").is_file() for p in path.iterdir())


@dataclass
class Found:
    """Where the reward model's weights and tokenizer are."""

    name: str  # as the recipe names it
    model: str  # a folder or Hub id holding the model (or the adapter)
    tokenizer: str
    base: str | None = None  # an adapter's base model, when `model` holds an adapter
    run: Path | None = None

    def identity(self) -> dict[str, str]:
        """What tells two loads of it apart: its path and a stamp of its weight files (names, sizes,
        modification times: cheap where hashing gigabytes twice a run would not be); a Hub id alone."""
        path = Path(self.model)
        if not path.is_dir():
            return {"path": self.model}
        digest = hashlib.sha256()
        for file in sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin")):
            stat = file.stat()
            digest.update(f"{file.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return {"path": str(path.resolve()), "weights_stamp": digest.hexdigest()[:16]}


def find(value: str) -> Found:
    """The reward model `value` names; FinetuneError when there is none there."""
    path = _local(value)
    if path is None:
        return Found(value, value, value)
    if not path.exists():
        raise FinetuneError(f"no such reward model: {clip(value)} (looked in {Path.cwd()})")
    if not path.is_dir():
        raise FinetuneError(f"{clip(value)} is a file: name a model folder, a run directory or a Hub id")
    if _is_run(path):
        run = find_run(str(path))
        meta = run_model_meta(run)
        model = run / "model"
        if meta.get("adapter"):
            merged = run / "merged"
            if (merged / "config.json").is_file():
                return Found(value, str(merged), str(model), run=run)
            base = run / "base_model"
            return Found(value, str(model), str(model), str(base) if base.is_dir() else meta.get("base_model"), run)
        return Found(value, str(model), str(model), run=run)
    if (path / ADAPTER).is_file():
        return Found(value, str(path), str(path), _adapter_base(path))
    if not (path / "config.json").is_file():
        raise FinetuneError(f"{clip(value)} holds no model (no config.json), adapter or run")
    return Found(value, str(path), str(path))


def _adapter_base(path: Path) -> str | None:
    try:
        return json.loads((path / ADAPTER).read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError):
        return None


def not_a_reward_model(architectures: list[str], num_labels: int, name: str, model_type: str = "model") -> str | None:
    """Why a model (its architecture names, its number of outputs) is not a one-output sequence
    classifier, or None."""
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        shown = ", ".join(architectures) or f"a {model_type} with no head named"
        return (
            f"reward model {clip(name)} is {shown}, not a sequence classifier: a reward model is an "
            "AutoModelForSequenceClassification with one output (num_labels = 1)"
        )
    if num_labels != 1:
        return (
            f"reward model {clip(name)} is a classifier with {num_labels} outputs; a reward model gives "
            "one score (num_labels = 1)"
        )
    return None


def check(value: str) -> str | None:
    """Validation's part, without loading weights: the path exists and what it holds is a
    one-output classifier (read from config.json where it is local). A Hub id is checked when loaded."""
    try:
        found = find(value)
    except FinetuneError as exc:
        return f"{exc.message}; {exc.hint}" if exc.hint else exc.message
    config = Path(found.model) / "config.json"
    if found.base is None and config.is_file():
        try:
            raw = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return f"{config}: not a readable model config ({exc})"
        labels = raw.get("num_labels")
        if not isinstance(labels, int):
            labels = len(raw.get("id2label") or {}) or 2  # transformers' default: two labels
        model_type = str(raw.get("model_type") or "model")
        return not_a_reward_model(list(raw.get("architectures") or []), labels, value, model_type)
    return None


class RewardModel:
    """A loaded reward model and its tokenizer, in eval mode; `close()` frees it."""

    def __init__(self, value: str, device, dtype: str = "float32"):
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        self.found = found = find(value)
        torch_dtype = getattr(torch, dtype)
        try:
            if found.base is not None:
                config = AutoConfig.from_pretrained(found.base, num_labels=1, trust_remote_code=False)
            else:
                config = AutoConfig.from_pretrained(found.model, trust_remote_code=False)
            # An adapter's base may be a causal LM: loaded as a classifier, the adapter brings the score head.
            problem = None if found.base is not None else _problem(config, value)
            if problem:
                raise FinetuneError(problem)
            if found.base is not None:
                from peft import PeftModel

                base = AutoModelForSequenceClassification.from_pretrained(
                    found.base, config=config, dtype=torch_dtype, trust_remote_code=False
                )
                model = PeftModel.from_pretrained(base, found.model).merge_and_unload()
                problem = not_a_reward_model([type(model).__name__], model.config.num_labels, value)
                if problem:
                    raise FinetuneError(problem)
            else:
                model = AutoModelForSequenceClassification.from_pretrained(
                    found.model, dtype=torch_dtype, trust_remote_code=False
                )
            self.tokenizer = AutoTokenizer.from_pretrained(found.tokenizer, trust_remote_code=False)
        except FinetuneError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise hub_load_error("the reward model", found.model, exc) from exc
        if model.config.pad_token_id is None and self.tokenizer.pad_token_id is not None:
            model.config.pad_token_id = self.tokenizer.pad_token_id  # right padding is found by it
        self.model = model.to(device).eval()
        self.limit = position_limit(model.config)

    def ids(self, prompt_text: str, messages: list[dict] | None, answer: str) -> list[int]:
        """Prompt and answer as the reward model reads them, as TRL's RewardTrainer tokenizes rows:
        with the tokenizer's chat template when it has one (the conversation, then the answer as an
        assistant turn), else the prompt as the task renders it, the answer and the end-of-sequence
        token, as text."""
        tokenizer = self.tokenizer
        if tokenizer.chat_template and messages is not None:
            conversation = [*messages, {"role": "assistant", "content": answer}]
            try:
                done = tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)
            except Exception as exc:  # a Jinja template's own error (raise_exception, a role it refuses)
                raise FinetuneError(f"the reward model's chat template cannot render a prompt: {exc}") from exc
            return list(done["input_ids"])
        return tokenizer(prompt_text + answer + (tokenizer.eos_token or ""))["input_ids"]

    def scores(self, sequences: list[list[int]]) -> tuple[list[float], int]:
        """One reward per token sequence, and how many were cut (their start dropped) to fit the model."""
        import torch

        cut = sum(1 for ids in sequences if self.limit and len(ids) > self.limit)
        if self.limit:
            sequences = [ids[-self.limit :] for ids in sequences]
        pad = self.model.config.pad_token_id
        batch = BATCH if pad is not None else 1  # without a pad id the model finds no last token in a batch
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        out = [0.0] * len(sequences)
        with torch.no_grad():
            for start in range(0, len(order), batch):
                rows = order[start : start + batch]
                longest = max(len(sequences[i]) for i in rows)
                ids = torch.full((len(rows), longest), pad if pad is not None else 0, dtype=torch.long)
                mask = torch.zeros((len(rows), longest), dtype=torch.long)
                for r, i in enumerate(rows):
                    ids[r, : len(sequences[i])] = torch.tensor(sequences[i], dtype=torch.long)
                    mask[r, : len(sequences[i])] = 1
                logits = self.model(
                    input_ids=ids.to(self.model.device), attention_mask=mask.to(self.model.device)
                ).logits
                for r, i in enumerate(rows):
                    out[i] = float(logits[r, 0])
        return out, cut

    def close(self) -> None:
        import torch

        device = self.model.device
        del self.model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _problem(config, name: str) -> str | None:
    architectures = list(getattr(config, "architectures", None) or [])
    return not_a_reward_model(architectures, config.num_labels, name, getattr(config, "model_type", "model"))
