"""finetune-runner: a plugin-based, declarative runner for fine-tuning language models.

The public API for plugin authors is what this module exports: the hook markers, the component
kinds with their option base classes, and the error types. Importing it does not import torch.
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
from runner.errors import DataError, FinetuneError, RecipeError, TrainingDiverged
from runner.hookspecs import hookimpl
from runner.options import (
    DirPath,
    FilePath,
    Fraction,
    HubOrPath,
    NonNegativeFloat,
    Options,
    PositiveFloat,
)

__all__ = [
    "GROUP_COLUMN",
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
    "FilePath",
    "FinetuneError",
    "HubOrPath",
    "Fraction",
    "Metric",
    "Model",
    "ModelSpec",
    "NonNegativeFloat",
    "Options",
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
    "TrainingDiverged",
    "Trainer",
    "hookimpl",
]
