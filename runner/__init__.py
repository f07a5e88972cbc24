"""finetune-runner: a plugin-based, declarative runner for fine-tuning language models.

For running recipes from Python (docs/python-api.md): `load_recipe`, `plan`, `run`, `resume`,
`open_run` and what they return (`Recipe`, `Plan`, `RunOutcome`, `FinishedRun`), the same front
door (runner/running) the command line goes through.

The public API for plugin authors is what this module exports (and `runner.testing`, the kit for
their tests): the hook marker, the component kinds with their option base classes, the error
types, and the helpers the built-in plugins use themselves: collators, model helpers, Hub access,
recipe key paths (`key_paths`, spelled as `--set` takes them), and, for trainers and engines, the
process-group and checkpoint calls. Everything else under `runner/` is the core's own and may
change. Importing this module does not import torch.
"""

__version__ = "0.1.0"

from runner.components import (
    GROUP_COLUMN,
    AnswerExtractor,
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
    PairLogProbs,
    PairObjective,
    RawSplit,
    Reporter,
    Reward,
    RewardOptions,
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
from runner.errors import DataError, FinetuneError, RecipeError, TrainingDiverged, clip
from runner.hookspecs import hookimpl
from runner.options import (
    MAX_BATCH,
    MAX_STEPS,
    ComponentOf,
    DirPath,
    FilePath,
    Fraction,
    HubOrPath,
    NonNegativeFloat,
    Options,
    PositiveFloat,
)
from runner.recipe.keys import key_paths
from runner.storage.checkpoints import MANIFEST as CHECKPOINT_MANIFEST
from runner.storage.checkpoints import is_complete as checkpoint_is_complete
from runner.storage.checkpoints import latest_complete as latest_checkpoint
from runner.storage.checkpoints import mark_complete as mark_checkpoint_complete
from runner.storage.checkpoints import rotate as rotate_checkpoints
from runner.storage.checkpoints import step_of as checkpoint_step
from runner.storage.checkpoints import written_by as checkpoint_written_by
from runner.toolkit.collate import PackedCollator, PadCollator
from runner.toolkit.hub import hub_load_error, is_offline
from runner.toolkit.modeling import auto_class, position_limit, token_losses
from runner.toolkit.varlen_attention import problems as varlen_attention_problems
from runner.toolkit.varlen_attention import register as register_varlen_attention

# The Python API of the front door (runner/running, docs/python-api.md), and `create_component` (it needs
# the plugin manager): loaded when first used, so that importing runner (every plugin does, and
# `finetune --help`) stays as light as before.
FRONT_DOOR = {
    "FinishedRun": "runner.running.finished",
    "InProcess": "runner.running.starting",
    "Launch": "runner.distributed.launch",
    "Plan": "runner.running.planning",
    "Recipe": "runner.recipe.resolved",
    "create_component": "runner.plugins.manager",
    "RunOutcome": "runner.running.starting",
    "load_recipe": "runner.running.recipes",
    "open_run": "runner.running.finished",
    "plan": "runner.running.planning",
    "resume": "runner.running.starting",
    "run": "runner.running.starting",
}


def __getattr__(name: str):
    module = FRONT_DOOR.get(name)
    if module is None:
        raise AttributeError(f"module 'runner' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    *FRONT_DOOR,
    "AnswerExtractor",
    "Audit",
    "AuditData",
    "AuditOptions",
    "AuditResult",
    "AuditSubject",
    "CHECKPOINT_MANIFEST",
    "Component",
    "ComponentOf",
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
    "PairLogProbs",
    "PairObjective",
    "PackedCollator",
    "PadCollator",
    "PeerFailed",
    "PositiveFloat",
    "RawSplit",
    "RecipeError",
    "Reporter",
    "Reward",
    "RewardOptions",
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
    "checkpoint_is_complete",
    "checkpoint_step",
    "checkpoint_written_by",
    "clip",
    "hookimpl",
    "hub_load_error",
    "is_offline",
    "key_paths",
    "latest_checkpoint",
    "mark_checkpoint_complete",
    "position_limit",
    "register_varlen_attention",
    "rotate_checkpoints",
    "sha256_file",
    "token_losses",
    "varlen_attention_problems",
    "world_size",
]
