"""`finetune new plugin NAME`: a plugin package that installs, registers a strategy, and passes the
strategy contract tests from the first minute.

The package is laid out under `src/`: a module at the project's top (`NAME/NAME.py`) is shadowed,
for anyone working in the folder above it, by the folder `NAME/` itself (a namespace package found
through the current directory before an editable install's finder), and the plugin then silently
registers nothing. Under `src/` the folder holds no importable code, so the installed package wins.
"""

from __future__ import annotations

import re
from pathlib import Path

from runner.errors import FinetuneError

PYPROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "0.1.0"
description = "A finetune-runner plugin: the `{module}` strategy."
requires-python = ">=3.11"
dependencies = ["finetune-runner"]

[project.optional-dependencies]
test = ["pytest"]

# finetune-runner loads every entry point of this group; the name is the plugin's name.
[project.entry-points.finetune]
{module} = "{module}"

# The src layout: only the installed package is importable, never the folder of that name.
[tool.setuptools.packages.find]
where = ["src"]

[tool.pytest.ini_options]
testpaths = ["tests"]
# The tests import the installed package, not files beside them.
addopts = ["--import-mode=importlib"]
"""

MODULE = '''\
"""{name}: a finetune-runner plugin registering the strategy `{module}`.

Scaffolded by `finetune new plugin`. It implements BitFit (only bias terms and the task head
train) as a starting point: change `apply` to decide what trains. Keep heavy imports (torch,
transformers) inside methods, so that `finetune validate` stays fast.
"""

from pydantic import Field
from runner import Options, Strategy, hookimpl

HEADS = ("score.", "classifier.", "lm_head.")


class {cls}Options(Options):
    train_head: bool = Field(default=True, description="Also train the task head.")


class {cls}(Strategy):
    """BitFit: only bias terms (and the task head) train."""

    name = "{module}"
    Options = {cls}Options

    def apply(self, model, ctx, spec):
        head = HEADS if self.options.train_head else ()
        for name, param in model.named_parameters():
            param.requires_grad_(name.endswith(".bias") or name.startswith(head))
        return model


@hookimpl
def register_strategies(register):
    register({cls})
'''

TEST = '''\
"""The strategy contract every finetune-runner strategy passes (see runner.testing)."""

from runner.testing import StrategyContract

import {module}


def test_the_installed_package_registers_the_strategy(finetune_plugins):
    # A folder `{module}` in the current directory would be imported instead: an empty
    # namespace package that registers nothing (`finetune plugins` warns about it).
    assert {module}.__file__, f"not the installed package: {{{module}.__path__}}"
    registered = finetune_plugins.registry.get("strategy", "{module}")
    assert registered is {module}.{cls}


class Test{cls}(StrategyContract):
    strategy = {{"type": "{module}"}}

    def trains(self, name):
        return name.endswith(".bias") or name.startswith(("score.", "classifier.", "lm_head."))
'''

README = """\
# {name}

A [finetune-runner](https://pypi.org/project/finetune-runner/) plugin: the strategy `{module}`.

```
pip install -e .           # into the environment where finetune-runner is installed
finetune plugins           # lists `{module}`
pytest tests               # the strategy contract: what trains, one step lowers the loss,
                           # save then load reproduces the logits, merging
finetune reference --plugin {name}
                           # its options, as the recipe reference shows them
```

The code is in `src/{module}/__init__.py`: under `src/`, so that the folder `{name}/` never
shadows the installed package when you work in the folder above it.

Use it in a recipe:

```toml
[strategy]
type = "{module}"
```
"""


def new_plugin(name: str, parent: Path) -> Path:
    """Write the package `parent/name`; return its directory."""
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", name):
        raise FinetuneError(
            f"plugin name '{name}': use lower-case letters, digits, '-' and '_', starting with a letter"
        )
    module = name.replace("-", "_")
    cls = "".join(part.capitalize() for part in module.split("_") if part)
    root = parent / name
    if root.exists():
        raise FinetuneError(f"{root} already exists")
    package = root / "src" / module
    package.mkdir(parents=True)
    (root / "tests").mkdir()
    values = {"name": name, "module": module, "cls": cls}
    (root / "pyproject.toml").write_text(PYPROJECT.format(**values), encoding="utf-8")
    (package / "__init__.py").write_text(MODULE.format(**values), encoding="utf-8")
    (root / "tests" / f"test_{module}.py").write_text(TEST.format(**values), encoding="utf-8")
    (root / "README.md").write_text(README.format(**values), encoding="utf-8")
    return root


def cmd_new(args) -> int:
    root = new_plugin(args.name, args.dir)
    print(f"created {root}: pip install -e {root}, then pytest {root / 'tests'}")
    return 0
