"""Using a finished run: load its model, evaluate it again, predict with it, export it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from runner.components import RunContext, TrainJob
from runner.errors import FinetuneError
from runner.evaluation.evaluator import Evaluator, MetricsComputer, SplitRows
from runner.pipeline.run import quiet_libraries
from runner.pipeline.steps import BASE_MODEL, MODEL_META
from runner.recipe.resolved import Recipe
from runner.running.recipes import load_recipe
from runner.storage.rundir import RunDir, publish, read_json, write_json
from runner.toolkit.quantized import keep_4bit_layout, merged_dtype


@dataclass
class Finished:
    recipe: Recipe
    task: Any
    tokenizer: Any
    model: Any
    meta: dict[str, Any]
    ctx: RunContext
    base: Any  # () -> the untouched base model, as the run built it
    spec: Any  # the ModelSpec the run built its model for


def load_finished(run_dir: RunDir, debug: bool = False, recipe: Recipe | None = None) -> Finished:
    """The recipe, task, tokenizer and model of a completed run, loaded from its model/ directory.
    `recipe`: the run's recipe as changed by the caller (other audits), instead of the saved one."""
    from transformers import AutoTokenizer

    from runner.pipeline.encoding import default_cache_dir
    from runner.toolkit.modeling import auto_class, read_last_real_token

    meta_path = run_dir.model / MODEL_META
    if not meta_path.is_file():
        state = run_dir.status().get("state", "unknown")
        raise FinetuneError(
            f"{run_dir.path} has no final model (run state: {state})",
            hint=f"finish it with: finetune resume {run_dir.path}" if state != "completed" else None,
        )
    recipe = recipe or load_recipe(run_dir.recipe)
    quiet_libraries(debug, recipe)
    meta = read_json(meta_path)
    ctx = RunContext(seed=recipe.run.seed, cache_dir=default_cache_dir(), run_dir=run_dir.path)
    task = recipe.task.create()
    task.restore(meta["task_state"])
    tokenizer = AutoTokenizer.from_pretrained(run_dir.model)
    spec = recipe.training.create().model_spec(task.model_spec(tokenizer, meta["max_length"]))
    strategy = recipe.strategy.create()

    def base():
        base_dir = run_dir.path / BASE_MODEL
        if base_dir.is_dir():
            return keep_4bit_layout(auto_class(spec.head).from_pretrained(base_dir))
        from transformers import set_seed

        set_seed(recipe.run.seed)  # a model built from a config gets the weights the run started from
        return keep_4bit_layout(recipe.model.create().build(ctx, spec))

    # 4-bit layers compute as in training, whatever the CPU (see runner/toolkit/quantized.py).
    model = read_last_real_token(keep_4bit_layout(strategy.load(run_dir.model, spec, base)))
    return Finished(recipe, task, tokenizer, model, meta, ctx, base, spec)


class Reevaluation(NamedTuple):
    metrics: dict[str, float]
    rows: int  # of the split
    name: str  # the run's recipe


