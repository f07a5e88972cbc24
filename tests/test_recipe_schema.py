"""`finetune schema`: the JSON Schema editors read accepts what `finetune validate` accepts.

Every shipped recipe is checked in the three forms a user or the runner has: the file as written
(with `extends`, which the schema allows), the recipe after following `extends`, and the resolved
recipe a run directory keeps. Recipes that validation refuses for a reason JSON Schema can express
(an unknown key, a wrong type, a value outside an enum, an unknown component) must fail it too.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import tomllib

import pytest
from conftest import RECIPES, ROOT
from jsonschema import Draft7Validator
from jsonschema.exceptions import best_match

from runner import load_recipe
from runner.cli.main import main
from runner.cli.schema import recipe_schema
from runner.errors import RecipeError
from runner.plugins.manager import get_plugins
from runner.recipe.load import read_recipe

SHIPPED = sorted(RECIPES.glob("*.toml"))


@pytest.fixture
def validator() -> Draft7Validator:
    schema = recipe_schema(get_plugins().registry)
    Draft7Validator.check_schema(schema)  # a well-formed draft-07 schema, as editors expect
    return Draft7Validator(schema)


def _errors(validator: Draft7Validator, data: dict) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(data)]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_recipe_fits_the_schema_as_written_merged_and_resolved(validator, path):
    written = tomllib.loads(path.read_text(encoding="utf-8"))
    assert _errors(validator, written) == []
    assert _errors(validator, read_recipe(path).data) == []
    assert _errors(validator, load_recipe(path).resolved()) == []  # recipe.resolved.toml


def test_a_shipped_recipe_extends_another():
    """The raw-file check above covers `extends` only while some shipped recipe uses it."""
    assert any("extends" in tomllib.loads(p.read_text(encoding="utf-8")) for p in SHIPPED)


def _quickstart() -> dict:
    return tomllib.loads((RECIPES / "quickstart.toml").read_text(encoding="utf-8"))


def _set(data: dict, path: tuple, value) -> dict:
    data = copy.deepcopy(data)
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {}) if isinstance(part, str) else node[part]
    node[path[-1]] = value
    return data


# Recipes validation refuses for reasons the schema can state: (key path, value, what the message names).
REFUSED = [
    (("training", "learnig_rate"), 1e-3, "learnig_rate"),  # a typo of a component option
    (("run", "sede"), 1, "sede"),  # of a plain section's key
    (("data", "split", "tran"), 0.5, "tran"),  # of a nested table's key
    (("data", "sources", 0, "rowz"), 10, "rowz"),  # of an array table's key
    (("evalution",), {}, "evalution"),  # an unknown section
    (("training", "epochs"), "3", "'3'"),  # a string where a number goes
    (("run", "deterministic"), 1, "1"),  # a number where true/false goes
    (("task", "type"), "clasification", "clasification"),  # an unknown component
    (("strategy", "type"), "lorra", "lorra"),
    (("run", "seed"), -1, "-1"),  # below a bound the model states
]


@pytest.mark.parametrize(("path", "value", "named"), REFUSED, ids=lambda x: str(x))
def test_what_validation_refuses_the_schema_refuses(validator, tmp_path, path, value, named):
    data = _set(_quickstart(), path, value)
    errors = _errors(validator, data)
    assert errors, f"the schema accepted {path} = {value!r}"
    assert named in str(best_match(validator.iter_errors(data)).message) or any(named in e for e in errors)
    recipe = tmp_path / "recipe.toml"
    import tomli_w

    recipe.write_text(tomli_w.dumps(data), encoding="utf-8")
    with pytest.raises(RecipeError):  # and the runner refuses it too: the two agree
        load_recipe(recipe)


def test_a_bad_enum_value_is_refused_with_the_choices(validator):
    data = _set(_quickstart(), ("model", "dtype"), "float64")
    errors = _errors(validator, data)
    assert errors and any("float64" in e for e in errors)


def test_the_options_of_the_chosen_component_apply(validator):
    lora = _set(_quickstart(), ("strategy",), {"type": "lora", "r": 4})
    assert _errors(validator, lora) == []
    # `r` is a LoRA option, not one of `full` (the default strategy when `type` is left out)
    assert _errors(validator, _set(_quickstart(), ("strategy",), {"r": 4}))
    deepspeed = _set(_quickstart(), ("distributed",), {"engine": "deepspeed", "zero_stage": 2})
    assert _errors(validator, deepspeed) == []  # `[distributed]` names its component by `engine`
    typo = _set(deepspeed, ("distributed",), {"engine": "deepspeed", "stage": 2})
    assert "'stage' was unexpected" in best_match(validator.iter_errors(typo)).message


def test_without_extends_the_required_sections_and_types_are_required(validator):
    data = _quickstart()
    del data["model"]
    assert any("'model' is a required property" in e for e in _errors(validator, data))
    no_type = _set(_quickstart(), ("tokenizer",), {"max_length": 32})
    assert any("'type' is a required property" in e for e in _errors(validator, no_type))
    no_sources = _set(_quickstart(), ("data",), {"split": {"train": 0.8, "validation": 0.1, "test": 0.1}})
    assert _errors(validator, no_sources)


def test_with_extends_a_partial_recipe_fits_but_its_typos_do_not(validator):
    child = {"extends": "base.toml", "strategy": {"r": 8}, "training": {"epochs": 1}}
    assert _errors(validator, child) == []
    assert _errors(validator, {**child, "strategy": {"rr": 8}})  # no strategy has `rr`
    assert _errors(validator, {**child, "metrics": [{"average": "macro"}]})  # arrays replace: need a type
    assert _errors(validator, {"extends": 3})


def test_a_third_party_component_is_in_the_schema(validator):
    """The example plugin docs/examples/finetune-adapters, installed by `make`, registers `adapter`."""
    registry = get_plugins().registry
    assert registry.get("strategy", "adapter") is not None, "install docs/examples/finetune-adapters"
    schema = validator.schema
    assert "strategy.adapter" in schema["definitions"]
    assert "adapter" in schema["properties"]["strategy"]["properties"]["type"]["enum"]
    adapter = _set(_quickstart(), ("strategy",), {"type": "adapter", "placement": "pfeiffer"})
    assert _errors(validator, adapter) == []
    assert _errors(validator, _set(adapter, ("strategy", "placement"), "middle"))


def test_descriptions_and_defaults_reach_the_editor(validator):
    training = validator.schema["definitions"]["trainer.hf"]
    assert training["description"] and training["properties"]["learning_rate"]["description"]
    assert "default" in training["properties"]["learning_rate"]
    assert '"null"' not in json.dumps(validator.schema)  # TOML has no null: never offered


def test_finetune_schema_writes_the_file_without_importing_torch(tmp_path):
    out = tmp_path / "recipe.schema.json"
    code = (
        "import sys\n"
        "from runner.cli.main import main\n"
        f"rc = main(['schema', '--output', {str(out)!r}])\n"
        "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'datasets', 'peft') if m in sys.modules))\n"
        "sys.exit(rc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
    schema = json.loads(out.read_text(encoding="utf-8"))
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert _errors(Draft7Validator(schema), _quickstart()) == []


def test_finetune_schema_prints_to_stdout(capsys):
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "finetune-runner recipe"


def test_an_unwritable_output_is_a_user_error(tmp_path, capsys):
    assert main(["schema", "--output", str(tmp_path / "missing" / "schema.json")]) == 2
    assert "cannot write the schema" in capsys.readouterr().err
