"""Bad input: one clear message naming the file (and line, key or row), exit code 2, no traceback."""

import subprocess
import sys

import pytest
from conftest import ROOT, cli, tiny_recipe, write


def files_recipe(tmp_path, data_name: str, extra_source: str = "", task_extra: str = ""):
    path = tiny_recipe(tmp_path / "r.toml")
    text = path.read_text()
    text = text.replace('type = "synthetic"\nrows = 300', f'type = "files"\npath = "{data_name}"\n{extra_source}')
    text = text.replace('type = "classification"', f'type = "classification"\n{task_extra}')
    path.write_text(text)
    return path


def run_error(capsys, recipe) -> str:
    code = cli("run", recipe, "--output", recipe.parent / "out")
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return err


def test_missing_text_column_names_file_and_mapping(tmp_path, capsys):
    write(tmp_path / "d.csv", "tweet,label\nhello,a\nbye,b\n")
    err = run_error(capsys, files_recipe(tmp_path, "d.csv"))
    assert "d.csv: no column 'text'" in err
    assert "columns found: tweet, label" in err and "data.sources[0].columns" in err


def test_mapped_label_column_that_does_not_exist(tmp_path, capsys):
    write(tmp_path / "d.csv", "tweet,label\nhello,a\nbye,b\n")
    err = run_error(capsys, files_recipe(tmp_path, "d.csv", 'columns = { text = "tweet", label = "sentiment" }'))
    assert "no column 'sentiment' (mapped by data.sources[0].columns.label)" in err


def test_label_outside_the_label_set_names_the_line(tmp_path, capsys):
    rows = "".join(f"text {i},{'pos' if i % 2 else 'neg'}\n" for i in range(40))
    write(tmp_path / "d.csv", "text,label\n" + rows + "text 40,postive\n")
    err = run_error(capsys, files_recipe(tmp_path, "d.csv", task_extra='labels = ["neg", "pos"]'))
    assert "d.csv, line 42: label 'postive' is not one of the labels: neg, pos" in err
    assert "did you mean 'pos'?" in err


def test_fractional_label_suggests_regression(tmp_path, capsys):
    write(tmp_path / "d.csv", "text,label\n" + "".join(f"t{i},{i / 2}\n" for i in range(1, 40)))
    err = run_error(capsys, files_recipe(tmp_path, "d.csv"))
    assert "label 0.5 is a number with a fraction" in err and "regression" in err


def test_empty_dataset(tmp_path, capsys):
    write(tmp_path / "d.csv", "text,label\n")
    err = run_error(capsys, files_recipe(tmp_path, "d.csv"))
    assert "d.csv: no rows" in err


def test_split_too_small_to_carve(tmp_path, capsys):
    write(tmp_path / "d.csv", "text,label\na,x\nb,y\nc,x\n")
    err = run_error(capsys, files_recipe(tmp_path, "d.csv"))
    assert "too few to carve" in err


def test_empty_text_cell_names_the_line(tmp_path, capsys):
    write(tmp_path / "d.jsonl", '{"text": "a", "label": "x"}\n{"text": null, "label": "y"}\n')
    err = run_error(capsys, files_recipe(tmp_path, "d.jsonl"))
    assert "d.jsonl, line 2: column 'text' is empty" in err


def test_non_utf8_data_names_the_line(tmp_path, capsys):
    (tmp_path / "d.csv").write_bytes(b"text,label\nfine,x\ncaf\xe9 latte,y\n")
    err = run_error(capsys, files_recipe(tmp_path, "d.csv"))
    assert "d.csv: line 3 is not valid UTF-8" in err


def test_unreadable_json(tmp_path, capsys):
    write(tmp_path / "d.jsonl", '{"text": "a", "label": "x"}\n{"text": \n')
    err = run_error(capsys, files_recipe(tmp_path, "d.jsonl"))
    assert "d.jsonl: cannot read it as jsonl" in err


def test_recipe_errors_exit_2_without_traceback_and_debug_shows_it(tmp_path):
    recipe = tiny_recipe(tmp_path / "r.toml")
    recipe.write_text(recipe.read_text().replace("learning_rate = 3e-3", "learning_rate = -1"))
    cmd = [sys.executable, "-m", "runner.cli"]
    plain = subprocess.run([*cmd, "run", str(recipe)], capture_output=True, text=True, cwd=ROOT)
    assert plain.returncode == 2
    assert f"{recipe}:23:1 training.learning_rate: must be a finite number > 0 (got -1" in plain.stderr
    assert "Traceback" not in plain.stderr
    debug = subprocess.run([*cmd, "--debug", "run", str(recipe)], capture_output=True, text=True, cwd=ROOT)
    assert debug.returncode == 2 and "Traceback" in debug.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["validate", "recipes/quickstart.toml"],
        ["validate", "recipes/quickstart-instruct.toml"],  # its chat template is rendered on a sample
        ["plugins"],
        ["recipes"],
    ],
)
def test_light_commands_import_neither_torch_nor_transformers(argv):
    code = (
        "import sys\n"
        "from runner.cli.main import main\n"
        "try:\n"
        f"    rc = main({argv!r})\n"
        "except SystemExit as e:\n"
        "    rc = e.code\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'datasets', 'peft', 'evaluate') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
        "sys.exit(rc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout


def test_validate_reports_every_recipe(tmp_path, capsys):
    good = tiny_recipe(tmp_path / "good.toml")
    bad = write(tmp_path / "bad.toml", "[run]\nseed = -1\n")
    assert cli("validate", good, bad) == 2
    out = capsys.readouterr().out
    assert "good.toml" in out and "run.seed: must be greater than or equal to 0 (got -1)" in out
    assert "missing section [model]" in out


def test_an_unreachable_hub_switches_to_offline_at_once(monkeypatch):
    from runner.toolkit.hub import go_offline_if_unreachable

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")
    note = go_offline_if_unreachable(timeout=2)
    assert note and "unreachable" in note
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert go_offline_if_unreachable() is None  # already offline: nothing to probe


def test_hub_recipe_offline_fails_fast_with_a_clear_message(tmp_path, capsys):
    from conftest import RECIPES

    code = cli("run", RECIPES / "gpt2-tweet-sentiment.toml", "--output", tmp_path / "run")
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot load Hub dataset 'mteb/tweet_sentiment_extraction': working offline" in err
    assert not (tmp_path / "run").exists() and "nothing was trained: removed" in err  # no half-run left behind
