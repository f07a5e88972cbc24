"""`finetune new plugin NAME [--kind strategy|reward]`: a plugin package that installs, registers a
strategy (BitFit) or a reward (words an answer must contain), and passes that kind's contract tests
from the first minute.

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
description = "A finetune-runner plugin: the `{module}` {kind}."
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


REWARD_MODULE = '''\
"""{name}: a finetune-runner plugin registering the reward `{module}`.

Scaffolded by `finetune new plugin --kind reward`. As generated it scores an answer `matched` when it
contains any of `words` (whole words, case-insensitive), else `unmatched`: a starting point. Change
`scores` to decide what an answer earns (None: the reward does not apply to it) and the options class
for what a recipe sets; then the examples and the behaviour test in tests/. `rows[i]` is the answer's
training row (its columns, and `reference`: the task's reference answer); name a column it needs in
`columns`, so that a run without it fails as it loads. Load anything heavy (a model: torch,
transformers) in `prepare`, never at import, so that `finetune validate` stays fast; free it in `close`.
"""

import re

from pydantic import Field, field_validator
from runner import Reward, RewardOptions, hookimpl


class {cls}Options(RewardOptions):
    words: list[str] = Field(
        min_length=1,
        description="Words or phrases; an answer containing any of them (as whole words) scores `matched`.",
    )
    case_sensitive: bool = Field(default=False, description="Match the words' case too.")
    matched: float = Field(default=1.0, allow_inf_nan=False, description="The score of an answer with a word.")
    unmatched: float = Field(default=0.0, allow_inf_nan=False, description="The score of one without.")

    @field_validator("words")
    @classmethod
    def _not_blank(cls, words: list[str]) -> list[str]:
        if not all(word.strip() for word in words):
            raise ValueError("an empty word would match every answer")
        return words


class {cls}(Reward):
    """`matched` for an answer that contains any of `words`, else `unmatched`."""

    name = "{module}"
    Options = {cls}Options

    def __init__(self, options: {cls}Options):
        super().__init__(options)
        # A phrase matches across any whitespace (a line break); the lookarounds keep words whole
        # ("please" not in "pleased") even for words that begin or end with punctuation.
        words = [r"\\s+".join(map(re.escape, word.split())) for word in options.words]
        flags = 0 if options.case_sensitive else re.IGNORECASE
        self.pattern = re.compile(r"(?<!\\w)(?:" + "|".join(words) + r")(?!\\w)", flags)

    def scores(self, prompts, completions, rows):
        o = self.options
        return [o.matched if self.pattern.search(text) else o.unmatched for text in completions]

    def passes(self, score):
        """An answer with a word passes (the evaluation's pass rate); where `matched` is not the higher
        score the words are a penalty and the reward judges nothing."""
        o = self.options
        return None if score is None or o.matched <= o.unmatched else score == o.matched


@hookimpl
def register_rewards(register):
    register({cls})
'''

REWARD_TEST = '''\
"""The reward contract every finetune-runner reward passes (see runner.testing), and what this one scores.

When you change what the reward scores, change `examples` (answers it scores, as a run hands them over)
and the behaviour test below with it."""

import pytest
from runner.testing import RewardContract

import {module}

OPTIONS = {{"words": ["please", "thank you"]}}


def test_the_installed_package_registers_the_reward(finetune_plugins):
    # A folder `{module}` in the current directory would be imported instead: an empty
    # namespace package that registers nothing (`finetune plugins` warns about it).
    assert {module}.__file__, f"not the installed package: {{{module}.__path__}}"
    registered = finetune_plugins.registry.get("reward", "{module}")
    assert registered is {module}.{cls}


class Test{cls}(RewardContract):
    reward = "{module}"
    options = OPTIONS
    # (prompt, completion, row): the row holds the training row's columns and `reference`
    examples = [
        ("Ask for the salt.", "Pass the salt, please.", {{"reference": "Salt, please."}}),
        ("Ask for the salt.", "Salt. Now.", {{"reference": "Salt, please."}}),
        ("Thank the cook.", "Thank\\nyou, that was good.", {{"reference": "Thank you."}}),
    ]


def test_an_answer_with_one_of_the_words_scores_matched_and_passes():
    cls = {module}.{cls}
    reward = cls(cls.Options.model_validate({{**OPTIONS, "matched": 2.0}}))
    answers = ["PLEASE pass it.", "Pass it, thank   you.", "I am pleased.", "Thanks, you too.", ""]
    scores = reward.checked_scores(["Ask."] * len(answers), answers, [{{}}] * len(answers))
    assert scores == [2.0, 2.0, 0.0, 0.0, 0.0]
    assert [reward.passes(score) for score in scores] == [True, True, False, False, False]


def test_an_empty_word_is_refused():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="empty word"):
        {module}.{cls}.Options.model_validate({{"words": ["please", " "]}})
'''

REWARD_README = """\
# {name}

A [finetune-runner](https://pypi.org/project/finetune-runner/) plugin: the reward `{module}`, for
the trainers that learn from rewards (`grpo`).

```
pip install -e .           # into the environment where finetune-runner is installed
finetune plugins           # lists `{module}`
pytest tests               # the reward contract: registered, one finite score (or None) per answer,
                           # the same twice, whatever the batch; and what it scores
finetune reference --plugin {name}
                           # its options, as the recipe reference shows them
```

As generated it scores an answer `matched` (1.0) when it contains any of `words` as whole words,
else `unmatched` (0.0). Make it yours in `src/{module}/__init__.py`: `scores` decides what an
answer earns (None where the reward does not apply), the options class what a recipe sets; then
change the examples and the behaviour test in `tests/test_{module}.py` to match. The code lies
under `src/`, so that the folder `{name}/` never shadows the installed package when you work in
the folder above it.

Use it in a recipe, beside other rewards (the run adds them up, each times its `weight`):

```toml
[task]
type = "instruction"

[training]
type = "grpo"

[[rewards]]
type = "{module}"
words = ["please", "thank you"]
weight = 0.5
```
"""

# What each kind writes: the package's code, its tests, its README.
TEMPLATES = {
    "strategy": (MODULE, TEST, README),
    "reward": (REWARD_MODULE, REWARD_TEST, REWARD_README),
}


def new_plugin(name: str, parent: Path, kind: str = "strategy") -> Path:
    """Write the package `parent/name`, registering a component of `kind`; return its directory."""
    if kind not in TEMPLATES:
        raise FinetuneError(f"plugin kind '{kind}': the scaffold writes one of {', '.join(TEMPLATES)}")
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
    values = {"name": name, "module": module, "cls": cls, "kind": kind}
    code, tests, readme = TEMPLATES[kind]
    (root / "pyproject.toml").write_text(PYPROJECT.format(**values), encoding="utf-8")
    (package / "__init__.py").write_text(code.format(**values), encoding="utf-8")
    (root / "tests" / f"test_{module}.py").write_text(tests.format(**values), encoding="utf-8")
    (root / "README.md").write_text(readme.format(**values), encoding="utf-8")
    return root


def cmd_new(args) -> int:
    root = new_plugin(args.name, args.dir, args.kind)
    print(f"created {root}: pip install -e {root}, then pytest {root / 'tests'}")
    return 0
