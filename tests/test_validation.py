"""Validation: every problem at once, each with file, line and key path, and a way to fix it."""

import pytest
from conftest import RECIPES, tiny_recipe, write

from runner import load_recipe
from runner.errors import RecipeError


def issues_of(path, overrides=None):
    with pytest.raises(RecipeError) as err:
        load_recipe(path, overrides)
    return {issue.render() for issue in err.value.issues}, err.value.issues


def one(issues, needle):
    found = [i for i in issues if needle in i]
    assert len(found) == 1, (needle, issues)
    return found[0]


def test_every_shipped_recipe_validates():
    recipes = sorted(RECIPES.glob("*.toml"))
    assert len(recipes) >= 5
    for path in recipes:
        load_recipe(path)


def test_all_errors_reported_at_once_with_line_and_suggestion(tmp_path):
    path = write(
        tmp_path / "bad.toml",
        """
        [run]
        seed = 1

        [[data.sources]]
        type = "synthetc"

        [tokenizer]
        type = "trained"
        vocab_sise = 100

        [model]
        type = "config"
        architecture = "gpt2"

        [task]
        type = "classification"

        [training]
        learning_rate = -1
        batch_size = "32"
        num_train_epochs = 2
        """,
    )
    rendered, issues = issues_of(path)
    assert len(issues) == 5
    assert one(rendered, "synthetc").startswith(f"{path}:5:1 data.sources[0].type: unknown data source")
    assert "did you mean 'synthetic'?" in one(rendered, "synthetc")
    assert one(rendered, "vocab_sise").startswith(f"{path}:9:1 tokenizer.vocab_sise: unknown key")
    assert "did you mean 'vocab_size'?" in one(rendered, "vocab_sise")
    assert one(rendered, "learning_rate").startswith(f"{path}:19:1 training.learning_rate: must be a finite number > 0")
    assert 'expected an integer (got "32")' in one(rendered, "batch_size")
    assert "this runner calls it 'epochs'" in one(rendered, "num_train_epochs")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0.0", "-3e-4"])
def test_learning_rate_must_be_finite_and_positive(tmp_path, value):
    path = tiny_recipe(tmp_path / "r.toml")
    rendered, _ = issues_of(path, [f"training.learning_rate={value}"])
    assert "must be a finite number > 0" in one(rendered, "training.learning_rate")


def test_unknown_keys_are_rejected_at_every_depth(tmp_path):
    path = tiny_recipe(
        tmp_path / "r.toml", extra="[data.split]\ntrain = 0.8\nvalidation = 0.1\ntest = 0.1\nstratfy = true\n"
    )
    rendered, _ = issues_of(path, ["data.sources[0].colums={text='t'}"])
    assert "did you mean 'stratify'?" in one(rendered, "data.split.stratfy")
    assert "did you mean 'columns'?" in one(rendered, "data.sources[0].colums")


def test_split_fractions_must_sum_to_one(tmp_path):
    path = tiny_recipe(tmp_path / "r.toml", extra="[data.split]\ntrain = 0.8\nvalidation = 0.3\ntest = 0.1\n")
    rendered, _ = issues_of(path)
    assert "must sum to 1" in one(rendered, "data.split")


def test_a_recipe_cannot_name_code(tmp_path):
    path = tiny_recipe(tmp_path / "r.toml")
    rendered, _ = issues_of(path, ['strategy.type="os.system"', 'model.type="transformers.AutoModel"'])
    assert "unknown strategy 'os.system'" in one(rendered, "strategy.type")
    assert "unknown model 'transformers.AutoModel'" in one(rendered, "model.type")


def test_unknown_section_and_missing_sections(tmp_path):
    path = write(tmp_path / "r.toml", '[trainig]\nepochs = 1\n[[data.sources]]\ntype = "synthetic"\n')
    rendered, _ = issues_of(path)
    assert "did you mean 'training'?" in one(rendered, "trainig")
    for section in ("tokenizer", "model", "task"):
        one(rendered, f"missing section [{section}]")


