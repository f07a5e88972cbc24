"""Recipe packs: `register_recipes`, `extends = "pack:recipe"`, `finetune recipes` / show / copy.

Uses the example pack docs/examples/finetune-recipes-example, which `make` installs (editable).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from conftest import ROOT, cli, run_recipe, tiny_recipe, write

from runner import hookimpl, load_recipe
from runner.errors import FinetuneError, RecipeError
from runner.plugins.manager import Plugins, get_plugins, reset_plugins
from runner.recipe.load import display_path, read_recipe

PACK = "finetune-recipes-example"
PACK_DIR = ROOT / "docs" / "examples" / PACK / "finetune_recipes_example" / "recipes"

# The example pack's recipe at the size of the tests' tiny recipes: seconds on 2 cores.
TINY_OVERRIDES = """
[run]
threads = 1

[[data.sources]]
type = "synthetic"
kind = "sentiment"
rows = 200

[tokenizer]
vocab_size = 300

[training]
batch_size = 32
epochs = 1
log_every = 1
keep_best = false
"""


@pytest.fixture(autouse=True)
def _wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # rich tables: one line per row


@pytest.fixture
def example_pack():
    pack = get_plugins().packs.get(PACK)
    if pack is None:
        pytest.fail(f"the example pack is not installed: pip install -e docs/examples/{PACK} (`make` does)")
    return pack


class OtherTeam:
    """An in-process pack (named after itself) whose recipe extends the example pack's."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.__name__ = "other-team"

    @hookimpl
    def register_recipes(self, register):
        register(self.folder)


def test_the_example_pack_is_registered_with_its_version_and_recipes(example_pack):
    assert example_pack.version == "0.1.0"
    assert list(example_pack.recipes()) == ["sentiment-base", "sentiment-fast"]
    shipped = get_plugins().packs.get("finetune-runner")
    assert "quickstart" in shipped.recipes()


def test_recipes_lists_every_pack_with_version_description_and_components(example_pack, capsys):
    assert cli("recipes") == 0
    out = capsys.readouterr().out
    rows = {line.split("│")[2].strip(): line for line in out.splitlines() if line.count("│") == 5}
    assert f"{PACK} 0.1.0" in rows["sentiment-fast"]
    assert "smoke test" in rows["sentiment-fast"]
    assert "synthetic, trained, config, classification" in rows["sentiment-fast"]  # through both extends
    assert "finetune-runner 0.1.0" in rows["quickstart"]


def test_a_recipe_extending_a_pack_recipe_validates_plans_and_runs(example_pack, tmp_path, capsys):
    recipe = write(tmp_path / "mine.toml", f'extends = "{PACK}:sentiment-fast"\n' + TINY_OVERRIDES)
    source = read_recipe(recipe)
    packs = source.data["run"]["packs"]
    assert packs == [f"{PACK}==0.1.0:sentiment-fast", "finetune-runner==0.1.0:quickstart"]
    assert str(source.provenance[("run", "packs")]) == f"{display_path(recipe)}:1:1"  # the `extends` line
    validated = load_recipe(recipe)
    assert validated.training.options.learning_rate == 4e-3  # from sentiment-fast
    assert validated.model.options.config["n_layer"] == 1  # from sentiment-base

    assert cli("plan", recipe, "--offline", "--samples", "0") == 0
    assert f"{PACK}==0.1.0:sentiment-fast" in capsys.readouterr().out.replace("\n", "").replace("│", "").replace(
        " ", ""
    )

    result = run_recipe(recipe, tmp_path / "run")
    assert result.metrics["test"]["accuracy"] >= 0.0
    resolved = tomllib.loads((tmp_path / "run" / "recipe.resolved.toml").read_text())
    assert resolved["run"]["packs"][0] == f"{PACK}==0.1.0:sentiment-fast"
    # The run directory's recipe validates as it is (as `finetune resume` reads it).
    assert load_recipe(tmp_path / "run" / "recipe.resolved.toml").run.packs == resolved["run"]["packs"]


def test_a_missing_pack_is_a_recipe_error_at_extends_naming_the_pack(tmp_path, capsys):
    recipe = write(tmp_path / "mine.toml", 'extends = "acme-recipes:llm/chat-base"\n')
    with pytest.raises(RecipeError) as caught:
        read_recipe(recipe)
    (issue,) = caught.value.issues
    assert issue.key == ("extends",) and issue.location.line == 1
    rendered = issue.render()
    assert "no recipe pack 'acme-recipes' is installed" in rendered and "pip install acme-recipes" in rendered
    assert cli("validate", recipe) == 2
    assert "mine.toml:1:1 extends: no recipe pack 'acme-recipes'" in capsys.readouterr().out


def test_uninstalling_the_pack_turns_its_recipes_into_errors(example_pack, tmp_path, monkeypatch):
    recipe = write(tmp_path / "mine.toml", f'extends = "{PACK}:sentiment-fast"\n')
    monkeypatch.setenv("FINETUNE_DISABLE_PLUGINS", "recipes-example")  # as if pip uninstalled it
    reset_plugins()
    with pytest.raises(RecipeError, match=f"no recipe pack '{PACK}' is installed"):
        read_recipe(recipe)


