"""The core asks a component what it is, never which built-in it is: a third party's component that
declares what a built-in declares gets what the built-in gets (issue 26). Each test registers a
plugin of its own in-process, as a pip-installed one would register, and checks the treatment the
built-in of the same nature gets: the Hub probed and pinned, plan's unknown rows, the packing
check, quiet library warnings, the model card's datasets and random-init base."""

from __future__ import annotations

import json
import warnings

import pytest
from conftest import cli, write
from pydantic import Field

from runner import (
    DataError,
    DataSource,
    DataSourceOptions,
    Model,
    Strategy,
    Tokenizer,
    TokenizerOptions,
    hookimpl,
    load_recipe,
)
from runner.plugins.manager import Plugins, get_plugins, reset_plugins
from runner.recipe import lockfile


class AcmeHubOptions(DataSourceOptions):
    path: str = Field(description="A dataset id on the Hub.")


class AcmeHubData(DataSource):
    """Rows of a Hub dataset, read Acme's way."""

    name = "acme_hub"
    Options = AcmeHubOptions
    fingerprint_downloads = True

    def hub_datasets(self):
        return [(self.options.path, "v2")]

    def load(self, ctx):
        raise DataError(f"cannot load Acme dataset '{self.options.path}': offline")

    def fingerprint(self, ctx):
        raise AssertionError("the fingerprint downloads: locking must pin the Hub commit instead")


class AcmeTokenizer(Tokenizer):
    """A tokenizer Acme trains on the data."""

    name = "acme_trained"
    Options = TokenizerOptions
    trains_on_data = True

    def build(self, ctx, texts):
        raise AssertionError("without the data there is nothing to train on")


class AcmeModel(Model):
    """A BERT Acme builds from its own settings."""

    name = "acme_bert"

    def architecture(self):
        return "bert"


class AcmeStrategy(Strategy):
    """Acme's adapters."""

    name = "acme_adapters"
    quiet_warnings = ("acme-peft set fan_in itself",)


class Acme:
    @hookimpl
    def register_data_sources(self, register):
        register(AcmeHubData)

    @hookimpl
    def register_tokenizers(self, register):
        register(AcmeTokenizer)

    @hookimpl
    def register_models(self, register):
        register(AcmeModel)

    @hookimpl
    def register_strategies(self, register):
        register(AcmeStrategy)


@pytest.fixture(autouse=True)
def acme():
    reset_plugins(Plugins(extra=[Acme()]))


SOURCE = '[[data.sources]]\ntype = "acme_hub"\npath = "acme/reviews"\n'
TOKENIZER = '[tokenizer]\ntype = "trained"\nvocab_size = 400\nmax_length = 32\n'
MODEL = '[model]\ntype = "config"\narchitecture = "gpt2"\nconfig = { n_layer = 1, n_head = 2, n_embd = 32 }\n'
TASK = '[task]\ntype = "classification"\n'


def recipe(tmp_path, *sections: str):
    """A recipe of the given sections, the others as above."""
    kinds = {"[[data": SOURCE, "[tokenizer": TOKENIZER, "[model": MODEL, "[task": TASK}
    for section in sections:
        kinds = {k: section if section.startswith(k) else v for k, v in kinds.items()}
    extra = [s for s in sections if not any(s.startswith(k) for k in kinds)]
    return write(tmp_path / "r.toml", "\n".join([*kinds.values(), *extra]))


def test_the_builtins_declare_what_they_are_as_a_third_party_would():
    registry = get_plugins().registry
    hub = registry.get("data_source", "hub")
    assert hub.fingerprint_downloads and not registry.get("data_source", "files").fingerprint_downloads
    assert hub(hub.Options(path="mteb/x", revision="r1")).hub_datasets() == [("mteb/x", "r1")]
    assert registry.get("tokenizer", "trained").trains_on_data
    assert not registry.get("tokenizer", "pretrained").trains_on_data
    config = registry.get("model", "config")
    assert config(config.Options(architecture="opt")).architecture() == "opt"
    assert any("Conv1D" in message for message in registry.get("strategy", "lora").quiet_warnings)