def test_model_config_keys_are_checked_without_torch(tmp_path):
    path = tiny_recipe(tmp_path / "r.toml")
    rendered, _ = issues_of(path, ["model.config.n_layr=2", "model.config.vocab_size=10"])
    assert "did you mean 'n_layer'?" in one(rendered, "model.config.n_layr")
    assert "set from the tokenizer" in one(rendered, "model.config.vocab_size")
    rendered, _ = issues_of(path, ['model.architecture="gtp2"'])
    assert "did you mean 'gpt2'?" in one(rendered, "model.architecture")


def test_max_length_beyond_model_positions(tmp_path):
    path = tiny_recipe(tmp_path / "r.toml")
    rendered, _ = issues_of(path, ["tokenizer.max_length=64"])
    assert "exceeds the model's 32 positions" in one(rendered, "model")


@pytest.mark.parametrize("strategy", ["prompt_tuning", "p_tuning", "prefix_tuning"])
def test_virtual_tokens_need_a_pretrained_base(tmp_path, strategy):
    path = tiny_recipe(tmp_path / "r.toml", extra=f'[strategy]\ntype = "{strategy}"\nnum_virtual_tokens = 4\n')
    rendered, _ = issues_of(path, ["tokenizer.max_length=28"])
    message = one(rendered, "strategy.type")
    assert "r.toml:" in message and "randomly initialised" in message and "'lora'" in message


def test_metric_must_fit_the_task(tmp_path):
    path = tiny_recipe(tmp_path / "r.toml", extra='[[metrics]]\ntype = "perplexity"\n')
    rendered, _ = issues_of(path)
    assert "cannot score the predictions of task 'classification'" in one(rendered, "metrics[0].type")


def test_best_metric_must_exist(tmp_path):
    path = tiny_recipe(tmp_path / "r.toml")
    rendered, _ = issues_of(path, ['training.best_metric="acuracy"'])
    assert "choose one of: loss, accuracy" in one(rendered, "training.best_metric")


def test_missing_data_file_names_the_recipe_line(tmp_path):
    path = tiny_recipe(tmp_path / "r.toml")
    text = path.read_text().replace('type = "synthetic"\nrows = 300', 'type = "files"\ntrain = "data/nope.csv"')
    path.write_text(text)
    rendered, _ = issues_of(path)
    assert one(rendered, "nope.csv").startswith(f"{path}:7:1 data.sources[0].train: file not found: data/nope.csv")


def test_data_paths_are_relative_to_the_recipe_that_sets_them(tmp_path):
    write(tmp_path / "shared" / "data" / "train.csv", "text,label\na,x\nb,y\n")
    write(tmp_path / "shared" / "base.toml", '[[data.sources]]\ntype = "files"\ntrain = "data/train.csv"\n')
    child = tiny_recipe(tmp_path / "exp" / "child.toml")
    text = child.read_text()
    start = text.index("[[data.sources]]")
    end = text.index("[tokenizer]")
    child.write_text('extends = "../shared/base.toml"\n' + text[:start] + text[end:])
    recipe = load_recipe(child)
    assert recipe.sources[0].options.train == str((tmp_path / "shared" / "data" / "train.csv").resolve())


def test_resolved_recipe_validates_again(tmp_path):
    import tomli_w

    recipe = load_recipe(RECIPES / "quickstart.toml", ["training.epochs=1"])
    again = write(tmp_path / "resolved.toml", tomli_w.dumps(recipe.resolved()))
    assert load_recipe(again).resolved() == recipe.resolved()


def test_two_metrics_or_audits_with_one_name_are_refused(tmp_path):
    extra = '\n[[metrics]]\ntype = "accuracy"\n[[metrics]]\ntype = "accuracy"\n'
    extra += (
        '\n[[audits]]\ntype = "leakage"\n[[audits]]\ntype = "leakage"\n[[audits]]\ntype = "leakage"\nname = "again"\n'
    )
    rendered, _ = issues_of(tiny_recipe(tmp_path / "r.toml", extra=extra))
    assert "a second metric named 'accuracy'" in one(rendered, "metrics[1]")
    assert "a second audit named 'leakage'" in one(rendered, "audits[1]")
    assert not [i for i in rendered if "audits[2]" in i]  # a distinct name is enough
