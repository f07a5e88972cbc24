"""The probe of bench/side_by_side.py and bench/profile_step.py, loaded into each training process.

Both tools under test, the runner (`finetune run`) and a TRL script, train with a subclass of
transformers' `Trainer`. A generated `sitecustomize.py` (see `sitecustomize`) loads this module into
every process the benchmark starts, and it patches `transformers.trainer.Trainer` as soon as that
module is imported, never earlier: importing transformers (and torch) at interpreter start would
run before the process sets its own environment. The patches are the same for both tools, so both
are measured the same way:

- `Trainer.training_step` counts the real tokens of each micro-batch, `input_ids != pad id` (the
  tokenizer has a [PAD] token that no text contains), and the tokens the model computed on
  (`input_ids.numel()`), and keeps the loss it returns. Both stay tensors on the device until the
  run ends: reading them would wait for the GPU inside the timed steps.
- A `TrainerCallback` added to every `Trainer` stamps `time.perf_counter()` at the end of every
  optimizer step after `torch.cuda.synchronize()`, counts the parameters when training begins, reads
  peak memory, and ends the process once the last step is stamped (`BenchStop`, a quiet
  `SystemExit(0)`), before any final checkpoint or model save.
- With a profile requested, it runs `torch.profiler` over the given steps and attributes the time
  of every op to the module that ran it (LoRA's dropout, A, B, the frozen base linear, ...), the
  backward ops through the autograd sequence numbers of their forward ops.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

ENV = "BENCH_TRAINER_PROBE"  # JSON {"dir", "stop_at", "pad_id", "profile": {"start", "steps"} | null}


# The TrainingArguments each run records, so that the table can say where the two tools' settings differ.
SETTINGS = (
    "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate", "lr_scheduler_type",
    "warmup_steps", "weight_decay", "max_grad_norm", "optim", "bf16", "fp16", "max_steps", "seed",
    "activation_checkpointing", "torch_compile", "use_liger_kernel",
)  # fmt: skip


class BenchStop(SystemExit):
    """Ends a run after its last measured step: status 0, through the tool's own cleanup."""


def sitecustomize(probe_path: Path, root: Path) -> str:
    """The text of the sitecustomize module that loads this probe where ENV is set."""
    return f"""\
# Written by bench/side_by_side.py or bench/profile_step.py: loads bench/_probe.py into each process.
import os
import sys
if os.environ.get({ENV!r}):
    sys.path.append({str(root)!r})  # the runner's repository, where it is not installed
    try:
        import importlib.util
        spec = importlib.util.spec_from_file_location("bench_trainer_probe", {str(probe_path)!r})
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        module.install()
    except Exception as exc:
        print(f"bench/_probe.py: probe not installed: {{exc!r}}", file=sys.stderr)
"""


class _AfterImport(importlib.abc.MetaPathFinder):
    """Calls `then(module)` right after `name` is first imported (the module is patched, not preloaded)."""

    def __init__(self, name: str, then):
        self.name, self.then = name, then

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        execute, then = spec.loader.exec_module, self.then

        def exec_module(module):
            execute(module)
            then(module)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    probe = Probe(json.loads(os.environ[ENV]))
    if "transformers.trainer" in sys.modules:
        probe.patch(sys.modules["transformers.trainer"])
    else:
        sys.meta_path.insert(0, _AfterImport("transformers.trainer", probe.patch))
    import atexit

    atexit.register(probe.write, stopped=False)  # a run that fails (out of memory) still reports its peak