def test_a_data_source_of_its_own_reading_the_hub_is_probed_and_locked_like_hub(tmp_path, monkeypatch):
    from runner.running import recipes

    loaded = load_recipe(recipe(tmp_path))
    assert recipes.hub_ids(loaded) == ["acme/reviews"]
    probed = []
    monkeypatch.setattr("runner.toolkit.hub.go_offline_if_unreachable", lambda: probed.append(True))
    recipes.go_offline(recipe=loaded)  # a recipe that reads the Hub asks whether it is reachable
    assert probed == [True]
    # Its fingerprint would download the data: the lock pins the dataset's commit, as for `hub`
    # (unresolved here: the tests run offline).
    inputs = lockfile.inputs(loaded, tmp_path / "cache")
    assert inputs["data.sources[0]"] == {"hub": "acme/reviews", "revision": lockfile.OFFLINE}


def test_a_tokenizer_of_its_own_trained_on_the_data_leaves_the_model_unknown_offline(tmp_path, capsys, monkeypatch):
    path = recipe(tmp_path, '[tokenizer]\ntype = "acme_trained"\nmax_length = 32\n')
    monkeypatch.setenv("COLUMNS", "400")
    assert cli("plan", path, "--offline") == 0
    out = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "parameters unknown (the tokenizer is trained on the data, and cannot load Acme dataset" in out


def test_a_model_of_its_own_naming_a_mixing_architecture_is_refused_packing(tmp_path):
    from runner.errors import RecipeError

    source = '[[data.sources]]\ntype = "synthetic"\nkind = "text"\nrows = 40\n'
    path = recipe(tmp_path, source, '[model]\ntype = "acme_bert"\n', '[task]\ntype = "causal_lm"\npacking = true\n')
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    [issue] = err.value.issues
    assert issue.key == ("task", "packing") and "the bert architecture" in issue.message


def test_a_strategys_declared_library_warnings_are_quiet_in_its_runs(tmp_path):
    import torch  # noqa: F401 - imported before warnings are recorded: its own import warnings are not ours

    from runner.pipeline.run import quiet_libraries

    loaded = load_recipe(recipe(tmp_path, '[strategy]\ntype = "acme_adapters"\n'))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_libraries(False, loaded)
        warnings.warn("acme-peft set fan_in itself: nothing to do", UserWarning, stacklevel=1)
        warnings.warn("acme-peft could not find a layer", UserWarning, stacklevel=1)
    shown = [str(w.message) for w in caught if str(w.message).startswith("acme-peft")]
    assert shown == ["acme-peft could not find a layer"]


@pytest.mark.parametrize(
    ("model", "described"),
    [
        ({"type": "acme_random", "width": 64}, "a `acme_random` model, randomly initialised"),
        (
            {"type": "config", "architecture": "gpt2", "config": {"layers": 1}},
            "a `gpt2` model built from a config (layers=1), randomly initialised",
        ),
    ],
)
def test_the_model_card_names_hub_datasets_and_a_random_base_from_what_the_run_recorded(tmp_path, model, described):
    import tomli_w

    from runner.report.model_card import render_model_card
    from runner.report.run_record import read_run

    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    resolved = {"data": {"sources": [{"type": "acme_hub", "path": "acme/reviews"}]}, "model": model}
    (run / "recipe.resolved.toml").write_text(tomli_w.dumps(resolved))
    fingerprint = {"source": "acme_hub", "hub": "acme/reviews", "revision": "abc123"}
    (run / "environment.json").write_text(json.dumps({"data": [fingerprint]}))
    meta = {"task": "classification", "head": "sequence_classification", "strategy": "full", "base_model": None}
    (run / "model" / "finetune.json").write_text(json.dumps(meta))
    card = render_model_card(read_run(run), run / "model")
    assert 'datasets:\n  - "acme/reviews"\n' in card
    assert f"**Base model:** {described}" in card
    assert "The base model was randomly initialised" in card
