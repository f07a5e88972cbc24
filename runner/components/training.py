"""Strategies, trainers and engines: which parameters train, the loop that trains them, and over how many processes."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field

from runner.components.base import Component, RunContext
from runner.components.models import Model, ModelSpec
from runner.components.tasks import Task
from runner.options import Options

if TYPE_CHECKING:  # pragma: no cover - typing only
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class Strategy(Component):
    """Decides which parameters train, and how the fine-tuned model is saved and loaded."""

    kind = "strategy"
    can_merge: ClassVar[bool] = False
    # The highest ZeRO stage the method works under (`Engine.sharding()`; 3 partitions the weights themselves).
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
    # The run's engine: the trainer asks it for its settings (`Engine.trainer_settings`). None where
    # the core only evaluates a model on this process (a baseline, `finetune eval`).
    engine: Engine | None = None
    greater_is_better: dict[str, bool] = field(default_factory=dict)  # metric key -> direction
    stop_requested: Callable[[], bool] = lambda: False
    collective_timeout: int | None = None  # seconds a collective may wait for the other processes
    objective: Any = None  # the recipe's `[objective]` (a runner.PairObjective), for a trainer that takes one
    rewards: list = field(default_factory=list)  # the recipe's `[[rewards]]` (runner.Reward), prepared
    # The training split's rows as read, per source with the task that reads them ([(Task, Dataset)]):
    # for a trainer that builds its own inputs from them (grpo renders the prompts it samples answers to).
    rows: list = field(default_factory=list)


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
    # The library whose training loop this trainer drives ("" : none named). It is started once per
    # process (torchrun's environment: RANK, WORLD_SIZE, LOCAL_RANK) and trains under every engine
    # that asks nothing of it (`Engine.frameworks` None, as DDP), and under the engines that list
    # its framework: those give it their settings in that framework's terms (`Engine.trainer_settings`).
    framework: ClassVar[str] = ""
    # Whether it takes a preference objective from the recipe (`[objective]`, `TrainJob.objective`) in place
    # of its own loss; the core refuses an objective for a trainer that does not.
    takes_objective: ClassVar[bool] = False
    # Whether it learns from the recipe's rewards (`[[rewards]]`, `TrainJob.rewards`: sampled answers
    # scored); the core refuses rewards for a trainer that does not.
    takes_rewards: ClassVar[bool] = False
    # Sequences the model runs forward for each row of a batch: 2 for a preference pair (its chosen and
    # its rejected answer). `finetune plan` counts the activations of batch_size x this many sequences.
    sequences_per_row: ClassVar[int] = 1

    def fit(self, job: TrainJob) -> TrainOutcome:
        """Train `job.model` on `job.train` (from `job.resume_from` when set), evaluating, writing
        checkpoints and reporting through `job.events`; every rank calls it. Under an engine that
        sets it up, train with `job.engine.trainer_settings(self.framework, job.resume_from)`."""
        raise NotImplementedError

    def evaluate(self, job: TrainJob, dataset: Dataset) -> dict[str, float]:
        """Evaluate `job.model` on `dataset`: loss and metrics, keys without a prefix."""
        raise NotImplementedError

    def planned_steps(self, train_rows: int, world_size: int = 1) -> int | None:
        """Optimizer steps the run will take for this many training rows on `world_size`
        processes (for `finetune plan`)."""
        return None

    def model_spec(self, spec: ModelSpec) -> ModelSpec:
        """The model the trainer trains, given the one the task asks for (`Task.model_spec`): by
        default `spec` itself. A trainer that needs another head returns a changed copy (a reward
        model trainer: a one-score sequence classifier on a preference task). The core builds, plans,
        saves and loads the model by what this returns."""
        return spec

    def frozen_copies(self, strategy: Strategy) -> int:
        """Whole copies of the model the trainer keeps frozen beside it while training (a preference
        trainer's reference model) with `strategy`: `finetune plan` counts their weights. None by default."""
        return 0

    def training_speed(self, model: PreTrainedModel, engine: Engine | None = None) -> dict[str, Any]:
        """How this trainer will compute with `model` on this machine and `engine`: the run records it
        in environment.json (`training_speed`) and `finetune plan` shows it. Key `loss` ('plain',
        'chunked', 'liger': a causal LM's loss that never holds all the logits) with `loss_why`, which
        the plan's memory estimate follows; `compile` (bool). Empty by default: the library's own."""
        return {}

    def resume_checkpoints(self, checkpoint: Path) -> list[tuple[Path, str, str]]:
        """The checkpoints a run resumed from `checkpoint` loads besides it, as (checkpoint, why it
        is loaded, the setting that avoids loading it): the engine makes each loadable on the new
        number of processes before any starts (`Engine.prepare_checkpoint`). None by default; a
        trainer that ends with its best evaluation's weights names the best checkpoint so far."""
        return []


# -- distributed engines -----------------------------------------------------------------------


@dataclass(frozen=True)
class Sharding:
    """How an engine spreads the model states over processes: the ZeRO stage (0 replicates
    everything; 1 shards the optimizer states, 2 also the gradients, 3 also the weights) and
    where optimizer states and weights are offloaded ("none", "cpu" or "nvme")."""

    zero_stage: int = 0
    offload_optimizer: str = "none"
    offload_params: str = "none"

    @property
    def shards_weights(self) -> bool:
        """Whether no process holds all the weights (stage 3): a whole model is gathered to save it."""
        return self.zero_stage >= 3


class EngineOptions(Options):
    """Options every engine has; an engine's own options subclass it."""

    timeout: int = Field(
        default=600,
        gt=0,
        le=7 * 24 * 3600,
        description="Seconds a process waits in a collective (gradient all-reduce, gather) for the others "
        "before the run fails naming its rank and step, instead of hanging (PyTorch's default is 30 minutes).",
    )


def _is_main() -> bool:
    """Rank 0 (torchrun and DeepSpeed's launcher set RANK in every worker; one process is rank 0)."""
    return os.environ.get("RANK", "0") == "0"


class Engine(Component):
    """How training spreads over processes and devices (`[distributed] engine = ...`).

    The core launches one process per device (`finetune run --nproc N`) and runs the same steps in
    each; at every point where spreading the work matters it asks the engine, never which engine it
    is. In the order of a run:

    - launch, in the `finetune` process, before any worker starts: `needs_launcher`,
      `launch_environment()`, `check_launch(world_size)`;
    - resume, in the same process (node 0's): `checkpoint_world_size(checkpoint)`,
      `prepare_checkpoint(...)` for the checkpoint resumed from and each one the trainer loads besides
      it (`Trainer.resume_checkpoints`);
    - build, on every rank: the model is created inside `building(model, trainer)`;
    - train: the trainer asks `trainer_settings(framework, checkpoint)` (`TrainJob.engine`);
    - after training, on every rank: `whole_model(model)` around the model audits, and
      `save_model(...)` for the final model (and the random-init base an adapter keeps).

    Every method has a default that suits an engine whose processes each hold the whole model (DDP).
    Options subclass `EngineOptions` (adds `timeout`)."""

    kind = "engine"
    Options = EngineOptions
    # Whether a run on one process is started through the launcher too, in a worker process with
    # torchrun's environment, rather than trained in the `finetune` process itself.
    needs_launcher: ClassVar[bool] = True
    # The trainer frameworks (`Trainer.framework`) this engine gives settings to; None: any trainer,
    # the engine asking nothing of it but to run once per process. A recipe pairing a trainer with
    # an engine that cannot set it up is a recipe error at `[distributed] engine`.
    frameworks: ClassVar[tuple[str, ...] | None] = None
    # Whether the engine holds the weights in the training precision (16-bit under mixed precision)
    # with fp32 master copies in the optimizer states, instead of the trainer autocasting the model's
    # own weights: what `finetune plan` counts.
    casts_weights: ClassVar[bool] = False

    @classmethod
    def trains_with(cls, trainer: type[Trainer]) -> bool:
        """Whether a trainer of this class can train under this engine."""
        return cls.frameworks is None or trainer.framework in cls.frameworks

    def collective_timeout(self) -> int:
        """Seconds a collective may wait for the other processes (process group and trainer)."""
        return self.options.timeout

    def sharding(self) -> Sharding:
        """How model states are sharded, for memory estimates and checks."""
        return Sharding()

    # -- launch: in the `finetune` process, before any worker starts ------------------------------
    def launch_environment(self) -> dict[str, str]:
        """Environment variables the engine's library needs from its first import on: set in the
        launching process (where the user has not set them) before `check_launch`, and inherited
        by every worker."""
        return {}

    def check_launch(self, world_size: int) -> None:
        """Checks that need the launch (imports allowed): raise FinetuneError before any process
        starts. Called once, in the launching process."""

    # -- resume: in node 0's `finetune` process, before any worker starts --------------------------
    def checkpoint_world_size(self, checkpoint: Path) -> int | None:
        """How many processes wrote `checkpoint`, read from the engine's own files, for a checkpoint
        whose manifest does not record it (one written before manifests did); None: they do not say."""
        return None

    def prepare_checkpoint(
        self, checkpoint: Path, world_size: int, say: Callable[[str], None], why: str = "", instead: str = ""
    ) -> bool:
        """Make `checkpoint` loadable by a run on `world_size` processes (it may have been written by
        another number); True when it will be loaded other than as written (converted), which
        `environment.json` records. `why` says why a checkpoint other than the one resumed from is
        needed and `instead` the setting that avoids it (`Trainer.resume_checkpoints`), for what is
        printed (`say`) and for the hint of a FinetuneError when it cannot be made loadable. By
        default nothing: every process's checkpoint holds whole states, which any number loads."""
        return False

    # -- build and train: on every rank ----------------------------------------------------------
    def building(self, model: Model, trainer: Trainer) -> AbstractContextManager:
        """The context the core builds `model`'s model in (`Model.build`, or a saved base loaded
        again). An engine that partitions the weights as they are created sets that up here; what it
        registers for the model may stay after the context (until the trainer sets up its own).
        `trainer`'s options say how training will run (precision, batch sizes)."""
        return nullcontext()

    def trainer_settings(self, framework: str, checkpoint: Path | None) -> dict[str, Any]:
        """What a trainer built on `framework` (one of `frameworks`) passes to it to train under this
        engine and load `checkpoint` (the one resumed from, the best one at the end; None: no
        checkpoint) on this run's processes: for "transformers", keyword arguments of its
        `TrainingArguments`. Raise FinetuneError when `checkpoint` cannot be loaded here."""
        return {}

    # -- after training: on every rank -----------------------------------------------------------
    def whole_model(self, model: PreTrainedModel) -> AbstractContextManager:
        """A context in which `model` holds all its weights on this process (the model audits run
        in it). Every rank enters it. An engine that shards the weights gathers them."""
        return nullcontext()

    def save_model(
        self,
        model: PreTrainedModel,
        strategy: Strategy | None,
        directory: Path,
        write_rest: Callable[[Path], None],
        publish: Callable[[Path, Callable[[Path], None]], Any],
    ) -> None:
        """Save `model` into `directory`, as `strategy.save` writes it (None: the whole model, as
        `save_pretrained` writes it), and `write_rest(folder)` beside it. Every rank calls this;
        `publish(directory, write)` runs `write(folder)` into a new folder that becomes `directory`
        once complete, and is called once, on one rank. An engine that shards the weights gathers
        them first (`save` never has to know about sharding)."""
        if not _is_main():
            return

        def write(folder: Path) -> None:
            if strategy is None:
                model.save_pretrained(folder)
            else:
                strategy.save(model, folder)
            write_rest(folder)

        publish(directory, write)
