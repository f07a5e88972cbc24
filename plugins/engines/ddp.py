"""Engine `ddp`: plain data parallel (PyTorch DistributedDataParallel), the default.

With one process it is ordinary single-device training, in the `finetune` process itself; with
`finetune run --nproc N` every process holds the whole model and gradients are averaged across them
each step. Every `Engine` method keeps its default: whole weights on every process, checkpoints that
any number of processes loads, and nothing asked of the trainer but to run once per process.
"""

from __future__ import annotations

from runner import Engine, EngineOptions, hookimpl


class DDP(Engine):
    """Plain data parallel: the whole model on every process, gradients averaged each step."""

    name = "ddp"
    Options = EngineOptions
    needs_launcher = False  # one process trains in `finetune` itself


@hookimpl
def register_engines(register):
    register(DDP)
