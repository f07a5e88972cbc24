"""finetune-runner: a plugin-based, declarative runner for fine-tuning language models.

The public API for plugin authors is what this module exports (and `runner.testing`, the kit for
their tests): the hook marker, the component kinds with their option base classes, the error
types, and the helpers the built-in plugins use themselves: collators, model helpers, Hub access,
and, for trainers, the process-group and checkpoint calls. Everything else under `runner/` is the
core's own and may change. Importing this module does not import torch.
"""

__version__ = "0.1.0"

from runner.components import (
    GROUP_COLUMN,
    Audit,
    AuditData,
    AuditOptions,
    AuditResult,
    AuditSubject,
    Component,
    DataSource,
    DataSourceOptions,
    Engine,
    EngineOptions,
    Metric,
    Model,
    ModelSpec,
    RawSplit,
    Reporter,
    RunContext,
    Sharding,
    Strategy,
    Task,
    Tokenizer,
    TokenizerOptions,
    Trainer,
    TrainJob,
    TrainOutcome,
)
from runner.components.data import sha256_file
from runner.distributed.process_group import PeerFailed, any_rank, barrier, world_size
from runner.distributed.universal import shard_count as zero_shard_count
from runner.errors import DataError, FinetuneError, RecipeError, TrainingDiverged, clip
from runner.hookspecs import hookimpl
from runner.options import (
    MAX_BATCH,
    MAX_STEPS,
    DirPath,
    FilePath,
    Fraction,
    HubOrPath,
    NonNegativeFloat,
    Options,
    PositiveFloat,
)
from runner.storage.checkpoints import latest_complete as latest_checkpoint
from runner.storage.checkpoints import mark_complete as mark_checkpoint_complete
from runner.storage.checkpoints import rotate as rotate_checkpoints
from runner.toolkit.collate import PackedCollator, PadCollator
from runner.toolkit.hub import hub_load_error, is_offline
from runner.toolkit.modeling import auto_class, token_losses

__all__ = [
    "Audit",
    "AuditData",
    "AuditOptions",
    "AuditResult",
    "AuditSubject",
    "Component",
    "DataError",
    "DataSource",
    "DataSourceOptions",
    "DirPath",
    "Engine",
    "EngineOptions",
    "FilePath",
    "FinetuneError",
    "Fraction",
    "GROUP_COLUMN",
    "HubOrPath",
    "MAX_BATCH",
    "MAX_STEPS",
    "Metric",
    "Model",
    "ModelSpec",
    "NonNegativeFloat",
    "Options",
    "PackedCollator",
    "PadCollator",
    "PeerFailed",
    "PositiveFloat",
    "RawSplit",
    "RecipeError",
    "Reporter",
    "RunContext",
    "Sharding",
    "Strategy",
    "Task",
    "Tokenizer",
    "TokenizerOptions",
    "TrainJob",
    "TrainOutcome",
    "Trainer",
    "TrainingDiverged",
    "any_rank",
    "auto_class",
    "barrier",
    "clip",
    "hookimpl",
    "hub_load_error",
    "is_offline",
    "latest_checkpoint",
    "mark_checkpoint_complete",
    "rotate_checkpoints",
    "sha256_file",
    "token_losses",
    "world_size",
    "zero_shard_count",
]
