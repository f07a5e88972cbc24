"""What torch.distributed and DeepSpeed print that asks nothing of the user, kept out of a DeepSpeed run's output.

A DeepSpeed run on the CPU printed, besides the run's own lines, three library messages that a plain
run does not print and that no user can act on:

- DeepSpeed's `[WARNING] [real_accelerator.py:...] Setting accelerator to CPU. If you have GPU or
  other accelerator, we were unable to detect it.`, each time DeepSpeed is imported on a machine
  without a GPU and without DS_ACCELERATOR: it guessed the CPU, the only device there is.
  `cpu_accelerator` names it for the launch (`DeepSpeed.launch_environment`: `finetune` sets it
  before DeepSpeed checks its config, and the workers inherit it); `name_cpu_accelerator` sets it
  wherever else DeepSpeed is about to be imported (converting a checkpoint, a worker's build).
- torch's FutureWarnings for the collectives DeepSpeed calls (`torch.distributed.all_gather_into_tensor`
  and `reduce_scatter_tensor` "are deprecated", "please use ..._single"), at every step and
  evaluation on every process: a note to DeepSpeed's authors about functions that still work.
  `quiet_collectives` filters exactly those messages, in every process that trains (from the
  engine's build context on, before DeepSpeed's first collective).
- DeepSpeed's `DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully`, printed by
  every process when its communication backend starts: the op loaded (it is built once, and cached).
  `quiet_deepspeed_comm` keeps that one print of that one function out of the output.

Each is silenced by its exact message, `--debug` or not (they are about DeepSpeed's calls, not the
run); errors and every other warning of these libraries still show.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import os
import warnings

# torch's deprecation notices of collectives: "`torch.distributed.X` is deprecated. Please use ...",
# "... will be deprecated", "... is a private function and will be deprecated".
COLLECTIVE_NOTICE = r"`torch\.distributed\.[\w.]+` (is deprecated|will be deprecated|is a private function)"


def cpu_accelerator() -> dict[str, str]:
    """DS_ACCELERATOR=cpu on a machine without a GPU: DeepSpeed need not guess (nothing elsewhere)."""
    import torch

    return {} if torch.cuda.is_available() else {"DS_ACCELERATOR": "cpu"}


def name_cpu_accelerator() -> None:
    """On a machine without a GPU, tell DeepSpeed it runs on the CPU (DS_ACCELERATOR), unless the
    user set it. Call it before DeepSpeed is imported; processes started later inherit it."""
    if "DS_ACCELERATOR" not in os.environ:
        os.environ.update(cpu_accelerator())


def quiet_collectives() -> None:
    """Ignore torch's FutureWarnings about the collectives DeepSpeed calls, and no other warning."""
    warnings.filterwarnings("ignore", message=COLLECTIVE_NOTICE, category=FutureWarning)


def quiet_deepspeed_comm() -> None:
    """Keep DeepSpeed's "... shm_comm_op built successfully" print (on stdout, on every process) out
    of the output. Call it before DeepSpeed's communication backend starts; idempotent, and a no-op
    where DeepSpeed has no such function."""
    name_cpu_accelerator()  # first: DeepSpeed reads DS_ACCELERATOR when the import below loads it
    try:  # by name: `import deepspeed.comm.torch` would give the `torch` that deepspeed.comm imported
        backend = importlib.import_module("deepspeed.comm.torch")
    except ImportError:
        return
    build = getattr(backend, "build_shm_op", None)
    if build is None or getattr(build, "quiet", False):
        return

    @functools.wraps(build)
    def quietly(*args, **kwargs):
        with contextlib.redirect_stdout(io.StringIO()):
            return build(*args, **kwargs)

    quietly.quiet = True
    backend.build_shm_op = quietly
