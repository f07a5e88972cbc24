"""Bad input found by a corpus of broken recipes: each is one message naming its key (and file:line),
exit code 2, no traceback; never a crash, an endless run or a silent success."""

from __future__ import annotations

import json
import re

import pytest
from conftest import RECIPES, cli, tiny_recipe, write

from runner import load_recipe
from runner.errors import FinetuneError, RecipeError
from runner.storage import checkpoints

LONG = "a" * 300  # one path component longer than any file system allows (255)


def issues_of(path, overrides=None) -> list[str]:
    with pytest.raises(RecipeError) as err:
        load_recipe(path, overrides)
    return [issue.render() for issue in err.value.issues]


def one(rendered: list[str], needle: str) -> str:
    found = [r for r in rendered if needle in r]
    assert len(found) == 1, (needle, rendered)
    return found[0]


def line_of(path, text: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def cli_error(capsys, *args) -> str:
    """Run the command in-process; assert exit code 2 and no traceback; return what it printed."""
    code = cli(*args)
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert "Traceback" not in out + err
    return out + err


def edited(path, old: str, new: str):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    return path


# -- 1. values that passed validation and crashed the run -------------------------------------------
def test_seed_and_batch_size_beyond_what_libraries_take_are_refused(tmp_path):
    path = edited(tiny_recipe(tmp_path / "r.toml"), "seed = 7", "seed = 4294967296")
    found = one(issues_of(path), "run.seed")
    assert found.startswith(f"{path}:2:1 run.seed: must be less than or equal to 4294967295 (got 4294967296)")
    rendered = issues_of(path, ["run.seed=1", "training.batch_size=1099511627776"])
    assert "training.batch_size: must be less than or equal to 1048576" in one(rendered, "batch_size")
    # beyond TOML's 64-bit integers: refused as the recipe is read, like a syntax error
    edited(path, "batch_size = 32", "batch_size = 100000000000000000000000000")
    found = one(issues_of(path), "batch_size")
    assert found.startswith(f"{path}:24:1 training.batch_size: integer out of TOML's 64-bit range (integers go from")


@pytest.mark.parametrize(
    ("config", "key", "message"),
    [
        ("n_layer = 1, n_head = 3, n_embd = 32", "n_head", "n_head = 3 does not divide n_embd = 32"),
        ('n_head = 2, n_embd = 32, activation_function = "os.system"', "activation_function", "unknown activation"),
        ('n_head = 2, n_embd = 32, dtype = "os.system"', "dtype", "not a floating-point dtype: 'os.system'"),
        ("n_layer = -1, n_head = 2, n_embd = 32", "n_layer", "must be at least 1 (got -1)"),
        ("n_layer = 1, n_head = 2, n_embd = 0", "n_embd", "must be at least 1 (got 0)"),
    ],
)
def test_model_configs_the_architecture_refuses_are_found_by_validate(tmp_path, config, key, message):
    path = edited(tiny_recipe(tmp_path / "r.toml"), "n_layer = 1, n_head = 2, n_embd = 32", config)
    found = one(issues_of(path), f"model.config.{key}")
    assert re.match(rf"{re.escape(str(path))}:17:\d+ model\.config\.{key}: ", found), found
    assert message in found


def test_a_config_only_the_architecture_can_judge_stops_the_run_before_any_data(tmp_path, capsys):
    path = edited(tiny_recipe(tmp_path / "r.toml"), "n_embd = 32,", "n_embd = 32, resid_pdrop = 2.0,")
    load_recipe(path)  # validate cannot tell without torch ...
    output = tmp_path / "run"
    err = cli_error(capsys, "run", path, "--output", output)  # ... the run can, before reading data
    assert re.search(rf"{re.escape(str(path))}:17:\d+ model\.config\.resid_pdrop: the gpt2 architecture refuses", err)
    assert "dropout probability has to be between 0 and 1" in err
    assert not output.exists()
    assert "model.config.resid_pdrop" in cli_error(capsys, "plan", path, "--offline")


# -- 2. chat templates that exhaust the sandbox --------------------------------------------------------
def instruct_recipe(tmp_path, template: str):
    path = tmp_path / "instruct.toml"
    path.write_text((RECIPES / "quickstart-instruct.toml").read_text())
    return edited(path, 'template = "chatml"', f"template = {json.dumps(template)}")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{% for i in range(100000000) %}{% endfor %}", "OverflowError: Range too big"),
        ("{{ 'x' * 10000000000 }}", "builds a value of 10,000,000,000 characters"),
        ("{{ 10 ** 100000000 }}", "raises a number to the power 100000000"),
        ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "RecursionError"),
        ("{{ raise_exception('roles must alternate') }}", "TemplateError: roles must alternate"),
        ("{% set r = range(100000) %}{% for i in r %}{% for j in r %}{% endfor %}{% endfor %}", "did not finish"),
    ],
)
def test_a_template_that_fails_or_exhausts_the_sandbox_is_an_error_at_task_template(
    tmp_path, monkeypatch, template, message
):
    from plugins.tasks import _template_sandbox

    monkeypatch.setattr(_template_sandbox, "RENDER_SECONDS", 0.5)  # the spinning one stops sooner
    path = instruct_recipe(tmp_path, template)
    found = one(issues_of(path), "task.template")
    assert found.startswith(f"{path}:{line_of(path, 'template = ')}:1 task.template: the chat template")
    assert message in found


