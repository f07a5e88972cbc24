"""`finetune audit RUN`: run audits again on a finished run's model, or other audits from a file.

The base model's figures come from the run's baseline.json when the audit was measured there with
the same options; otherwise the base model is built again as the run built it and measured.
"""

from __future__ import annotations

from pathlib import Path

from runner.errors import FinetuneError, Issue, Location, RecipeError
from runner.evaluation.audits import Audits, audit_data
from runner.pipeline.events import Events
from runner.plugins.manager import get_plugins
from runner.recipe.load import display_path, drop_under, read_recipe, read_toml
from runner.recipe.resolved import Recipe
from runner.recipe.validate import validate
from runner.running.recipes import load_recipe
from runner.storage.rundir import RunDir, read_json, write_json


def recipe_with_audits(run_dir: RunDir, audits_file: Path) -> Recipe:
    """The run's recipe with the `[[audits]]` of `audits_file` instead of its own (errors name that file)."""
    plugins = get_plugins()
    source = read_recipe(run_dir.recipe, packs=plugins.packs)
    issues: list[Issue] = []
    loaded = read_toml(Path(audits_file).resolve(), issues)
    if loaded is None:
        raise RecipeError(issues)
    data, provenance = loaded
    others = [key for key in data if key != "audits"]
    if others or "audits" not in data:
        where = provenance.get((others[0],)) if others else Location(display_path(Path(audits_file)))
        key = (others[0],) if others else ()
        raise RecipeError([Issue("an audits file holds only [[audits]] tables", where, key)])
    drop_under(source.provenance, ("audits",))
    source.data["audits"] = data["audits"]
    source.provenance.update({k: v for k, v in provenance.items() if k[:1] == ("audits",)})
    source.chain.append(Path(audits_file).resolve())  # relative paths in it are relative to it
    return validate(source, plugins.registry)


def audit_run(run_dir: RunDir, audits_file: Path | None, debug: bool = False) -> list[str]:
    """Audit the run's fine-tuned model; write audits.json and rebuild the report. Returns the
    names of the audits that failed."""
    from runner.pipeline.data import prepare_data
    from runner.running.saved import load_finished

    run_recipe = load_recipe(run_dir.recipe)
    recipe = recipe_with_audits(run_dir, audits_file) if audits_file is not None else run_recipe
    if not recipe.audits:
        raise FinetuneError("no audits to run", hint="name a file of [[audits]] tables with --audits FILE")
    done = load_finished(run_dir, debug, recipe)
    events = Events([spec.create() for spec in recipe.reporters])
    data = prepare_data(recipe, recipe.task.create(), done.ctx)  # the rows, splits and labels of the run
    rows = audit_data(data)
    audits = Audits(recipe.audits, done.ctx, events)
    audits.check_data(rows, stop=False)
    max_length = done.meta["max_length"]
    if audits.model_audits:
        measured = _base_figures(run_dir, run_recipe, recipe)
        if any(audit.key() not in measured for audit in audits.model_audits):
            events.stage("measuring the base model")
            measured |= audits.measure("base", done.base(), done.tokenizer, done.task, max_length, rows)
        audits.base = measured
        events.stage("auditing the fine-tuned model")
        audits.judge(audits.measure("finetuned", done.model, done.tokenizer, done.task, max_length, rows))
    write_json(run_dir.path / RunDir.AUDITS, audits.document())
    _rebuild_documents(run_dir, events)
    return audits.failed()


def _base_figures(run_dir: RunDir, run_recipe: Recipe, recipe: Recipe) -> dict:
    """The base figures the run measured, for the audits whose options are unchanged since."""
    path = run_dir.path / RunDir.BASELINE
    if not path.is_file():
        return {}
    saved = read_json(path).get("audits", {})
    original = {spec.create().key(): spec.as_table() for spec in run_recipe.audits}
    keys = {spec.create().key(): spec.as_table() for spec in recipe.audits}
    return {key: saved[key] for key, table in keys.items() if key in saved and original.get(key) == table}


def _rebuild_documents(run_dir: RunDir, events) -> None:
    from runner.report.model_card import write_model_card
    from runner.report.page import build_report

    if run_dir.model.is_dir():
        write_model_card(run_dir.path, run_dir.model)
    events.info(f"report: {build_report(run_dir.path)}")
