"""A third-party plugin installed as a package (docs/examples/finetune-plugin-example).

The package is pip-installed into a temporary directory, never into the project's environment, and
`finetune` runs as a subprocess with that directory on PYTHONPATH. Checks: the runner finds the
plugin through its entry point, lists it, validates and runs a recipe that uses its components,
rejects that recipe when the plugin is turned off, and a plugin that fails to import breaks nothing
else.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "finetune-plugin-example"
EXAMPLE_VERSION = tomllib.loads((EXAMPLE / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]

ROWS = 90
# The quickstart's tokenizer, model and training settings at a size that trains in seconds, with the
# plugin's data source and metric.
RECIPE = f"""
[run]
seed = 7
threads = 1

[[data.sources]]
type = "keywords"
rows = {ROWS}
seed = 3

[data.sources.keywords]
positive = ["great", "lovely", "superb"]
negative = ["awful", "boring", "dreadful"]
neutral = ["okay", "fine", "average"]

[tokenizer]
type = "trained"
vocab_size = 120
max_length = 16

[model]
type = "config"
architecture = "gpt2"
config = {{ n_layer = 1, n_head = 2, n_embd = 32, n_positions = 32 }}

[task]
type = "classification"

[training]
learning_rate = 3e-3
batch_size = 16
epochs = 4
log_every = 2
best_metric = "error_rate"

[[metrics]]
type = "accuracy"

[[metrics]]
type = "error_rate"
"""

BROKEN_PYPROJECT = """
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "finetune-plugin-broken"
version = "0.0.1"

[project.entry-points.finetune]
broken = "finetune_broken_import"
broken_hook = "finetune_broken_hook"

[tool.setuptools]
py-modules = ["finetune_broken_import", "finetune_broken_hook"]
"""

BROKEN_IMPORT = """
raise RuntimeError("this plugin is broken on purpose")
"""

BROKEN_HOOK = """
from runner import hookimpl


@hookimpl
def register_metrics(register):
    raise ValueError("cannot register on purpose")
"""


# -- helpers ------------------------------------------------------------------------------------


def pip_install(source: Path, target: Path) -> Path:
    """Build and install the package at `source` into `target` (pip --target), offline."""
    # Build from a copy: an in-tree build leaves build/ and *.egg-info/ next to the sources.
    build = target.parent / f"{target.name}-src"
    shutil.copytree(source, build, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
               "--disable-pip-version-check", "--quiet", "--target", str(target), str(build)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        pytest.fail(f"pip install {source} failed:\n{done.stdout}\n{done.stderr}")
    return target


def finetune(*args, path: list[Path] = (), env: dict[str, str] | None = None, timeout: int = 60):
    """`finetune ARGS` in a subprocess with `path` on PYTHONPATH; returns the CompletedProcess."""
    environ = {k: v for k, v in os.environ.items() if k not in ("FINETUNE_DISABLE_PLUGINS", "FINETUNE_LOAD_PLUGINS")}
    environ.pop("FORCE_COLOR", None)
    environ.update(
        PYTHONPATH=os.pathsep.join(str(p) for p in path),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONIOENCODING="utf-8",
        COLUMNS="250",  # rich tables: one line per row
        **(env or {}),
    )
    command = [sys.executable, "-m", "runner.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=environ, cwd=ROOT, timeout=timeout)


def plugin_rows(output: str) -> dict[str, list[str]]:
    """The rows of the `finetune plugins` table: plugin name -> [version, source, components]."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) == 6:  # "│ a │ b │ c │ d │" splits into 6
            rows[cells[1]] = cells[2:5]
    return rows


def write_recipe(tmp_path: Path, text: str = RECIPE) -> Path:
    path = tmp_path / "keywords.toml"
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def example_site(tmp_path_factory) -> Path:
    """A directory holding the installed example plugin (put it on PYTHONPATH to use it)."""
    return pip_install(EXAMPLE, tmp_path_factory.mktemp("example") / "site")


# -- tests --------------------------------------------------------------------------------------


def test_plugins_lists_the_example_plugin_with_version_and_components(example_site):
    done = finetune("plugins", path=[example_site])
    assert done.returncode == 0, done.stderr
    rows = plugin_rows(done.stdout)
    assert rows["example"] == [
        EXAMPLE_VERSION,
        "finetune-plugin-example",
        "data source: keywords; metric: error_rate",
    ], done.stdout
    assert "failed" not in done.stdout
    sources = [row[1] for row in rows.values()]
    first_third_party = next(i for i, source in enumerate(sources) if source != "built-in")
    assert all(source != "built-in" for source in sources[first_third_party:]), "built-ins load first"
    assert "metrics" in rows and rows["metrics"][1] == "built-in"

    # The project's own environment does not have it: only PYTHONPATH brings it in.
    without = finetune("plugins")
    assert without.returncode == 0, without.stderr
    assert "example" not in plugin_rows(without.stdout)
    assert "keywords" not in without.stdout and "error_rate" not in without.stdout