def evaluate_run(run_dir: RunDir, split: str, debug: bool = False) -> Reevaluation:
    """The run's model evaluated again on `split` (saved under evaluations/)."""
    from runner.pipeline.data import prepare_data
    from runner.pipeline.encoding import encode_sources

    done = load_finished(run_dir, debug)
    recipe, task = done.recipe, done.task
    data = prepare_data(recipe, recipe.task.create(), done.ctx)  # the same rows, splits and labels as the run
    if not data.parts(split):
        raise FinetuneError(f"the run has no {split} split", hint=f"splits: {', '.join(data.sizes())}")
    encoded = encode_sources(
        data, done.tokenizer, done.meta["max_length"], done.ctx.cache_dir, recipe.run.seed, splits=[split]
    ).splits
    metrics = [spec.create() for spec in recipe.metrics]
    for metric in metrics:
        metric.prepare(done.ctx)
    trainer = recipe.training.create()
    job = TrainJob(
        model=done.model,
        tokenizer=done.tokenizer,
        task=task,
        train=None,
        evaluation=encoded[split],
        collator=task.collator(done.tokenizer, None),
        compute_metrics=MetricsComputer(task, metrics),
        checkpoint_dir=run_dir.path / ".eval",
        seed=recipe.run.seed,
        events=None,
    )
    result = trainer.evaluate(job, encoded[split])
    rewards = [spec.create() for spec in recipe.rewards]
    for reward in rewards:
        reward.prepare(done.ctx)
    evaluator = Evaluator(
        options=recipe.evaluation,
        trainer=trainer,
        task=task,
        tokenizer=done.tokenizer,
        max_length=done.meta["max_length"],
        metrics=metrics,
        collator=job.collator,
        splits={split: SplitRows([(s.task, s.splits[split]) for s in data.parts(split)], encoded[split])},
        train_rows=None,
        seed=recipe.run.seed,
        events=None,
        checkpoint_dir=job.checkpoint_dir,
        rewards=rewards,
    )
    try:  # the answers' own scores, as the run's final evaluation has them
        result.update(evaluator.answer_scores(done.model, split))
    finally:
        for reward in rewards:
            reward.close()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    write_json(run_dir.path / "evaluations" / f"{split}-{stamp}.json", result)
    return Reevaluation(result, len(encoded[split]), recipe.name)


def predict_run(run_dir: RunDir, texts: list[str], debug: bool = False, **generation) -> list[dict]:
    if not texts:
        raise FinetuneError("no texts to predict")
    done = load_finished(run_dir, debug)
    if done.task.head and done.spec.head != done.task.head:  # the trainer made another model (`Trainer.model_spec`)
        raise FinetuneError(
            f"run {run_dir.path} trained a {done.spec.head} model (training.type = '{done.recipe.training.name}'), "
            f"not the {done.task.head} model task '{done.recipe.task.name}' predicts with",
            hint="load it in Python: runner.open_run(RUN).load().model, or transformers' Auto class of that head "
            "from RUN/model",
        )
    if generation and done.task.produces != "tokens" and not done.task.generates:
        raise FinetuneError(f"task '{done.recipe.task.name}' does not generate text; use finetune predict")
    return done.task.predict(done.model, done.tokenizer, texts, done.meta["max_length"], **generation)


def export_run(run_dir: RunDir, merge: bool, output: Path | None, debug: bool = False) -> Path:
    """Write the run's model as a standalone directory; with `merge`, adapters folded into the base."""
    done = load_finished(run_dir, debug)
    strategy = done.recipe.strategy.create()
    model = done.model
    if merge and getattr(model, "is_quantized", False):
        # Merged into 4- or 8-bit weights, an update would be rounded away. The adapter goes instead into
        # the base's weights dequantized to the compute dtype (4 bits): exactly the weights every matmul
        # of training used, so the merged model computes what the adapted one does (up to rounding).
        # The rest of the model is cast to it too: one dtype, 2 bytes a weight with bfloat16. An 8-bit
        # base (no compute dtype) dequantizes to its own dtype.
        def dequantized():
            base = done.base()
            dtype = merged_dtype(base)
            base.dequantize(dtype=dtype)
            return base if dtype is None else base.to(dtype)

        model = strategy.load(run_dir.model, done.spec, dequantized)
    model = strategy.merge(model) if merge else model
    final = output or run_dir.path / ("merged" if merge else "export")
    meta = {**done.meta, "exported_from": str(run_dir.path)}
    if merge and done.meta.get("adapter"):
        meta.update(adapter=False, merged_from=done.meta["strategy"])

    def write(directory: Path) -> None:
        model.save_pretrained(directory)
        done.tokenizer.save_pretrained(directory)
        write_json(directory / MODEL_META, meta)

    return publish(final, write)
