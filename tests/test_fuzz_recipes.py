"""Fuzzing validation: a mutated shipped recipe is valid, or a user error; never another exception.

Each example takes a recipe from recipes/, changes it (a value replaced by a huge, negative, NaN,
long, deeply nested or wrongly typed one, a key removed or added, `extends` pointed somewhere odd)
and validates it in-process, as `finetune validate` does. The examples are derandomized, so a run in
CI sees the same recipes every time.
"""

from __future__ import annotations

import math
import shutil
import tomllib

import pytest
import tomli_w
from conftest import RECIPES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner import load_recipe
from runner.errors import LINE_CHARS, FinetuneError
from runner.recipe.load import read_recipe

# Some 10 to 20 s in all on two cores: every kind of mutation, many times, on every recipe.
SETTINGS = settings(
    max_examples=1500,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SHIPPED = {path.name: tomllib.loads(path.read_text(encoding="utf-8")) for path in sorted(RECIPES.glob("*.toml"))}

LONG = "a" * 300
ODD_STRINGS = [
    "",
    " ",
    ".",
    "/",
    "~",
    "..",
    "../" * 50 + "x.toml",
    LONG,
    LONG + ".csv",
    "/" + "/".join([LONG] * 3),
    "data/reviews.csv/",
    "data",
    "\x00",
    "{{ x }}",
    "{% for i in range(100000000) %}{% endfor %}",
    "x" * 100_000,
    "gpt2",
    "org/" + LONG,
    "ü" * 10,
]
ODD_NUMBERS = [0, -1, 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, -(2**63), 10**26, -(10**26), 2**64]
ODD_FLOATS = [0.0, -0.0, -1.0, 1e-320, 1e300, -1e300, math.inf, -math.inf, math.nan, 0.5]


def nested(depth: int, leaf: object = 1) -> object:
    """A value nested `depth` levels deep, alternating arrays and tables."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


scalars = st.one_of(
    st.sampled_from(ODD_NUMBERS),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(ODD_FLOATS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(ODD_STRINGS),
    st.text(max_size=12),
    st.booleans(),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.sampled_from(["type", "path", "x", "n_layer", "rows", LONG]), scalars, max_size=3),
    st.integers(min_value=30, max_value=45).map(nested),
    st.builds(list),  # a new one each time: the mutations below may add to it
    st.builds(dict),
)


def alike(value: object) -> st.SearchStrategy:
    """Odd values of the type `value` has."""
    if isinstance(value, bool):
        return st.booleans()
    if isinstance(value, int):
        return st.one_of(st.sampled_from(ODD_NUMBERS), st.integers(min_value=-(2**64), max_value=2**64))
    if isinstance(value, float):
        return st.one_of(st.sampled_from(ODD_FLOATS), st.floats())
    if isinstance(value, str):
        return st.one_of(st.sampled_from(ODD_STRINGS), st.text(max_size=12), st.just(value + LONG))
    return values


def key_paths(tree: object, prefix: tuple = ()) -> list[tuple]:
    """Every key path in a TOML tree, tables and arrays included."""
    found = []
    if isinstance(tree, dict):
        for key, value in tree.items():
            found.append((*prefix, key))
            found += key_paths(value, (*prefix, key))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            found.append((*prefix, index))
            found += key_paths(value, (*prefix, index))
    return found


def parent_of(tree: dict, path: tuple):
    node = tree
    for part in path[:-1]:
        node = node[part]
    return node


@st.composite
def mutated(draw):
    """(recipe name, mutated tree, text to put before it) for one shipped recipe."""
    name = draw(st.sampled_from(sorted(SHIPPED)))
    tree = tomllib.loads(tomli_w.dumps(SHIPPED[name]))  # a deep copy
    prefix = ""
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = key_paths(tree)
        kind = draw(st.sampled_from(["alike"] * 6 + ["replace"] * 2 + ["remove", "add"] * 2 + ["extends", "text"]))
        if kind in ("alike", "replace", "remove") and paths:
            path = draw(st.sampled_from(paths))
            parent = parent_of(tree, path)
            if kind == "remove" and isinstance(parent, dict):
                del parent[path[-1]]
            elif kind == "alike":  # an odd value of the same type: validation gets past the types to the checks
                parent[path[-1]] = draw(alike(parent[path[-1]]))
            else:
                parent[path[-1]] = draw(values)
        elif kind == "add":
            tables = [()] + [p for p in paths if isinstance(parent_of(tree, p)[p[-1]], dict)]
            table = parent_of(tree, (*draw(st.sampled_from(tables)), None))
            table[draw(st.sampled_from(["unknown", "typ", "epochs", "seed", "config", LONG]))] = draw(values)
        elif kind == "extends":
            tree["extends"] = draw(st.sampled_from([*ODD_STRINGS, name, "gpt2-tweet-sentiment.toml", "data"]))
        else:  # what a TOML writer cannot write: nesting beyond any stack, integers of 5,000 digits
            depth = draw(st.sampled_from([33, 400, 3000]))
            prefix += draw(st.sampled_from([f"deep = {'[' * depth}{']' * depth}\n", "huge = " + "9" * 5000 + "\n"]))
    return name, tree, prefix


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A copy of recipes/ (with its data), where the mutated recipe is written beside the others."""
    directory = tmp_path_factory.mktemp("fuzz") / "recipes"
    shutil.copytree(RECIPES, directory)
    return directory


def valid_or_user_error(path, overrides=None) -> None:
    """The whole property: validation succeeds, or raises a FinetuneError whose message is short."""
    try:
        load_recipe(path, overrides)
    except FinetuneError as exc:
        text = exc.render()
        assert text and "Traceback" not in text
        assert all(len(line) <= LINE_CHARS + 100 for line in text.splitlines()), "an error echoes a huge value"


@SETTINGS
@given(case=mutated())
def test_mutated_shipped_recipes_are_valid_or_user_errors(workdir, case):
    name, tree, prefix = case
    path = workdir / f"fuzz-{name}"
    path.write_text(prefix + tomli_w.dumps(tree), encoding="utf-8")
    valid_or_user_error(path)


key_texts = st.one_of(
    st.sampled_from(
        [
            "training.epochs",
            "run.seed",
            "model.config.n_layer",
            "data.sources[0].path",
            "task.template",
            "extends",
            "training",
            "a.b.c",
            "data.sources[9]",
            "metrics[0]",
            "x" * 500,
        ]
    ),  # fmt: skip
    st.text(alphabet="abc._[]0123456789", max_size=12),
)
value_texts = st.one_of(
    st.sampled_from(
        [
            "1e300",
            "-1",
            "nan",
            "inf",
            "2**63",
            "9" * 5000,
            "[" * 3000 + "]" * 3000,
            '"' + LONG + '"',
            "{a = 1}",
            "[1, 2",
            '"unterminated',
            "true",
            "'x'",
            "",
            "=",
            "[[]]",
        ]
    ),  # fmt: skip
    st.text(max_size=12),
)


@settings(SETTINGS, max_examples=600)
@given(key=key_texts, value=value_texts)
def test_any_override_is_valid_or_a_user_error(key, value):
    valid_or_user_error(RECIPES / "quickstart.toml", [f"{key}={value}"])


def test_the_fuzzed_recipes_themselves_validate():
    # the property above means something only if the unmutated recipes pass
    for name in SHIPPED:
        read_recipe(RECIPES / name)
        load_recipe(RECIPES / name)