def test_a_render_that_fails_or_runs_too_long_at_run_time_names_task_template(monkeypatch):
    from plugins.tasks import _chat_templates, _template_sandbox

    monkeypatch.setattr(_template_sandbox, "RENDER_SECONDS", 0.2)

    class Spinning:  # a template that is slow only on some row of the data
        def apply_chat_template(self, *args, **kwargs):
            while True:
                pass

    class Failing:
        def apply_chat_template(self, *args, **kwargs):
            raise RecursionError("maximum recursion depth exceeded")

    for tokenizer, detail in ((Spinning(), "RenderStopped: stopped after 0.2 s"), (Failing(), "RecursionError")):
        with pytest.raises(FinetuneError) as err:
            _chat_templates.render(tokenizer, "{{ messages }}", [{"role": "user", "content": "hi"}])
        assert err.value.message.startswith("task.template: the chat template failed to render")
        assert detail in err.value.message


# -- 3. validate itself ----------------------------------------------------------------------------
def test_an_array_nested_3000_deep_is_a_recipe_error(tmp_path, capsys):
    path = write(tmp_path / "deep.toml", "[run]\nseed = 1\nx = " + "[" * 3000 + "]" * 3000 + "\n")
    out = cli_error(capsys, "validate", path)
    assert f"{path}:3: arrays or tables nested more than 32 levels deep" in out
    shallow = write(tmp_path / "shallow.toml", "[run]\nseed = 1\nx = " + "[" * 100 + "]" * 100 + "\n")
    assert f"{shallow}:3:1 run.x: arrays or tables nested more than 32 levels deep" in cli_error(
        capsys, "validate", shallow
    )
    deep_set = "run.x=" + "[" * 3000 + "]" * 3000
    out = cli_error(capsys, "validate", tiny_recipe(tmp_path / "r.toml"), "--set", deep_set)
    assert "characters) run: arrays or tables nested more than 32 levels deep (flatten the value)" in out


def test_an_integer_of_thousands_of_digits_is_a_recipe_error(tmp_path, capsys):
    path = write(tmp_path / "r.toml", "[run]\nname = 'x'\nseed = " + "9" * 5000 + "\n")
    assert f"{path}:3: integer out of TOML's 64-bit range" in cli_error(capsys, "validate", path)


@pytest.mark.parametrize(
    ("override", "key", "message"),
    [
        (f'data.sources=[{{type="files", path="{LONG}.csv"}}]', "data.sources[0].path", "File name too long"),
        (f'tokenizer={{type="pretrained", path="./{LONG}"}}', "tokenizer.path", "File name too long"),
        (f'model={{type="pretrained", path="{LONG}"}}', "model.path", "File name too long"),
    ],
)
def test_a_path_over_255_characters_is_a_recipe_error(tmp_path, capsys, override, key, message):
    path = tiny_recipe(tmp_path / "r.toml")
    out = cli_error(capsys, "validate", path, "--set", override)
    assert f" {key}: not a usable path ({message}): " in out
    assert "characters)" in out  # the path is cut, not echoed whole


