"""Engine `ddp`: plain data parallel (PyTorch DistributedDataParallel), the default.

With one process it is ordinary single-device training; with `finetune run --nproc N` every
process holds the whole model and gradients are averaged across them each step.
"""

from __future__ import annotations

from runner import Engine, EngineOptions, hookimpl


class DDP(Engine):
    """Plain data parallel: the whole model on every process, gradients averaged each step."""

    name = "ddp"
    Options = EngineOptions


@hookimpl
def register_engines(register):
    register(DDP)