def test_an_unknown_recipe_of_a_pack_lists_the_recipes_it_has(example_pack, tmp_path):
    recipe = write(tmp_path / "mine.toml", f'extends = "{PACK}:sentiment-fats"\n')
    with pytest.raises(RecipeError) as caught:
        read_recipe(recipe)
    rendered = caught.value.issues[0].render()
    assert "mine.toml:1:1 extends" in rendered and "has no recipe 'sentiment-fats'" in rendered
    assert "did you mean sentiment-fast" in rendered and "sentiment-base" in rendered


def test_a_file_path_that_looks_like_a_pack_is_still_a_path(tmp_path):
    write(tmp_path / "base:v1.toml", "[run]\nseed = 3\n")
    recipe = write(tmp_path / "mine.toml", 'extends = "base:v1.toml"\n')
    assert read_recipe(recipe).data == {"run": {"seed": 3}}


def test_a_pack_recipe_can_extend_another_packs_recipe(example_pack, tmp_path):
    folder = write(
        tmp_path / "other" / "team" / "tiny.toml", f'extends = "{PACK}:sentiment-base"\n' + TINY_OVERRIDES
    ).parent.parent
    reset_plugins(Plugins(extra=[OtherTeam(folder)]))
    recipe = write(tmp_path / "mine.toml", 'extends = "other-team:team/tiny"\n')
    validated = load_recipe(recipe)
    assert validated.run.packs == ["other-team==in-process:team/tiny", f"{PACK}==0.1.0:sentiment-base",
                                   "finetune-runner==0.1.0:quickstart"]  # fmt: skip
    assert validated.sources[0].options.rows == 200


def test_recipes_show_prints_the_recipe(example_pack, capsys):
    assert cli("recipes", "show", f"{PACK}:sentiment-fast") == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# {PACK}:sentiment-fast ({PACK} 0.1.0)")
    assert (PACK_DIR / "sentiment-fast.toml").read_text() in out
    assert cli("recipes", "show", "quickstart") == 0  # a name only one pack has
    assert 'type = "synthetic"' in capsys.readouterr().out
    with pytest.raises(FinetuneError, match="no pack has a recipe 'nope'"):
        get_plugins().packs.find("nope")


def test_recipes_copy_keeps_extends_pointing_at_the_pack(example_pack, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli("recipes", "copy", "sentiment-fast") == 0
    copied = (tmp_path / "sentiment-fast.toml").read_text()
    assert tomllib.loads(copied)["extends"] == f"{PACK}:sentiment-base"
    assert load_recipe(tmp_path / "sentiment-fast.toml").training.options.learning_rate == 4e-3
    assert cli("recipes", "copy", "sentiment-fast") == 2  # no overwrite without --force
    assert cli("recipes", "copy", "sentiment-fast", "--force") == 0


def test_recipes_copy_flatten_writes_a_resolved_recipe_that_validates(example_pack, tmp_path):
    dest = tmp_path / "flat.toml"
    assert cli("recipes", "copy", f"{PACK}:sentiment-fast", dest, "--flatten") == 0
    data = tomllib.loads(dest.read_text())
    assert "extends" not in data and data["training"]["learning_rate"] == 4e-3
    assert data["run"]["packs"][0] == f"{PACK}==0.1.0:sentiment-fast"
    assert load_recipe(dest).model.options.config["n_layer"] == 1


def test_a_copied_recipe_still_finds_the_data_file_its_pack_ships(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli("recipes", "copy", "local-csv") == 0
    copied = tmp_path / "local-csv.toml"
    source = tomllib.loads(copied.read_text())["data"]["sources"][0]
    assert source["path"] == "finetune-runner:data/reviews.csv"  # was "data/reviews.csv": nothing beside the copy
    assert Path(load_recipe(copied).sources[0].options.path) == ROOT / "recipes" / "data" / "reviews.csv"
    # a pack file that is not there, or a pack that is not installed: an error at the key's line
    copied.write_text(copied.read_text().replace("data/reviews.csv", "data/nope.csv"))
    wrong = write(tmp_path / "wrong.toml", '[[data.sources]]\ntype = "files"\npath = "acme-recipes:data/x.csv"\n')
    capsys.readouterr()
    assert cli("validate", copied, wrong) == 2
    out = capsys.readouterr().out
    assert "local-csv.toml:13:1 data.sources[0].path: pack 'finetune-runner" in out
    assert "ships no file 'data/nope.csv'" in out
    assert "wrong.toml:3:1 data.sources[0].path: no recipe pack 'acme-recipes' is installed" in out


def test_loading_and_validating_use_the_packs_they_are_given_not_the_process_wide_ones(tmp_path):
    from runner.recipe.validate import validate

    team = tmp_path / "team"
    tiny_recipe(team / "tiny.toml")
    write(team / "data" / "rows.csv", "text,label\n" + "".join(f"day {i},{'ab'[i % 2]}\n" for i in range(40)))
    plugins = Plugins(extra=[OtherTeam(team)])  # not the process's: get_plugins() knows no "other-team"
    assert get_plugins().packs.get("other-team") is None
    recipe = write(
        tmp_path / "r.toml",
        'extends = "other-team:tiny"\n\n[[data.sources]]\ntype = "files"\npath = "other-team:data/rows.csv"\n',
    )
    loaded = validate(read_recipe(recipe, packs=plugins.packs), plugins.registry)
    assert loaded.sources[0].options.path == str(team / "data" / "rows.csv")
    assert loaded.run.packs == ["other-team==in-process:tiny"]
