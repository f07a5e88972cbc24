"""The component kinds a plugin can register, and what each must do (one module per group of kinds).

A recipe names a component with `type = "<name>"` in the section of its kind. A component is a
class with a `name`, an `Options` model (see `runner.options`) and the methods of its kind below.
Plugins register classes through the hooks in `runner.hookspecs`; the core instantiates them with
their validated options and calls these methods. Nothing here imports torch: a plugin module must
keep heavy imports inside its methods, so that `finetune --help` and `finetune validate` stay fast.
"""

from __future__ import annotations

from runner.components.base import SPLITS, Component, RunContext
from runner.components.data import DataSource, DataSourceOptions, RawSplit
from runner.components.evaluation import (
    GROUP_COLUMN,
    Audit,
    AuditData,
    AuditOptions,
    AuditResult,
    AuditSubject,
    Metric,
)
from runner.components.models import Model, ModelSpec, Tokenizer, TokenizerOptions
from runner.components.objectives import PairLogProbs, PairObjective
from runner.components.reporters import Reporter
from runner.components.rewards import AnswerExtractor, Reward, RewardOptions
from runner.components.tasks import Task
from runner.components.training import Engine, EngineOptions, Sharding, Strategy, Trainer, TrainJob, TrainOutcome

KINDS: dict[str, type[Component]] = {
    cls.kind: cls
    for cls in (
        DataSource,
        Tokenizer,
        Model,
        Task,
        Strategy,
        Trainer,
        PairObjective,
        Reward,
        AnswerExtractor,
        Engine,
        Metric,
        Reporter,
        Audit,
    )
}

__all__ = [
    "GROUP_COLUMN",
    "KINDS",
    "AnswerExtractor",
    "SPLITS",
    "Audit",
    "AuditData",
    "AuditOptions",
    "AuditResult",
    "AuditSubject",
    "Component",
    "DataSource",
    "DataSourceOptions",
    "Engine",
    "EngineOptions",
    "Metric",
    "Model",
    "ModelSpec",
    "PairLogProbs",
    "PairObjective",
    "RawSplit",
    "Reporter",
    "Reward",
    "RewardOptions",
    "RunContext",
    "Sharding",
    "Strategy",
    "Task",
    "Tokenizer",
    "TokenizerOptions",
    "Trainer",
    "TrainJob",
    "TrainOutcome",
]