def _sync() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def peak_memory() -> dict:
    """torch.cuda.max_memory_allocated on a GPU; on the CPU the process's peak resident set."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return {
            "peak_memory": torch.cuda.max_memory_allocated(),
            "peak_reserved": torch.cuda.max_memory_reserved(),
            "memory_kind": "GPU",
        }
    import resource

    return {"peak_memory": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "memory_kind": "CPU RSS"}


class Probe:
    def __init__(self, config: dict):
        self.out_dir = Path(config["dir"])
        self.stop_at, self.pad_id = config["stop_at"], config["pad_id"]
        self.profile = config.get("profile")
        self.real, self.computed, self.losses = [], 0, []  # of the micro-batches since the last step
        self.steps: list[dict] = []  # per optimizer step: step, time, real and computed tokens, loss
        self.model: dict = {}
        self.profiler = None
        self.labels = None
        self.written = False

    # -- the patches --------------------------------------------------------------------------

    def patch(self, trainer_module) -> None:
        from transformers import TrainerCallback

        probe, trainer_cls = self, trainer_module.Trainer
        init, training_step = trainer_cls.__init__, trainer_cls.training_step

        class Clock(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kwargs):
                probe.describe(model)
                probe.model["settings"] = {key: str(getattr(args, key, None)) for key in SETTINGS}

            def on_step_end(self, args, state, control, **kwargs):
                probe.step_end(state.global_step)

        def patched_init(trainer, *args, **kwargs):
            init(trainer, *args, **kwargs)
            trainer.add_callback(Clock())

        def patched_training_step(trainer, *args, **kwargs):
            inputs = args[1] if len(args) > 1 else kwargs.get("inputs")
            ids = inputs.get("input_ids") if hasattr(inputs, "get") else None  # a dict or a BatchEncoding
            if ids is not None:
                probe.real.append((ids != probe.pad_id).sum())
                probe.computed += ids.numel()
            loss = training_step(trainer, *args, **kwargs)
            probe.losses.append(loss.detach())
            return loss

        trainer_cls.__init__ = patched_init
        trainer_cls.training_step = patched_training_step

    def describe(self, model) -> None:
        """Parameter counts, attention kernel and LoRA dropout of the model as it trains."""
        if model is None:
            return
        inner = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
        seen, total, trainable = set(), 0, 0
        for p in inner.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
                trainable += p.numel() if p.requires_grad else 0
        config = getattr(inner, "config", None)
        peft = getattr(inner, "peft_config", None) or {}
        dropouts = sorted({getattr(c, "lora_dropout", None) for c in peft.values()} - {None})
        self.model = {
            "parameters": total,
            "trainable": trainable,
            "attn_implementation": getattr(config, "_attn_implementation", None),
            "lora_dropout": dropouts[0] if len(dropouts) == 1 else (dropouts or None),
            "model_class": type(inner).__name__,
            "compiled": inner is not model,
        }
        if self.profile:
            self.labels = label_modules(inner)

    def step_end(self, step: int) -> None:
        _sync()
        now = time.perf_counter()
        torch = sys.modules["torch"]
        real = torch.stack(self.real).sum() if self.real else 0
        loss = torch.stack(self.losses).sum() if self.losses else None
        self.steps.append({"step": step, "time": now, "real": real, "computed": self.computed, "loss": loss})
        self.real, self.computed, self.losses = [], 0, []
        if self.profile:
            self.profile_step(step)
        if step >= self.stop_at:
            self.write(stopped=True)
            raise BenchStop(0)

    # -- the profile ---------------------------------------------------------------------------

    def profile_step(self, step: int) -> None:
        import torch

        start, steps = self.profile["start"], self.profile["steps"]
        if step == start:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.__enter__()
            self.labels.active = True
        elif step == start + steps and self.profiler is not None:
            self.profiler.__exit__(None, None, None)
            self.labels.active = False
            summary = summarize_profile(self.profiler, steps)
            (self.out_dir / f"profile-{os.getpid()}.json").write_text(json.dumps(summary))
            self.profiler = None

    # -- the record ----------------------------------------------------------------------------

    def write(self, stopped: bool) -> None:
        memory = peak_memory()
        if self.written or not (self.steps or memory["memory_kind"] == "GPU"):
            return  # a process that trained nothing (a launcher); one that ran out of GPU memory still reports
        self.written = True
        steps = [
            {
                **s,
                "real": int(s["real"]),
                "loss": None if s["loss"] is None else float(s["loss"]),
            }
            for s in self.steps
        ]
        record = {"pid": os.getpid(), "rank": int(os.environ.get("RANK", "0")), "stopped": stopped, "steps": steps}
        record.update(self.model, **memory)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"probe-{os.getpid()}.json").write_text(json.dumps(record))


# -- attributing profiled time to modules ----------------------------------------------------------


class Labels:
    """Forward hooks that open a `bench::<label>` profiler range around each labelled module's forward."""

    def __init__(self):
        self.active = False
        self.open: list = []

    def hook(self, module, label: str) -> None:
        import torch

        def enter(mod, args):
            if self.active:
                context = torch.profiler.record_function(f"bench::{label}")
                context.__enter__()
                self.open.append(context)
            else:
                self.open.append(None)

        def leave(mod, args, output):
            context = self.open.pop() if self.open else None
            if context is not None:
                context.__exit__(None, None, None)

        module.register_forward_pre_hook(enter)
        module.register_forward_hook(leave)


