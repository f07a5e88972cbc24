"""Running a recipe: data, tokenizer, model, strategy, training, evaluation, saving.

`execute` runs (or resumes) one run in its run directory. Each step is done by the component the
recipe names; this module only wires them together and keeps the run directory truthful: the
status says what happened, the final model appears only when complete, a resume continues from
the last complete checkpoint and refuses data that changed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner import checkpoints
from runner.components import RunContext, TrainJob
from runner.data import prepare_data
from runner.encoding import default_cache_dir, encode_splits
from runner.environment import describe
from runner.errors import FinetuneError, RunInterrupted
from runner.events import Events
from runner.modeling import count_parameters, describe_parameters, ensure_pad_token
from runner.plugin_manager import Plugins
from runner.recipe.resolved import Recipe
from runner.rundir import RunDir, publish_dir, read_json, write_json
from runner.signals import graceful_stop

MODEL_META = "finetune.json"
BASE_MODEL = "base_model"
TOKENIZER = "tokenizer"


@dataclass
class RunResult:
    run_dir: RunDir
    metrics: dict[str, Any]
    global_step: int
    model: Any = None  # the trained model, as it was saved
    tokenizer: Any = None


def quiet_libraries(debug: bool) -> None:
    """Library chatter (progress bars, info logs) would drown the reporter; --debug brings it back."""
    import datasets
    import transformers

    if debug:
        transformers.logging.set_verbosity_info()
        return
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    logging.getLogger("accelerate").setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def plugin_versions(plugins: Plugins) -> dict[str, str]:
    return {
        name: f"{info.version} ({info.source})" for name, info in plugins.registry.plugins.items() if not info.error
    }


class MetricsComputer:
    """`compute_metrics` for a trainer: task outputs -> metric components -> one dict."""

    def __init__(self, task, metrics):
        self.task, self.metrics = task, metrics

    def __call__(self, eval_prediction) -> dict[str, float]:
        predictions, references = self.task.metric_inputs(eval_prediction.predictions, eval_prediction.label_ids)
        out: dict[str, float] = {}
        for metric in self.metrics:
            out.update(metric.compute(predictions, references))
        return out


def resolve_max_length(recipe: Recipe, tokenizer, model_component) -> int:
    explicit = recipe.tokenizer.options.max_length
    if explicit:
        return explicit
    limits = [model_component.max_positions()]
    if tokenizer.model_max_length and tokenizer.model_max_length < 1_000_000:
        limits.append(tokenizer.model_max_length)
    known = [x for x in limits if x]
    return min(known) if known else 512


def check_positions(model, max_length: int) -> None:
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) if config is not None else None
    if isinstance(limit, int) and max_length > limit:
        raise FinetuneError(
            f"tokenizer.max_length = {max_length} exceeds the model's {limit} positions",
            hint=f"set tokenizer.max_length <= {limit}",
        )


def _fingerprints_changed(old: list[dict], new: list[dict]) -> str | None:
    if old == new:
        return None
    for i, (a, b) in enumerate(zip(old, new, strict=False)):
        if a != b:
            return f"data.sources[{i}] ({a.get('source')}) no longer matches what the run started with"
    return "the number of data sources changed"


def execute(
    recipe: Recipe,
    run_dir: RunDir,
    plugins: Plugins,
    *,
    trust_remote_code: bool = False,
    resume_from: Path | None = None,
    force: bool = False,
    debug: bool = False,
) -> RunResult:
    """Run `recipe` in `run_dir`, from scratch or from the checkpoint `resume_from`."""
    resolved = recipe.resolved()
    run_info = {
        "name": recipe.name,
        "run_dir": str(run_dir.path),
        "seed": recipe.run.seed,
        "recipe": resolved,
    }
    reporters = [spec.create() for spec in recipe.reporters]
    events = Events(reporters, run_dir, plugins.hook, run_info)
    if resume_from is None:
        run_dir.write_recipe(resolved)
    run_dir.set_status("running", pid=os.getpid(), started=time.strftime("%Y-%m-%dT%H:%M:%S"))
    plugins.hook.on_run_start(run=run_info)
    events.start(run_info)
    status, final = "failed", {}
    try:
        result = _pipeline(recipe, run_dir, plugins, events, trust_remote_code, resume_from, force, debug)
        status, final = "completed", result.metrics
        return result
    except RunInterrupted:
        status = "interrupted"
        raise
    except KeyboardInterrupt:
        status = "interrupted"
        run_dir.set_status("interrupted")
        raise RunInterrupted(
            "interrupted before training saved a checkpoint",
            hint=f"finetune resume {run_dir.path} starts it again",
        ) from None
    except BaseException as exc:
        run_dir.set_status("failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        events.finish(status, {"name": recipe.name, "metrics": final, "run_dir": str(run_dir.path),
                               "model_dir": str(run_dir.model) if status == "completed" else None})  # fmt: skip
        plugins.hook.on_run_end(run=run_info, status=status, metrics=final)


def _pipeline(recipe, run_dir, plugins, events, trust_remote_code, resume_from, force, debug) -> RunResult:
    import torch
    from transformers import set_seed

    quiet_libraries(debug)
    if recipe.run.threads:
        torch.set_num_threads(recipe.run.threads)
    seed = recipe.run.seed
    set_seed(seed)
    ctx = RunContext(
        seed=seed,
        cache_dir=default_cache_dir(),
        run_dir=run_dir.path,
        trust_remote_code=trust_remote_code,
        offline=os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"),
        info=events.info,
        warn=events.warn,
    )

    events.stage("loading data")
    task = recipe.task.create()
    data = prepare_data(recipe, task, ctx)
    for note in data.notes:
        events.info(note)
    events.info("rows: " + ", ".join(f"{k} {v}" for k, v in data.sizes().items()))
    environment_path = run_dir.environment
    recipe_sha256 = hashlib.sha256(run_dir.recipe.read_bytes()).hexdigest()
    if resume_from is not None and environment_path.is_file() and not force:
        started = read_json(environment_path)
        changed = _fingerprints_changed(started.get("data", []), data.fingerprints)
        if changed:
            raise FinetuneError(f"cannot resume: {changed}", hint="pass --force to resume with the new data anyway")
        if started.get("recipe_sha256") != recipe_sha256:
            raise FinetuneError(
                f"cannot resume: {run_dir.recipe} changed since the run started",
                hint="pass --force to resume with the edited recipe anyway",
            )

    events.stage("preparing the tokenizer")
    model_component = recipe.model.create()
    tokenizer_dir = run_dir.path / TOKENIZER
    if tokenizer_dir.is_dir():
        # A resumed run uses the tokenizer it started with, never a re-trained or re-downloaded one.
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        max_length = tokenizer.model_max_length
    else:
        texts = data.splits["train"]
        tokenizer = recipe.tokenizer.create().build(
            ctx, lambda: (t for col in ("text", "text_pair") if col in texts.column_names for t in texts[col])
        )
        note = ensure_pad_token(tokenizer)
        if note:
            events.info(note)
        max_length = resolve_max_length(recipe, tokenizer, model_component)
        tokenizer.model_max_length = max_length
        tmp = run_dir.path / f".{TOKENIZER}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tokenizer.save_pretrained(tmp)
        publish_dir(tmp, tokenizer_dir)

    events.stage("tokenizing")
    encoded, cached = encode_splits(task, tokenizer, data.splits, max_length, ctx.cache_dir)
    if any(cached.values()):
        events.info("encoded splits read from the cache: " + ", ".join(k for k, v in cached.items() if v))

    events.stage("building the model")
    spec = task.model_spec(tokenizer, max_length)
    strategy = recipe.strategy.create()
    set_seed(seed)  # initialisation does not depend on how much randomness data preparation used
    base_dir = run_dir.path / BASE_MODEL
    if base_dir.is_dir():
        from runner.modeling import auto_class

        model = auto_class(spec.head).from_pretrained(base_dir)
    else:
        model = model_component.build(ctx, spec)
    check_positions(model, max_length)
    if strategy.saves_adapter() and model_component.base_reference() is None:
        # A random-init base exists only in this run: keep it, so the adapter can be loaded.
        if not base_dir.is_dir():
            tmp = run_dir.path / f".{BASE_MODEL}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            publish_dir(tmp, base_dir)
        model.name_or_path = str(base_dir)  # peft records this as the adapter's base model
    model = strategy.apply(model, ctx, spec)
    parameters = count_parameters(model)
    events.info(f"{recipe.strategy.name}: {describe_parameters(parameters)}")

    if resume_from is None or not environment_path.is_file():
        env = describe(recipe.source.base_dir, plugin_versions(plugins))
        env.update(
            seed=seed,
            data=data.fingerprints,
            split_sizes=data.sizes(),
            recipe_sha256=recipe_sha256,
            max_length=max_length,
            parameters=parameters,
        )
        write_json(environment_path, env)

    metrics = [spec_.create() for spec_ in recipe.metrics]
    for metric in metrics:
        metric.prepare(ctx)
    trainer = recipe.training.create()
    pad_to = max_length if recipe.tokenizer.options.padding == "max_length" else None
    job = TrainJob(
        model=model,
        tokenizer=tokenizer,
        task=task,
        train=encoded["train"],
        evaluation=encoded.get("validation"),
        collator=task.collator(tokenizer, pad_to),
        compute_metrics=MetricsComputer(task, metrics),
        checkpoint_dir=run_dir.checkpoints,
        seed=seed,
        events=events,
        resume_from=resume_from,
        deterministic=recipe.run.deterministic,
        greater_is_better={m.key(): m.greater_is_better for m in metrics},
    )

    events.stage("training")
    with graceful_stop(events.warn) as stop:
        job.stop_requested = stop.is_set
        outcome = trainer.fit(job)
    if outcome.interrupted:
        last = checkpoints.latest_complete(run_dir.checkpoints)
        run_dir.set_status("interrupted", global_step=outcome.global_step, checkpoint=str(last) if last else None)
        raise RunInterrupted(
            f"interrupted at step {outcome.global_step}; checkpoint saved: {last}",
            hint=f"continue with: finetune resume {run_dir.path}",
        )

    events.stage("evaluating")
    final: dict[str, Any] = {"train": {"global_step": outcome.global_step, **outcome.metrics}}
    for split in ("validation", "test"):
        if split in encoded:
            final[split] = trainer.evaluate(job, encoded[split])
            events.evaluated(split, None, final[split], final=True)

    events.stage("saving the model")
    model_dir = save_model(run_dir, model, tokenizer, task, strategy, spec, recipe, model_component, base_dir)
    write_json(run_dir.metrics, final)
    run_dir.set_status("completed", global_step=outcome.global_step, finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    events.info(f"model saved to {model_dir}")
    return RunResult(run_dir, final, outcome.global_step, model=model, tokenizer=tokenizer)


def save_model(run_dir, model, tokenizer, task, strategy, spec, recipe, model_component, base_dir) -> Path:
    """Write the final model to a temporary directory, then rename it into place."""
    tmp = run_dir.path / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    strategy.save(model, tmp)
    tokenizer.save_pretrained(tmp)
    base = model_component.base_reference() or (str(base_dir) if base_dir.is_dir() else None)
    meta = {
        "task": recipe.task.name,
        "task_state": task.state(),
        "head": spec.head,
        "strategy": recipe.strategy.name,
        "adapter": strategy.saves_adapter(),
        "base_model": base,
        "max_length": spec.max_length,
        "recipe": recipe.name,
    }
    write_json(tmp / MODEL_META, meta)
    publish_dir(tmp, run_dir.model)
    return run_dir.model
