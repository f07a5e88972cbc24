"""Model `run`: start a recipe from the final model of an earlier run (SFT, then DPO from it).

`path` names a run directory, or a folder of them (a recipe's output folder, `runs/<name>`), in
which case the newest completed run is taken. A full model is loaded as the run saved it; an
adapter run (LoRA, ...) is merged into its base first, into the run's `merged/` folder, where
`finetune export --merge` writes it too, and later recipes reuse it. Either way the new recipe
starts from plain weights, and its own strategy decides what trains.

The path is relative to the working directory, like `run.output_dir` (runs are written there),
and is not required to exist at validation: the run is often made by the step before. A path that
exists but holds no completed run is a recipe error at validation; one that does not exist is an
error when the run starts, before anything trains.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import Field

from plugins.models._loading import Loading, LoadingOptions, check_loading
from plugins.models.pretrained import DTYPES, Pretrained, PretrainedModelOptions
from runner import FinetuneError, Model, ModelSpec, RunContext, clip, hookimpl, open_run, sha256_file, world_size

MODEL_META = "finetune.json"  # model/'s record: head, strategy, whether it is an adapter
# The `path` option of `[model] type = "run"` and `[tokenizer] type = "run"`.
PATH_HELP = (
    "A completed run directory (runs/<name>/<time>), or a folder of runs (runs/<name>): its newest completed run. "
    "Relative to the working directory, like run.output_dir."
)


def _opened(path: Path):
    """The run directory at `path` as runner.open_run reads it, or None where it is none."""
    try:
        return open_run(path)
    except FinetuneError:
        return None


def _completed(run) -> bool:
    return run.status == "completed" and (run.path / "model" / MODEL_META).is_file()


def _newest_key(run) -> tuple:
    # Run directories are named by their start time: `<date>-<time>`, then `<date>-<time>-1`, ...
    date, _, rest = run.path.name.partition("-")
    time, _, n = rest.partition("-")
    return (run.run_dir.status().get("finished", ""), date, time, int(n) if n.isdigit() else 0)


def find_run(value: str) -> Path:
    """The completed run `value` names: a run directory, or the newest completed run in a folder of
    them. A FinetuneError, naming the path, when there is none."""
    path = Path(os.path.expanduser(value))
    try:
        path = path.resolve()
        exists = path.is_dir()
    except (OSError, ValueError) as exc:
        raise FinetuneError(f"not a usable path: {clip(value)} ({exc})") from exc
    hint = "name a run directory `finetune run` created (runs/<name>/<time>) or the folder of its runs (runs/<name>)"
    if not exists:
        raise FinetuneError(f"no such run directory: {clip(value)} (looked in {Path.cwd()})", hint=hint)
    run = _opened(path)
    if run is not None:
        if not _completed(run):
            state = run.status
            raise FinetuneError(
                f"run {path} did not complete (state: {state}): it has no final model to start from",
                hint=f"finish it first: finetune resume {path}" if state != "completed" else None,
            )
        return path
    runs = [r for r in map(_opened, sorted(p for p in path.iterdir() if p.is_dir())) if r is not None]
    done = [r for r in runs if _completed(r)]
    if not done:
        what = f"{len(runs)} run(s), none completed" if runs else "no run directories"
        raise FinetuneError(f"{path} holds {what}: nothing to start from", hint=hint)
    return max(done, key=_newest_key).path


def check_run_path(value: str):
    """Validation's part: a path that exists must hold a completed run; a missing one is left to the
    run's start (the step before may make it)."""
    try:
        exists = Path(os.path.expanduser(value)).exists()
    except (OSError, ValueError):
        exists = False
    if exists:
        try:
            find_run(value)
        except FinetuneError as exc:
            yield (("path",), f"{exc.message}; {exc.hint}" if exc.hint else exc.message)


