"""The docs keep the promises the code makes."""

from conftest import ROOT


def test_recipe_reference_matches_the_code():
    from runner.reference import builtin_reference

    written = (ROOT / "docs" / "recipe-reference.md").read_text(encoding="utf-8")
    assert written == builtin_reference(), "regenerate it: python -m runner.reference > docs/recipe-reference.md"


def test_readme_shows_the_two_setup_commands_and_the_measured_accuracy():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make demo" in readme and "make test" in readme
    assert "accuracy" in readme
