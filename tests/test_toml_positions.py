"""Every key of a TOML document is found at the line and column where it is written."""

import tomllib

import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.recipe.toml_positions import key_positions

DOC = '''\
# a comment with = and [brackets]
extends = "base.toml"
[run]
name = "x" # trailing comment
seed = 3

[[data.sources]]
type = "files"
path = """multi
"line" \\"""
"""
columns = { text = "tweet", "label" = 'sentiment' }

[[data.sources]]
type = 'inline'
rows = [
  { text = "a]", label = "b}" },  # comment
  { text = 'c#', label = "d" },
]
[data.sources.extra]
x.y = 1979-05-27 07:32:00
[[metrics]]
type = "f1"
'''


def test_handwritten_document():
    tomllib.loads(DOC)  # the scanner only ever sees valid TOML
    pos = key_positions(DOC)
    assert pos[("extends",)] == (2, 1)
    assert pos[("run", "seed")] == (5, 1)
    assert pos[("data", "sources", 0)] == (7, 1)
    assert pos[("data", "sources", 0, "columns", "label")] == (12, 29)
    assert pos[("data", "sources", 1, "type")] == (15, 1)
    assert pos[("data", "sources", 1, "rows", 1, "label")] == (18, 18)
    assert pos[("data", "sources", 1, "extra", "x", "y")] == (21, 3)
    assert pos[("metrics", 0, "type")] == (23, 1)


keys = st.text(alphabet="abcxyz_-", min_size=1, max_size=6)
scalars = st.one_of(
    st.integers(-1000, 1000),
    st.booleans(),
    st.text(alphabet="ab \"\\#=[]{}\n'", max_size=12),
    st.floats(allow_nan=False, allow_infinity=False),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=3)),
    max_leaves=12,
)
documents = st.dictionaries(keys, values, max_size=5)


def _paths(value, prefix=()):
    if isinstance(value, dict):
        for k, v in value.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i))


@settings(max_examples=300, deadline=None)
@given(documents, st.booleans())
def test_every_key_of_generated_documents_is_located(doc, multiline):
    text = tomli_w.dumps(doc, multiline_strings=multiline)
    assert tomllib.loads(text) == doc
    positions = key_positions(text)
    lines = text.splitlines()
    for path in _paths(doc):
        assert path in positions, (path, text)
        line, col = positions[path]
        if isinstance(path[-1], str):
            # a key is written at its position, bare or quoted
            written = lines[line - 1][col - 1 :]
            assert written.startswith(
                (path[-1], f'"{path[-1]}"', f"[{path[-1]}", f"[[{path[-1]}")
            ) or written.startswith("["), (path, text)