def test_extends_over_255_characters_or_a_directory_names_extends(tmp_path, capsys):
    path = write(tmp_path / "r.toml", f'# child\nextends = "{LONG}.toml"\n')
    out = cli_error(capsys, "validate", path)
    assert f"{path}:2:1 extends: the recipe it extends cannot be opened (File name too long)" in out
    write(path, 'extends = "."\n')
    assert f"{path}:1:1 extends: the recipe it extends is a directory, not a file: ." in cli_error(
        capsys, "validate", path
    )


def test_a_name_too_long_for_the_file_system_on_the_command_line(tmp_path, capsys):
    err = cli_error(capsys, "report", tmp_path / LONG)
    assert "the name is too long for the file system" in err


# -- 4. nonsense that was accepted -----------------------------------------------------------------
def test_epochs_and_steps_beyond_any_machine_are_refused(tmp_path):
    path = tiny_recipe(tmp_path / "r.toml")
    rendered = issues_of(path, ["training.epochs=1e300"])
    assert "training.epochs: must be less than or equal to 1000000000 (got 1e+300)" in one(rendered, "epochs")
    rendered = issues_of(path, ["training.max_steps=9223372036854775807"])
    assert "training.max_steps: must be less than or equal to 1000000000" in one(rendered, "max_steps")


def test_a_run_that_plans_more_than_a_billion_steps_is_refused_with_the_count(tmp_path):
    recipe = load_recipe(tiny_recipe(tmp_path / "r.toml"), ["training.epochs=1e9", "training.batch_size=1"])
    with pytest.raises(FinetuneError) as err:
        recipe.training.create().planned_steps(train_rows=240)
    assert "training.epochs = 1e+09 plans 240,000,000,000 optimizer steps (240 per epoch)" in err.value.message
    assert "more than the 1,000,000,000 a run may take" in err.value.message


# -- 5. checkpoint manifests of the wrong shape ---------------------------------------------------------
MANIFESTS = [
    "{}",
    "[]",
    '{"files": 5}',
    '{"files": {}}',
    '{"files": {"model.safetensors": 5}}',
    '{"files": {"../../outside": {"size": 1, "sha256": "00"}}}',
    "not json",
    "[" * 5000 + "]" * 5000,
]


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_a_manifest_of_the_wrong_shape_is_named(tmp_path, manifest):
    checkpoint = tmp_path / "checkpoints" / "checkpoint-10"
    write(checkpoint / "model.safetensors", "weights")
    (checkpoint / checkpoints.MANIFEST).write_text(manifest)
    with pytest.raises(FinetuneError) as err:
        checkpoints.resume_point(tmp_path / "checkpoints")
    assert str(checkpoint / checkpoints.MANIFEST) in err.value.message
    assert "--checkpoint" in err.value.hint


def test_finetune_resume_with_a_damaged_manifest_exits_2(tmp_path, capsys):
    run = tmp_path / "run"
    tiny_recipe(run / "recipe.resolved.toml")
    (run / "status.json").write_text('{"state": "interrupted"}')
    checkpoint = run / "checkpoints" / "checkpoint-10"
    write(checkpoint / "model.safetensors", "weights")
    (checkpoint / checkpoints.MANIFEST).write_text('{"files": 5}')
    err = cli_error(capsys, "resume", run)
    manifest = checkpoint / checkpoints.MANIFEST
    assert f"checkpoint {checkpoint} is damaged: {manifest} is not a checkpoint manifest" in err


# -- 6. weak messages ------------------------------------------------------------------------------
def test_a_malformed_jsonl_line_is_named_with_file_and_line(tmp_path):
    from plugins.data.files import FilesOptions, read_file

    rows = [json.dumps({"text": f"row {i}", "label": "ab"[i % 2]}) for i in range(60)]
    rows[41] = '{"text": "bad", "label": }'
    data = write(tmp_path / "d.jsonl", "\n".join(rows) + "\n")
    with pytest.raises(FinetuneError) as err:
        read_file(str(data), "jsonl", FilesOptions(path=str(data)))
    expected = f"{data}: cannot read it as jsonl: line 42 is not valid JSON (Expecting value, column 26)"
    assert err.value.message == expected
    write(data, '{"text": "a", "label": "x"}\n[1, 2]\n')
    with pytest.raises(FinetuneError, match=r"line 2 is not a JSON object \(a list\)"):
        read_file(str(data), "jsonl", FilesOptions(path=str(data)))


