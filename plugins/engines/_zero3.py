"""ZeRO-3 without a whole model on any process: the model is built partitioned (zero.Init), and the
final model is saved layer by layer to rank 0. The DeepSpeed engine's `building` and `save_model`.

Without this, every process built the whole model before DeepSpeed sharded it, and the final save
gathered a whole copy on every process: a model that fits only sharded died at start-up (8 copies in
host memory on 8 GPUs) or at its very end. Nothing here does anything unless the engine partitions
the weights (ZeRO-3).

- `register(config)` hands transformers the engine's DeepSpeed config (`build_config`) before the
  model is built, as its DeepSpeed integration expects: `from_pretrained` and `from_config` then
  create every layer inside `deepspeed.zero.Init` (each layer partitioned as soon as it exists) and
  load the checkpoint on rank 0 one layer at a time.
- `save(...)` writes the final model: every rank gathers one module's weights at a time, rank 0
  copies them into the current safetensors shard and writes it out when it is full; the other ranks
  never hold more than their shard and one layer.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# DeepSpeed's own defaults, for the "auto" values the trainer fills in from the model later; the
# partitioning at build time reads none of them, but DeepSpeed's config model refuses "auto".
ZERO_DEFAULTS = {
    "reduce_bucket_size": 500_000_000,
    "stage3_prefetch_bucket_size": 50_000_000,
    "stage3_param_persistence_threshold": 100_000,
}
SHARD_BYTES = 5 * 2**30  # transformers' usual shard size: a shard is what rank 0 holds at once
WEIGHTS, INDEX = "model.safetensors", "model.safetensors.index.json"

_kept: list[Any] = []  # transformers holds the registered config by a weak reference only


def build_config(config: dict[str, Any], zero_stage: int, model, training) -> dict[str, Any] | None:
    """The engine's DeepSpeed `config` with its "auto" values resolved as the trainer (`training`:
    its options) will resolve them, or None when the weights are not partitioned (no ZeRO-3) or the
    `model` component loads its base quantized (transformers builds a quantized model on the meta
    device instead, and bitsandbytes quantizes whole weights)."""
    if zero_stage != 3 or model.quantization_bits() is not None:
        return None
    return concrete(config, training)


def concrete(config: dict[str, Any], training) -> dict[str, Any]:
    """`config` with every "auto" replaced. What matters at build time is the precision: under
    zero.Init the weights are created in the dtype training will keep them in (bf16 or fp16 when
    mixed precision is on, as DeepSpeed's engine converts them). The batch sizes only have to be
    consistent for DeepSpeed's config check; the optimizer section is not read by zero.Init."""
    batch = int(getattr(training, "batch_size", 1))
    steps = int(getattr(training, "gradient_accumulation_steps", 1))
    precision = _precision(getattr(training, "mixed_precision", "no"))
    out = json.loads(json.dumps(config))  # a deep copy: the trainer gets the engine's own later
    out.pop("optimizer", None)
    out.pop("scheduler", None)
    # train_batch_size is left for DeepSpeed to derive: its config reads the world size from
    # deepspeed.comm, which the trainer starts only later.
    out.pop("train_batch_size", None)
    out.update(
        train_micro_batch_size_per_gpu=batch,
        gradient_accumulation_steps=steps,
        gradient_clipping=float(getattr(training, "max_grad_norm", 1.0)),
        bf16={**out.get("bf16", {}), "enabled": precision == "bf16"},
        fp16={**out.get("fp16", {}), "enabled": precision == "fp16"},
    )
    zero = out.setdefault("zero_optimization", {})
    for key, default in ZERO_DEFAULTS.items():
        if zero.get(key) == "auto":
            zero[key] = default
    return out


def _precision(mode: str) -> str:
    """The trainer's reading of `training.mixed_precision` ('auto': bf16 on GPUs that have it)."""
    if mode != "auto":
        return mode
    import torch

    if not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def register(config: dict[str, Any]) -> None:
    """Have transformers build the next models under zero.Init (see the module docstring). The
    config stays registered until the trainer registers its own."""
    from transformers.integrations import HfDeepSpeedConfig

    _kept.clear()
    _kept.append(HfDeepSpeedConfig(config))


@contextlib.contextmanager
def freed_layers_returned() -> Iterator[None]:
    """While a model is built under zero.Init on the CPU, have glibc return a layer's freed full
    weights to the system. Each layer is created whole, then shrinks to its shard; with glibc's
    default (a threshold for mmap that rises to 32 MiB after the first large free) those whole
    layers come from the heap, and the holes they leave between the shards kept resident memory
    at about 1.8 copies of the model (measured: +620 MB for a 342 MB model on 2 processes, against
    +180 MB with this). Weights of 1 MiB and more are mapped and unmapped during the build; after
    it the threshold is 32 MiB, where glibc's own adjustment would have brought it. Not needed
    with CUDA, where the layers are built on the GPU."""
    libc = None
    try:
        import ctypes

        import torch

        if not torch.cuda.is_available():
            libc = ctypes.CDLL("libc.so.6")
    except (OSError, ImportError):
        pass
    m_mmap_threshold = -3  # glibc's mallopt parameter number
    if libc is not None:
        libc.mallopt(m_mmap_threshold, 2**20)
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(m_mmap_threshold, 32 * 2**20)
            libc.malloc_trim(0)


def partitioned(model) -> bool:
    """Whether ZeRO-3 holds the model's weights in shards (a `ds_id` on its parameters)."""
    return any(hasattr(param, "ds_id") for param in model.parameters())


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


@contextlib.contextmanager
def gathered(params: list, modifier_rank: int | None = None) -> Iterator[None]:
    """DeepSpeed's GatheredParameters for the partitioned ones among `params` (none: no-op)."""
    params = [p for p in params if hasattr(p, "ds_id")]
    if not params:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
        yield


def adapter_weights(model) -> list:
    """What an adapter save reads: the weights that train (adapters, the task head, a prompt
    encoder) and the embeddings, which peft saves beside the adapter when the vocabulary was
    resized or an embedding is adapted. The frozen body of the model is not gathered."""
    params = [p for p in model.parameters() if p.requires_grad]
    for get in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, get, lambda: None)()
        if module is not None:
            params.extend(module.parameters())
    return params