def chosen_run(value: str, run_dir: Path | None) -> Path:
    """The run a recipe's `path` names, for the run in `run_dir`: the one its environment.json
    recorded (`model_source`) where there is one — a resume, or a finished run loaded again, takes the
    same weights and tokenizer even when a newer run has completed in the folder since — else `find_run`."""
    try:  # this run's own record (written before the model is built), read as such
        env = json.loads((run_dir / "environment.json").read_text(encoding="utf-8")) if run_dir else {}
    except (OSError, ValueError):
        env = {}
    recorded = env.get("model_source") if isinstance(env, dict) else None
    name = recorded.get("run") if isinstance(recorded, dict) else None
    return find_run(name if isinstance(name, str) else value)


def run_model_meta(run: Path) -> dict[str, Any]:
    return json.loads((run / "model" / MODEL_META).read_text(encoding="utf-8"))


def weights_sha256(directory: Path) -> str:
    """One SHA-256 over the model's weight files (names and bytes): which weights were started from."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(directory.glob("*.safetensors")):
        digest.update(f"{path.name}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


class FromRunModelOptions(LoadingOptions):
    path: str = Field(min_length=1, description=PATH_HELP)
    dtype: DTYPES = Field(
        default="float32", description="Weights dtype; mixed precision training keeps float32 master weights."
    )


class FromRun(Loading, Model):
    """The final model of an earlier run (an adapter run merged into its base) as the starting point."""

    name = "run"
    Options = FromRunModelOptions

    @classmethod
    def check(cls, options, recipe):
        yield from check_loading(options)
        yield from check_run_path(options.path)

    def run(self) -> Path:
        if getattr(self, "_run", None) is None:
            self._run = find_run(self.options.path)
        return self._run

    def weights_dir(self) -> Path:
        """Where the run's final weights load from as a plain transformers model."""
        run = self.run()
        return run / "merged" if run_model_meta(run).get("adapter") else run / "model"

    def build(self, ctx: RunContext, spec: ModelSpec):
        self._run = chosen_run(self.options.path, ctx.run_dir)
        run = self.run()
        meta = run_model_meta(run)
        if meta.get("head") != spec.head:
            raise FinetuneError(
                f"run {run} trained a {meta.get('head')} model (task '{meta.get('task')}'); "
                f"this recipe's task needs a {spec.head} model",
                hint="start from a run whose task makes the same kind of model (a language model for "
                "instruction, causal_lm or preference tasks)",
            )
        weights = self.weights_dir()
        if meta.get("adapter") and not (weights / MODEL_META).is_file():
            if world_size() > 1:  # every process would write the same folder
                raise FinetuneError(
                    f"run {run} trained an adapter, not merged into its base yet; with several processes, "
                    "merge it first",
                    hint=f"finetune export {run} --merge",
                )
            ctx.info(f"merging the adapter of {run} into its base, once: {weights}")
            open_run(run).export(merge=True, output=weights)
        ctx.info(f"starting from run {run} ({'merged adapter' if meta.get('adapter') else 'full model'}: {weights})")
        options = self.options
        pretrained = PretrainedModelOptions(
            path=str(weights),
            dtype=options.dtype,
            quantization=options.quantization,
            attn_implementation=options.attn_implementation,
        )
        model = Pretrained(pretrained).build(ctx, spec)
        model.name_or_path = str(weights)  # an adapter trained on it names these weights as its base
        return model

    def build_empty(self, ctx: RunContext, spec: ModelSpec):
        # For `finetune plan`: the merged model's shape is its base's, when it is not merged yet.
        weights, meta = self.weights_dir(), run_model_meta(self.run())
        if not weights.is_dir() and meta.get("base_model"):
            weights = meta["base_model"]
        return Pretrained(PretrainedModelOptions(path=str(weights), dtype=self.options.dtype)).build_empty(ctx, spec)

    def base_reference(self) -> str | None:
        try:
            return str(self.weights_dir())
        except FinetuneError:  # not made yet (validation): the run's path stands for it
            return self.options.path

    def describe_base(self) -> str | None:
        return f"the final model of run {self.run()}, untouched by this run"

    def source(self) -> dict[str, Any] | None:
        run = self.run()
        return {"run": str(run), "weights_sha256": weights_sha256(run / "model")}


@hookimpl
def register_models(register):
    register(FromRun)
