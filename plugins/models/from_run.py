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
from typing import Any, Literal

from pydantic import Field

from plugins.models._loading import Loading, LoadingOptions, check_loading
from plugins.models.pretrained import Pretrained, PretrainedModelOptions
from runner import FinetuneError, Model, ModelSpec, RunContext, clip, hookimpl, sha256_file, world_size

RECIPE = "recipe.resolved.toml"  # what makes a folder a run directory (runner's RunDir)
MODEL_META = "finetune.json"  # model/'s record: head, strategy, whether it is an adapter


def _status(run: Path) -> dict[str, Any]:
    try:
        return json.loads((run / "status.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _completed(run: Path) -> bool:
    return _status(run).get("state") == "completed" and (run / "model" / MODEL_META).is_file()


def _newest_key(run: Path) -> tuple:
    # Run directories are named by their start time: `<date>-<time>`, then `<date>-<time>-1`, ...
    date, _, rest = run.name.partition("-")
    time, _, n = rest.partition("-")
    return (_status(run).get("finished", ""), date, time, int(n) if n.isdigit() else 0)


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
    if (path / RECIPE).is_file():
        if not _completed(path):
            state = _status(path).get("state", "unknown")
            raise FinetuneError(
                f"run {path} did not complete (state: {state}): it has no final model to start from",
                hint=f"finish it first: finetune resume {path}" if state != "completed" else None,
            )
        return path
    runs = [p for p in path.iterdir() if p.is_dir() and (p / RECIPE).is_file()]
    done = [p for p in runs if _completed(p)]
    if not done:
        what = f"{len(runs)} run(s), none completed" if runs else "no run directories"
        raise FinetuneError(f"{path} holds {what}: nothing to start from", hint=hint)
    return max(done, key=_newest_key)


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


def _recorded_run(run_dir: Path | None) -> Path | None:
    """The run a run directory's environment.json says its model started from: a resume, or loading
    a finished run, takes the same weights even when a newer run has completed in the folder since."""
    try:
        env = json.loads((Path(run_dir) / "environment.json").read_text(encoding="utf-8")) if run_dir else {}
    except (OSError, ValueError):
        return None
    recorded = (env.get("model_source") or {}).get("run") if isinstance(env, dict) else None
    return find_run(recorded) if isinstance(recorded, str) else None


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
    path: str = Field(
        min_length=1,
        description="A completed run directory (runs/<name>/<time>), or a folder of runs (runs/<name>): its newest "
        "completed run. Relative to the working directory, like run.output_dir.",
    )
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
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
        recorded = _recorded_run(ctx.run_dir)
        if recorded is not None:  # a resumed run, or a finished one loaded again: the run it started from
            self._run = recorded
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
            from runner import open_run

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

    def source(self) -> dict[str, Any] | None:
        run = self.run()
        return {"run": str(run), "weights_sha256": weights_sha256(run / "model")}


@hookimpl
def register_models(register):
    register(FromRun)