def test_a_10_mb_value_is_cut_in_every_error(tmp_path, capsys):
    huge = "x" * 10_000_000
    path = tiny_recipe(tmp_path / "r.toml")
    edited(path, "batch_size = 32", f'batch_size = "{huge}"')
    edited(path, 'type = "classification"', f'type = "classification"\n"{huge}" = 1')
    out = cli_error(capsys, "validate", path)
    assert len(out) < 3000
    assert '(got "xxxx' in out and "… (10,000,000 characters)" in out
    assert len(FinetuneError(huge, hint="h").render()) < 3000  # and any message at all, as a last resort


def test_extends_leaving_the_recipe_folder_names_extends(tmp_path, capsys):
    write(tmp_path / "shared" / "base.toml", "[run\nseed = 1\n")
    child = write(tmp_path / "exp" / "child.toml", 'extends = "../shared/base.toml"\n')
    out = cli_error(capsys, "validate", child)
    assert "base.toml:1:5: TOML syntax error" in out
    assert f"(reached through extends at {child}:1:1)" in out


def test_a_data_path_that_is_a_directory_says_so(tmp_path):
    (tmp_path / "data").mkdir()
    path = tiny_recipe(tmp_path / "r.toml")
    found = one(issues_of(path, [f'data.sources=[{{type="files", path="{tmp_path / "data"}"}}]']), "sources[0].path")
    assert found.endswith(
        f"data.sources[0].path: {tmp_path / 'data'} is a directory, not a file (name a file inside it)"
    )


def test_the_divergence_hint_suggests_clipping_only_when_it_is_off():
    from plugins.trainers.hf import HFTrainerOptions, divergence_hint

    assert "max_grad_norm" in divergence_hint(HFTrainerOptions(max_grad_norm=0))
    clipped = divergence_hint(HFTrainerOptions(max_grad_norm=1.0))
    assert "already clipped to norm 1" in clipped and "set training.max_grad_norm" not in clipped


# -- 7. the model card writes user text as plain text -------------------------------------------------
HOSTILE = "![t](http://example.com/x.png) [x](https://example.com) <img src=x> *b* `c` # h www.example.com"


def test_the_model_card_makes_markdown_in_user_text_inert(tmp_path):
    from markdown_it import MarkdownIt
    from test_report import make_run

    from runner.report.model_card import write_model_card

    run = make_run(tmp_path / "run", description=HOSTILE)
    meta = run / "model" / "finetune.json"
    record = json.loads(meta.read_text())
    record["task_state"]["labels"] = [HOSTILE, "[a](http://example.com/a)", "- list"]
    meta.write_text(json.dumps(record))
    audits = run / "audits.json"
    audits.write_text(audits.read_text().replace('"name": "leakage"', f'"name": {json.dumps(HOSTILE)}'))
    write_model_card(run, run / "model")

    card = (run / "model" / "README.md").read_text(encoding="utf-8")
    body = card.split("---\n", 2)[2].split("<details>")[0]  # the recipe block is code, shown as written
    html = MarkdownIt("commonmark").enable("table").render(body)
    assert "<img" not in html and "<a " not in html and "<em>" not in html and "<code>c</code>" not in html
    assert "http\\://example.com" in body and "www\\.example.com" in body  # no bare link either
    assert "!\\[t\\]\\(http\\://example.com/x.png\\)" in body  # the text itself is all there


@pytest.mark.slow
def test_a_template_slow_only_on_real_rows_is_stopped_during_the_run(tmp_path, monkeypatch, capsys):
    from plugins.tasks import _template_sandbox

    monkeypatch.setattr(_template_sandbox, "RENDER_SECONDS", 0.5)
    spin = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    template = f"{{% for m in messages %}}{{% if m['content']|length > 30 %}}{spin}{{% endif %}}{{{{ m['content'] }}}}"
    path = instruct_recipe(tmp_path, template + "{% endfor %}")
    load_recipe(path)  # the short sample conversation renders at once
    err = cli_error(capsys, "run", path, "--output", tmp_path / "run", "--set", "data.sources[0].rows=100")
    assert "task.template: the chat template failed to render: RenderStopped: stopped after 0.5 s" in err
