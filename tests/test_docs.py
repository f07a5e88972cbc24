"""The docs keep the promises the code makes."""

from conftest import ROOT


def test_recipe_reference_matches_the_code():
    from runner.cli.reference import builtin_reference

    written = (ROOT / "docs" / "recipe-reference.md").read_text(encoding="utf-8")
    assert written == builtin_reference(), "regenerate it: python -m runner.cli.reference > docs/recipe-reference.md"


def test_readme_shows_the_two_setup_commands_and_the_measured_accuracy():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make demo" in readme and "make test" in readme
    assert "accuracy" in readme


def test_the_readme_recipe_validates(tmp_path):
    import re
    import shutil

    from runner import load_recipe

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    recipe = re.search(r"## A recipe\n\n```toml\n(.*?)```", readme, re.S).group(1)
    (tmp_path / "data").mkdir()
    shutil.copy(ROOT / "recipes" / "data" / "reviews.csv", tmp_path / "data" / "reviews.csv")
    (tmp_path / "readme.toml").write_text(recipe, encoding="utf-8")
    loaded = load_recipe(tmp_path / "readme.toml")
    assert loaded.strategy.name == "lora" and loaded.sources[0].options.columns == {"text": "review", "label": "rating"}


def test_the_readme_qlora_lines_validate_in_the_readme_recipe(tmp_path):
    import re
    import shutil

    from runner import load_recipe

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    recipe = re.search(r"## A recipe\n\n```toml\n(.*?)```", readme, re.S).group(1)
    qlora = re.search(r"QLoRA on a 7-70B model.*?```toml\n(.*?)```", readme, re.S).group(1)
    replaced = {line.split(" = ")[0] for line in qlora.splitlines()}
    kept = [line for line in recipe.splitlines() if line.split(" = ")[0] not in replaced]
    (tmp_path / "data").mkdir()
    shutil.copy(ROOT / "recipes" / "data" / "reviews.csv", tmp_path / "data" / "reviews.csv")
    (tmp_path / "qlora.toml").write_text(qlora + "\n".join(kept) + "\n", encoding="utf-8")
    loaded = load_recipe(tmp_path / "qlora.toml")
    assert loaded.model.create().quantization_bits() == 4
    assert loaded.strategy.options.target_modules == "all-linear" and loaded.task.options.format == "sharegpt"


def test_the_python_api_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """docs/python-api.md's notebook example, run as it is (its run directories under tmp_path)."""
    import re

    text = (ROOT / "docs" / "python-api.md").read_text(encoding="utf-8")
    example = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    monkeypatch.chdir(ROOT)  # the example names recipes/quickstart.toml from the repository's root
    scope: dict = {}
    exec(compile(example.replace('"runs/', f'"{tmp_path}/'), "python-api.md", "exec"), scope)
    assert scope["outcome"].status == "completed" and scope["outcome"].exit_code == 0
    assert scope["plan"].facts["optimizer steps"].isdigit()
    assert (scope["merged"] / "model.safetensors").is_file()
    printed = capsys.readouterr().out
    assert "completed 0" in printed and "'label': " in printed
