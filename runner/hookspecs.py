"""The hooks a plugin implements. Project name and entry-point group: `finetune`.

Registration hooks receive a `register` callable and call it once per component class:

    from runner import hookimpl

    @hookimpl
    def register_strategies(register):
        register(MyStrategy)

Components do the work; hooks only make them known. Lifecycle hooks are called once per run or
per evaluation, never per training step, so a plugin cannot slow the training loop down.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("finetune")
hookimpl = pluggy.HookimplMarker("finetune")

Register = Callable[[type], None]


@hookspec
def register_data_sources(register: Register) -> None:
    """Register `runner.DataSource` subclasses: where rows come from (`[[data.sources]] type = ...`)."""


@hookspec
def register_tokenizers(register: Register) -> None:
    """Register `runner.Tokenizer` subclasses: how tokenizers are obtained (`[tokenizer] type = ...`)."""


@hookspec
def register_models(register: Register) -> None:
    """Register `runner.Model` subclasses: how the model to fine-tune is built (`[model] type = ...`)."""


@hookspec
def register_tasks(register: Register) -> None:
    """Register `runner.Task` subclasses: what is learned from the rows (`[task] type = ...`)."""


@hookspec
def register_strategies(register: Register) -> None:
    """Register `runner.Strategy` subclasses: which parameters train (`[strategy] type = ...`)."""


@hookspec
def register_trainers(register: Register) -> None:
    """Register `runner.Trainer` subclasses: the training loop (`[training] type = ...`)."""


@hookspec
def register_objectives(register: Register) -> None:
    """Register `runner.PairObjective` subclasses: preference losses computed from each pair's
    log-probabilities, for the trainers that take one (`[objective] type = ...`)."""


@hookspec
def register_rewards(register: Register) -> None:
    """Register `runner.Reward` subclasses: scores of sampled answers, for the trainers that learn
    from rewards (`[[rewards]] type = ...`, trainer `grpo`)."""


@hookspec
def register_extractors(register: Register) -> None:
    """Register `runner.AnswerExtractor` subclasses: how a reward finds the final answer in a completion
    (`[[rewards]] type = "answer_match"`, `extract = ...`)."""


@hookspec
def register_engines(register: Register) -> None:
    """Register `runner.Engine` subclasses: how training spreads over processes
    (`[distributed] engine = ...`)."""


@hookspec
def register_metrics(register: Register) -> None:
    """Register `runner.Metric` subclasses: evaluation scores (`[[metrics]] type = ...`)."""


@hookspec
def register_reporters(register: Register) -> None:
    """Register `runner.Reporter` subclasses: progress display (`[[reporters]] type = ...`)."""


@hookspec
def register_audits(register: Register) -> None:
    """Register `runner.Audit` subclasses: checks of data and models (`[[audits]] type = ...`)."""


@hookspec
def register_recipes(register: Callable[..., None]) -> None:
    """Register recipes: `register(folder_or_file, ...)` with folders (every `*.toml` below them,
    named by their path inside the folder without `.toml`: `llm/chat-base`) or single `.toml` files
    (named by their stem).

    The recipes form a pack named after the plugin's distribution (and its version), listed by
    `finetune recipes` and extended as `extends = "<distribution>:<recipe name>"`. Only paths are
    recorded here; no recipe is read until it is listed or extended."""


@hookspec
def on_run_start(run: dict[str, Any]) -> None:
    """A run begins. `run` holds its name, directory, seed and resolved recipe (a dict).

    Called once, before data is loaded. Not called by `finetune validate` or `plan`."""


@hookspec
def on_evaluation(run: dict[str, Any], split: str, step: int | None, metrics: dict[str, float]) -> None:
    """An evaluation finished: on `split` ("validation", "test") at optimizer `step`, or after
    training when `step` is None. `metrics` maps names to values."""


@hookspec
def on_run_end(run: dict[str, Any], status: str, metrics: dict[str, Any]) -> None:
    """A run ended with `status` "completed", "interrupted" or "failed". `metrics` holds the final
    metrics per split (empty unless completed)."""