class ShardWriter:
    """Rank 0's side of a streamed save: tensors go into the current shard, which is written when
    it reaches `limit` bytes; `close` names the files as transformers does (one file, or numbered
    files and an index)."""

    def __init__(self, directory: Path, limit: int | None = None):
        self.directory, self.limit = directory, limit or SHARD_BYTES
        self.current: dict[str, Any] = {}
        self.size = self.total = 0
        self.files: list[list[str]] = []  # the keys of each written shard, in order

    def add(self, key: str, tensor) -> None:
        nbytes = tensor.numel() * tensor.element_size()
        if self.current and self.size + nbytes > self.limit:
            self._flush()
        self.current[key] = tensor
        self.size += nbytes
        self.total += nbytes

    def _flush(self) -> None:
        from safetensors.torch import save_file

        save_file(self.current, self.directory / f"part-{len(self.files)}.tmp", metadata={"format": "pt"})
        self.files.append(list(self.current))
        self.current, self.size = {}, 0

    def close(self) -> list[str]:
        if self.current or not self.files:
            self._flush()
        count = len(self.files)
        names = [WEIGHTS] if count == 1 else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        for i, name in enumerate(names):
            (self.directory / f"part-{i}.tmp").replace(self.directory / name)
        if count > 1:
            weight_map = {key: name for name, keys in zip(names, self.files, strict=True) for key in keys}
            index = {"metadata": {"total_size": self.total}, "weight_map": weight_map}
            (self.directory / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        return names


def stream_weights(model, directory: Path | None, limit: int | None = None) -> None:
    """Every rank calls this with the same model; rank 0 passes the directory to write into.

    One module at a time (its own parameters, not its children's), every rank gathers the weights
    and rank 0 copies them into the shard; leaving the gather drops the full tensors again. A weight
    tied to another (an output layer sharing the embedding) is written once, under the name
    transformers keeps, as `save_pretrained` does."""
    writer = ShardWriter(directory, limit) if directory is not None else None
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    seen: set[int] = set()
    for prefix, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        with gathered([param for _, param in own]):
            if writer is None:
                continue
            for name, param in own:
                key = f"{prefix}.{name}" if prefix else name
                ident = getattr(param, "ds_id", id(param))
                if key in tied or ident in seen:
                    continue
                seen.add(ident)
                writer.add(key, param.detach().to("cpu", copy=True).contiguous())
            for name, buffer in module.named_buffers(recurse=False):
                if buffer is not None and name not in module._non_persistent_buffers_set:
                    writer.add(f"{prefix}.{name}" if prefix else name, buffer.detach().to("cpu", copy=True))
    if writer is not None:
        writer.close()


def write_config(model, directory: Path) -> None:
    """The config files `save_pretrained` writes beside the weights."""
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(directory)
    generation = getattr(model, "generation_config", None)
    if generation is not None and model.can_generate():
        generation.save_pretrained(directory)


def save(
    model,
    strategy,
    target: Path,
    write_rest: Callable[[Path], None],
    publish: Callable[[Path, Callable[[Path], None]], Any],
    whole_model: Callable[[], contextlib.AbstractContextManager],
) -> None:
    """Save a ZeRO-3 model into `target` (every rank calls this; rank 0 writes).

    A strategy that saves the model the default way (`save_pretrained`: full, freeze) is streamed
    layer by layer. An adapter strategy saves through peft, which reads only what trains (and the
    embeddings): only those are gathered. A third-party strategy with its own `save` gets the whole
    model gathered, as before, since what it reads is unknown. No strategy: the whole model, streamed."""
    from runner import Strategy

    if strategy is None or (type(strategy).save is Strategy.save and not strategy.saves_adapter()):
        save_whole(model, target, write_rest, publish)
        return
    # peft reads only what trains (and the embeddings); what another `save` reads is unknown
    with gathered(adapter_weights(model)) if strategy.saves_adapter() else whole_model():
        if _rank() == 0:
            publish(target, lambda d: (strategy.save(model, d), write_rest(d)))


def save_whole(model, target: Path, write_rest: Callable[[Path], None], publish) -> None:
    """The whole model streamed into `target` as `save_pretrained` would write it (every rank calls
    this; rank 0 writes), and `write_rest(directory)` on rank 0 for what goes beside it."""

    def write(directory: Path) -> None:
        stream_weights(model, directory)
        write_config(model, directory)
        write_rest(directory)

    if _rank() == 0:
        publish(target, write)
    else:
        stream_weights(model, None)  # the same gathers, in the same order, as rank 0's
