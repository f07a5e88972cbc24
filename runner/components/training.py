"""Strategies, trainers and engines: which parameters train, the loop that trains them, and over how many processes."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from runner.components.base import Component, RunContext
from runner.components.models import ModelSpec
from runner.components.tasks import Task
from runner.options import Options

if TYPE_CHECKING:  # pragma: no cover - typing only
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class Strategy(Component):
    """Decides which parameters train, and how the fine-tuned model is saved and loaded."""

    kind = "strategy"
    can_merge: ClassVar[bool] = False
    # The highest DeepSpeed ZeRO stage the method works under (3 partitions the weights themselves).
    max_zero_stage: ClassVar[int] = 3
    # The bit widths of a quantized base (`[model] quantization`) the method trains on: only methods
    # whose own weights (adapters) train can leave the base's weights quantized.
    quantized_bases: ClassVar[tuple[int, ...]] = ()

    def apply(self, model: PreTrainedModel, ctx: RunContext, spec: ModelSpec) -> PreTrainedModel:
        """Prepare the model for training (freeze, wrap with adapters); return the model to train.
        `spec` says which head the model has."""
        return model

    def save(self, model: PreTrainedModel, directory: Path) -> None:
        """Write the trained model in safetensors into `directory` (it exists and is empty),
        loadable by plain transformers/peft where the method allows."""
        model.save_pretrained(directory)

    def load(self, directory: Path, spec: ModelSpec, base: Callable[[], PreTrainedModel]) -> PreTrainedModel:
        """Load what `save` wrote. `base()` builds the untouched base model when one is needed."""
        from runner.toolkit.modeling import auto_class

        return auto_class(spec.head).from_pretrained(directory)

    def saves_adapter(self) -> bool:
        """True when `save` writes only an adapter, so the base model must be findable."""
        return False

    def extra_positions(self) -> int:
        """Positions the strategy adds to every input (virtual tokens); they count against the
        model's maximum length."""
        return 0

    def merge(self, model: PreTrainedModel) -> PreTrainedModel:
        """A plain transformers model with what trained folded into its weights, for
        `finetune export --merge`. A full model is already that; a strategy that cannot merge
        raises FinetuneError saying why."""
        if not self.saves_adapter():
            return model
        from runner.errors import FinetuneError

        raise FinetuneError(f"strategy '{self.name}' cannot merge its adapter into the base model")


# -- training -----------------------------------------------------------------------------------


@dataclass
class TrainJob:
    """Everything a trainer needs; assembled by the core."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    task: Task
    train: Dataset | None
    evaluation: Dataset | None
    collator: Callable
    compute_metrics: Callable[[Any], dict[str, float]]
    checkpoint_dir: Path
    seed: int
    events: Any  # runner.pipeline.events.Events
    resume_from: Path | None = None
    deterministic: bool = False
    deepspeed: dict[str, Any] | None = None  # the engine's DeepSpeed config, if it uses DeepSpeed
    greater_is_better: dict[str, bool] = field(default_factory=dict)  # metric key -> direction
    stop_requested: Callable[[], bool] = lambda: False
    collective_timeout: int | None = None  # seconds a collective may wait for the other processes


@dataclass
class TrainOutcome:
    global_step: int
    train_loss: float | None
    interrupted: bool = False
    best_checkpoint: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)


class Trainer(Component):
    """Runs the optimisation loop, evaluation and checkpoints."""

    kind = "trainer"
    # The `[distributed] engine` names this trainer can train under. Under any of them the trainer
    # is started once per process (torchrun's environment: RANK, WORLD_SIZE, LOCAL_RANK).
    engines: ClassVar[tuple[str, ...]] = ("ddp",)

    def fit(self, job: TrainJob) -> TrainOutcome:
        raise NotImplementedError

    def evaluate(self, job: TrainJob, dataset: Dataset) -> dict[str, float]:
        """Evaluate `job.model` on `dataset`: loss and metrics, keys without a prefix."""
        raise NotImplementedError

    def planned_steps(self, train_rows: int, world_size: int = 1) -> int | None:
        """Optimizer steps the run will take for this many training rows on `world_size`
        processes (for `finetune plan`)."""
        return None

    def whole_model(self, job: TrainJob) -> AbstractContextManager:
        """A context in which `job.model` holds all its weights on this process, for saving it
        after `fit`. Every rank enters it. An engine that shards the weights (ZeRO-3) gathers them."""
        return nullcontext()


# -- distributed engines -----------------------------------------------------------------------


@dataclass(frozen=True)
class Sharding:
    """How an engine spreads the model states over processes: the ZeRO stage (0 replicates
    everything; 1 shards the optimizer states, 2 also the gradients, 3 also the weights) and
    where optimizer states and weights are offloaded ("none", "cpu" or "nvme")."""

    zero_stage: int = 0
    offload_optimizer: str = "none"
    offload_params: str = "none"


class EngineOptions(Options):
    """Options every engine has; an engine's own options subclass it."""

    timeout: int = Field(
        default=600,
        gt=0,
        le=7 * 24 * 3600,
        description="Seconds a process waits in a collective (gradient all-reduce, gather) for the others "
        "before the run fails naming its rank and step, instead of hanging (PyTorch's default is 30 minutes).",
    )


class Engine(Component):
    """How training spreads over processes and devices (`[distributed] engine = ...`).

    The core launches one process per device (`finetune run --nproc N`) with torchrun or
    DeepSpeed's launcher; the engine says what each process's trainer is told. Options subclass
    `EngineOptions` (adds `timeout`)."""

    kind = "engine"
    Options = EngineOptions

    def collective_timeout(self) -> int:
        """Seconds a collective may wait for the other processes (process group and trainer)."""
        return self.options.timeout

    def sharding(self) -> Sharding:
        """How model states are sharded, for memory estimates and checks."""
        return Sharding()

    def deepspeed_config(self) -> dict[str, Any] | None:
        """The DeepSpeed config for the trainer, or None when the engine does not use DeepSpeed.
        Values the trainer decides (batch sizes, clipping, precision) are "auto": it fills them in."""
        return None

    def check_launch(self, world_size: int) -> None:
        """Checks that need the launch (imports allowed): raise FinetuneError before any process
        starts. Called once, in the launching process."""
