"""Reading recipes: extends chains, deep merge, --set overrides, provenance, syntax errors."""

import pytest
from conftest import write

from runner.errors import Location, RecipeError
from runner.recipe.load import parse_key_path, parse_override_value, read_recipe


def test_extends_merges_tables_and_replaces_arrays(tmp_path):
    write(
        tmp_path / "base.toml",
        """
        [training]
        learning_rate = 1e-4
        epochs = 3

        [[metrics]]
        type = "accuracy"

        [[metrics]]
        type = "f1"
        """,
    )
    write(
        tmp_path / "child.toml",
        """
        extends = "base.toml"

        [training]
        epochs = 5

        [[metrics]]
        type = "recall"
        """,
    )
    src = read_recipe(tmp_path / "child.toml")
    assert src.data["training"] == {"learning_rate": 1e-4, "epochs": 5}
    assert src.data["metrics"] == [{"type": "recall"}]  # arrays replace, never append
    assert "extends" not in src.data
    assert src.provenance[("training", "learning_rate")].file.endswith("base.toml")
    assert src.provenance[("training", "epochs")] == Location(src.provenance[("training", "epochs")].file, 4, 1)
    assert src.provenance[("training", "epochs")].file.endswith("child.toml")
    assert [p.name for p in src.chain] == ["child.toml", "base.toml"]


def test_extends_chain_of_three(tmp_path):
    write(tmp_path / "a.toml", '[run]\nname = "a"\nseed = 1\n')
    write(tmp_path / "sub" / "b.toml", 'extends = "../a.toml"\n[run]\nseed = 2\n')
    write(tmp_path / "c.toml", 'extends = "sub/b.toml"\n[run]\nname = "c"\n')
    src = read_recipe(tmp_path / "c.toml")
    assert src.data["run"] == {"name": "c", "seed": 2}


def test_extends_cycle_is_an_error_naming_the_chain(tmp_path):
    write(tmp_path / "a.toml", 'extends = "b.toml"\n')
    write(tmp_path / "b.toml", 'extends = "a.toml"\n')
    with pytest.raises(RecipeError) as err:
        read_recipe(tmp_path / "a.toml")
    assert "cycle" in err.value.message and "a.toml -> " in err.value.message and "b.toml" in err.value.message


def test_extends_missing_file_names_the_line(tmp_path):
    write(tmp_path / "a.toml", '# comment\nextends = "nope.toml"\n')
    with pytest.raises(RecipeError) as err:
        read_recipe(tmp_path / "a.toml")
    issue = err.value.issues[0]
    assert issue.location.line == 2 and "nope.toml" in issue.message


def test_overrides_use_toml_value_syntax(tmp_path):
    write(tmp_path / "r.toml", '[training]\nlearning_rate = 1e-4\n[[data.sources]]\ntype = "files"\n')
    src = read_recipe(
        tmp_path / "r.toml",
        [
            "training.learning_rate=3e-4",
            "training.epochs=2",
            "training.keep_best=false",
            "strategy.type=lora",  # a bare word is a string
            'run.name="quoted"',
            "data.sources[0].columns={ text = 'tweet' }",
            "training.eval_every=epoch",
        ],
    )
    assert src.data["training"] == {"learning_rate": 3e-4, "epochs": 2, "keep_best": False, "eval_every": "epoch"}
    assert src.data["strategy"] == {"type": "lora"}
    assert src.data["run"]["name"] == "quoted"
    assert src.data["data"]["sources"][0]["columns"] == {"text": "tweet"}
    assert src.provenance[("training", "learning_rate")].file == "--set training.learning_rate=3e-4"
    assert src.provenance[("data", "sources", 0, "columns", "text")].file.startswith("--set data.sources[0]")


def test_bad_overrides_are_reported_together(tmp_path):
    write(tmp_path / "r.toml", "[training]\nepochs = 1\n")
    with pytest.raises(RecipeError) as err:
        read_recipe(tmp_path / "r.toml", ["no_equals_sign", "training.epochs.x=1", "a=[1,"])
    assert len(err.value.issues) == 3


def test_key_path_and_value_parsing():
    assert parse_key_path("data.sources[0].path") == ("data", "sources", 0, "path")
    assert parse_key_path("a..b") is None
    assert parse_override_value("1e-3") == 1e-3
    assert parse_override_value("[1, 2]") == [1, 2]
    assert parse_override_value("./data/x.csv") == "./data/x.csv"


def test_toml_syntax_error_has_line_and_column(tmp_path):
    write(tmp_path / "r.toml", '[run]\nname = "x"\nseed = = 3\n')
    with pytest.raises(RecipeError) as err:
        read_recipe(tmp_path / "r.toml")
    issue = err.value.issues[0]
    assert (issue.location.line, issue.location.col) == (3, 8)
    assert "TOML syntax error" in issue.message


def test_non_utf8_recipe_names_the_line(tmp_path):
    (tmp_path / "r.toml").write_bytes(b'[run]\nname = "caf\xe9"\n')
    with pytest.raises(RecipeError) as err:
        read_recipe(tmp_path / "r.toml")
    assert err.value.issues[0].location.line == 2 and "UTF-8" in err.value.issues[0].message