@pytest.mark.parametrize(
    "env",
    [{}, {"FINETUNE_LOAD_PLUGINS": "example"}, {"FINETUNE_DISABLE_PLUGINS": "data_hub"}],
    ids=["default", "load-only-example", "disable-another"],
)
def test_validate_accepts_a_recipe_using_the_plugin(example_site, tmp_path, env):
    recipe = write_recipe(tmp_path)
    done = finetune("validate", recipe, path=[example_site], env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"✓ {recipe}" in done.stdout


def test_validate_with_the_plugin_stays_free_of_torch_and_data_libraries(example_site, tmp_path):
    """The plugin keeps its heavy imports inside methods: validating imports none of them."""
    recipe = write_recipe(tmp_path)
    script = (
        "import sys; from runner.cli.main import main; rc = main(['validate', sys.argv[1]]); "
        "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'datasets', 'numpy') if m in sys.modules)); "
        "sys.exit(rc)"
    )
    environ = {**os.environ, "PYTHONPATH": str(example_site), "HF_HUB_OFFLINE": "1", "PYTHONIOENCODING": "utf-8"}
    done = subprocess.run(
        [sys.executable, "-c", script, str(recipe)], capture_output=True, text=True, env=environ, cwd=ROOT, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "HEAVY []" in done.stdout, done.stdout


@pytest.mark.parametrize(
    "env",
    [{"FINETUNE_DISABLE_PLUGINS": "example"}, {"FINETUNE_DISABLE_PLUGINS": "data_hub, example"},
     {"FINETUNE_LOAD_PLUGINS": ""}, {"FINETUNE_LOAD_PLUGINS": "someone_else"}],
    ids=["disabled", "disabled-in-list", "load-none", "load-others"],
)  # fmt: skip
def test_validate_rejects_the_recipe_when_the_plugin_is_off(example_site, tmp_path, env):
    recipe = write_recipe(tmp_path)
    done = finetune("validate", recipe, path=[example_site], env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    out = done.stdout + done.stderr
    assert f"✗ {recipe}" in out
    # Each unknown type is named, at the line that names it.
    lines = recipe.read_text(encoding="utf-8").splitlines()
    source_line = lines.index('type = "keywords"') + 1
    metric_line = lines.index('type = "error_rate"') + 1
    assert f"{recipe}:{source_line}:" in out and "unknown data source 'keywords'" in out, out
    assert f"{recipe}:{metric_line}:" in out and "unknown metric 'error_rate'" in out, out

    listed = finetune("plugins", path=[example_site], env=env)
    assert listed.returncode == 0, listed.stderr
    assert "example" not in plugin_rows(listed.stdout)


def test_a_recipe_using_the_plugin_runs_and_records_its_metric(example_site, tmp_path):
    recipe = write_recipe(tmp_path)
    run = tmp_path / "run"
    done = finetune(
        "run", recipe, "--output", run, "--set", "training.max_steps=8", "--set", "training.eval_every=2",
        path=[example_site], timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    environment = json.loads((run / "environment.json").read_text(encoding="utf-8"))
    assert environment["plugins"]["example"] == f"{EXAMPLE_VERSION} (finetune-plugin-example)"
    [data] = environment["data"]
    assert data["source"] == "keywords" and data["rows"] == ROWS and len(data["content_sha256"]) == 64
    sizes = environment["split_sizes"]
    assert sum(sizes.values()) == ROWS and sizes["validation"] > 0 and sizes["test"] > 0

    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    for split in ("validation", "test"):
        values = metrics[split]
        error_rate = values["error_rate"]
        assert 0.0 <= error_rate <= 1.0, values
        assert error_rate == pytest.approx(1.0 - values["accuracy"], abs=1e-9), values
        wrong = error_rate * sizes[split]  # a share of the split's rows
        assert wrong == pytest.approx(round(wrong), abs=1e-6), (split, values, sizes)

    # best_metric = "error_rate" with greater_is_better = False: the run ends with the weights of the
    # evaluation with the lowest error rate, so the final validation figure is the minimum seen.
    evaluations = [
        record["error_rate"]
        for record in map(json.loads, (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines())
        if record.get("split") == "validation" and record.get("step") is not None and "error_rate" in record
    ]
    assert len(evaluations) >= 2, evaluations
    assert metrics["validation"]["error_rate"] == pytest.approx(min(evaluations)), evaluations


def test_a_broken_plugin_is_reported_and_breaks_nothing_else(example_site, tmp_path):
    source = tmp_path / "broken-src"
    source.mkdir()
    (source / "pyproject.toml").write_text(BROKEN_PYPROJECT, encoding="utf-8")
    (source / "finetune_broken_import.py").write_text(BROKEN_IMPORT, encoding="utf-8")
    (source / "finetune_broken_hook.py").write_text(BROKEN_HOOK, encoding="utf-8")
    broken_site = pip_install(source, tmp_path / "broken-site")
    path = [broken_site, example_site]

    done = finetune("plugins", path=path)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = plugin_rows(done.stdout)
    assert rows["broken"] == ["0.0.1", "finetune-plugin-broken", "failed (see below)"], done.stdout
    assert rows["broken_hook"] == ["0.0.1", "finetune-plugin-broken", "failed (see below)"], done.stdout
    failures = [line for line in done.stdout.splitlines() if line.startswith("failed:")]
    assert len(failures) == 2, done.stdout
    assert any(
        "plugin 'broken': RuntimeError: this plugin is broken on purpose" in line
        and "finetune_broken_import.py" in line
        for line in failures
    ), failures
    assert any("plugin 'broken_hook': ValueError: cannot register on purpose" in line for line in failures), failures
    # The working plugin next to them is unaffected.
    assert rows["example"] == [EXAMPLE_VERSION, "finetune-plugin-example", "data source: keywords; metric: error_rate"]

    quickstart = ROOT / "recipes" / "quickstart.toml"
    done = finetune("validate", quickstart, write_recipe(tmp_path), path=path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("✓") == 2, done.stdout