def label_modules(model) -> Labels:
    """Label the modules whose time the profile splits out.

    LoRA layers (peft's, recognised by their `base_layer`, `lora_A`, `lora_B`, `lora_dropout`): the
    frozen base linear, the dropout, A, B, and the layer itself (what is left there: the scaling and
    the add). Elsewhere: every other linear layer, the output layer, the attention modules (what they
    run beside their projections: rotary embedding, the attention kernel, reshapes), the norms, the
    MLP activations and the embedding."""
    import torch

    labels = Labels()
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    inside_lora: set[int] = set()
    for module in model.modules():
        if all(hasattr(module, a) for a in ("base_layer", "lora_A", "lora_B", "lora_dropout")):
            labels.hook(module, "lora: scale and add")
            labels.hook(module.base_layer, "lora: frozen base linear")
            inside_lora.add(id(module.base_layer))
            for name, label in (("lora_dropout", "lora: dropout"), ("lora_A", "lora: A"), ("lora_B", "lora: B")):
                for sub in getattr(module, name).values():
                    labels.hook(sub, label)
                    inside_lora.add(id(sub))
    for name, module in model.named_modules():
        if id(module) in inside_lora or hasattr(module, "base_layer"):
            continue
        kind = type(module).__name__
        if module is output:
            labels.hook(module, "lm_head")
        elif isinstance(module, torch.nn.Linear):
            labels.hook(module, "linear")
        elif isinstance(module, torch.nn.Embedding):
            labels.hook(module, "embedding")
        elif name.endswith("self_attn"):
            labels.hook(module, "attention core")
        elif kind.endswith("RMSNorm") or isinstance(module, torch.nn.LayerNorm):
            labels.hook(module, "norm")
        elif name.endswith("act_fn"):
            labels.hook(module, "mlp activation")
    return labels


def summarize_profile(profiler, steps: int) -> dict:
    """Top ops by self time (CPU and device), and the self time under each label, forward and backward.

    A forward op belongs to the innermost labelled module around it; a backward op to the label of
    the forward op whose autograd node ran it (matched by sequence number); the optimizer's ops to
    "optimizer"; the rest (the loss, the step's own bookkeeping) to "other"."""
    events = profiler.events()
    label_of_seq: dict[int, str] = {}
    started: dict[int, tuple[float, str]] = {}

    def nearest(event, prefixes: tuple[str, ...]):
        parent = event.cpu_parent
        while parent is not None:
            if parent.name.startswith(prefixes):
                return parent
            parent = parent.cpu_parent
        return None

    cells: dict[str, list[float]] = {}  # label -> [forward cpu, forward device, backward cpu, backward device]
    owners = []
    for e in events:  # the forward ops first: their sequence numbers name the backward ones
        if e.name.startswith("bench::"):
            owners.append((e, None))
            continue
        owner = nearest(e, ("bench::",))
        label = owner.name.removeprefix("bench::") if owner is not None else None
        # An op that records no autograd node (a no-op `to`) reports the number the next node will
        # take: of the forward ops with a number, the one that started last recorded the node.
        if label is not None and e.sequence_nr >= 0:
            start, _ = started.get(e.sequence_nr, (-1.0, None))
            if e.time_range.start >= start:
                started[e.sequence_nr] = (e.time_range.start, label)
        owners.append((e, label))
    label_of_seq.update({seq: label for seq, (_, label) in started.items()})
    total_cpu = total_device = 0.0
    for e, label in owners:
        total_cpu += e.self_cpu_time_total
        total_device += e.self_device_time_total
        if e.name.startswith("bench::"):
            label, side = e.name.removeprefix("bench::"), 0  # the range's own overhead
        elif label is not None:
            side = 0
        else:
            engine = e if e.name.startswith("autograd::engine::") else nearest(e, ("autograd::engine::",))
            if engine is not None and engine.sequence_nr in label_of_seq:
                label, side = label_of_seq[engine.sequence_nr], 2
            elif e.name.startswith("Optimizer.") or nearest(e, ("Optimizer.",)) is not None:
                label, side = "optimizer", 0
            else:
                label, side = ("other, backward", 2) if engine is not None else ("other", 0)
        cell = cells.setdefault(label, [0.0, 0.0, 0.0, 0.0])
        cell[side] += e.self_cpu_time_total
        cell[side + 1] += e.self_device_time_total

    def top(key: str) -> list[dict]:
        rows = sorted(profiler.key_averages(), key=lambda a: getattr(a, key), reverse=True)[:12]
        return [
            {
                "name": a.key,
                "calls": a.count,
                "self_cpu_us": a.self_cpu_time_total,
                "self_device_us": a.self_device_time_total,
            }
            for a in rows
        ]

    return {
        "steps": steps,
        "total_self_cpu_us": total_cpu,
        "total_self_device_us": total_device,
        "labels": cells,
        "top_cpu": top("self_cpu_time_total"),
        "top_device": top("self_device_time_total") if total_device else [],
    }
