"""Checks of a model `config` table: what can be told without torch, and what only the architecture can.

`static_problems` runs in `finetune validate`, which must not import torch (importing a transformers
config class does): it reads what it needs from transformers' source, like `_transformers_static`.
It refuses counts below 1, hidden sizes that the heads do not divide, unknown activation functions
and dtypes that are not floating-point types.

`built_problems` asks the architecture itself: it builds the config and the model on torch's
"meta" device (shapes only, no memory for weights, no download), so that whatever the modeling
code refuses is reported at the recipe key before any data is read. `finetune run` and
`finetune plan` run it after validation (see runner.recipe.build_check).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path

from runner import clip

# Keys that size the network; their value must be a count of at least 1. Only keys whose own
# default is a positive integer are checked, so an option where 0 means "off" is never refused.
_COUNT = re.compile(
    r"^(n_(layer|head|embd|inner|positions|ctx)|num_\w*(layers|heads|experts)|\w*_size|"
    r"max_position_embeddings|head_dim|d_model|d_ff|d_kv|dim|hidden_dim|n_heads|n_layers)$"
)
# (hidden size, number of heads) key pairs: each head gets hidden / heads dimensions.
_HEAD_SPLITS = (("n_embd", "n_head"), ("hidden_size", "num_attention_heads"), ("dim", "n_heads"))
# Architectures with a separate per-head size need no even split of the hidden size.
_OWN_HEAD_SIZE = ("head_dim", "d_kv")
_ACTIVATION_KEYS = ("activation_function", "hidden_act", "activation")
_DTYPE = re.compile(r"^(b?float\d*(_\w+)?|half|double)$")

Problem = tuple[tuple[str, ...], str]


@functools.cache
def activation_names() -> frozenset[str] | None:
    """The names transformers' ACT2FN knows, read from its source; None when it cannot be read."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or spec.origin is None:
        return None
    try:
        tree = ast.parse((Path(spec.origin).parent / "activations.py").read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return None
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if any(isinstance(t, ast.Name) and t.id == "ACT2CLS" for t in targets) and isinstance(node.value, ast.Dict):
            keys = [k.value for k in node.value.keys if isinstance(k, ast.Constant)]
            return frozenset(k for k in keys if isinstance(k, str)) or None
    return None


def static_problems(architecture: str, config: dict, fields: dict) -> Iterator[Problem]:
    """What is wrong with `config` that transformers' source tells without importing it."""
    for key, value in config.items():
        default = fields.get(key)
        if not _COUNT.match(key) or not (default is None or (isinstance(default, int) and default >= 1)):
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            yield ("config", key), f"must be a whole number (got {clip(repr(value))})"
        elif value < 1:
            yield ("config", key), f"must be at least 1 (got {value}): a model needs layers, heads and a size"
    if not any(k in fields for k in _OWN_HEAD_SIZE):
        for hidden_key, heads_key in _HEAD_SPLITS:
            hidden, heads = config.get(hidden_key, fields.get(hidden_key)), config.get(heads_key, fields.get(heads_key))
            if hidden_key not in fields or heads_key not in fields or not (hidden_key in config or heads_key in config):
                continue
            if isinstance(hidden, int) and isinstance(heads, int) and hidden > 0 and heads > 0 and hidden % heads:
                key = heads_key if heads_key in config else hidden_key
                yield (
                    ("config", key),
                    f"{heads_key} = {heads} does not divide {hidden_key} = {hidden}: each {architecture} attention "
                    f"head gets {hidden_key} / {heads_key} dimensions; make {hidden_key} a multiple of {heads_key}",
                )
    names = activation_names()
    for key in _ACTIVATION_KEYS:
        value = config.get(key)
        if names and key in fields and isinstance(value, str) and value not in names:
            yield ("config", key), f"unknown activation function {clip(value)!r}; known: {', '.join(sorted(names))}"
    for key in ("dtype", "torch_dtype"):
        value = config.get(key)
        if value is not None and (not isinstance(value, str) or not _DTYPE.match(value)):
            yield ("config", key), f"not a floating-point dtype: {clip(str(value))!r} (e.g. 'float32', 'bfloat16')"


def built_problems(architecture: str, config: dict) -> Iterator[Problem]:
    """Build the config and the model on the meta device; the architecture's own complaint, if any."""
    import torch
    from transformers import AutoConfig, AutoModel

    try:
        built = AutoConfig.for_model(architecture, **config)
        with torch.device("meta"):  # shapes only: no memory for the weights, however large
            AutoModel.from_config(built)
    except Exception as exc:  # the modeling code's own ValueError, KeyError, ZeroDivisionError, ...
        detail = f"{type(exc).__name__}: {clip(str(exc).strip(), 300)}"
        yield _blame(exc, config), f"the {architecture} architecture refuses this config: {detail}"


def _blame(exc: Exception, config: dict) -> tuple[str, ...]:
    """The config key an error is about: the one key it names; else the one key whose value it quotes,
    trying strings, then fractions, then integers (a small integer appears in many messages); else
    the whole `config` table."""
    text = str(exc)
    tiers = [
        [k for k in config if re.search(rf"\b{re.escape(k)}\b", text)],
        [k for k, v in config.items() if isinstance(v, str) and v and (f"'{v}'" in text or f'"{v}"' in text)],
        [k for k, v in config.items() if isinstance(v, float) and _mentions(text, repr(v))],
        [k for k, v in config.items() if isinstance(v, int) and not isinstance(v, bool) and _mentions(text, str(v))],
    ]
    for keys in tiers:
        if keys:
            return ("config", keys[0]) if len(keys) == 1 else ("config",)
    return ("config",)


def _mentions(text: str, number: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(number)}(?![\w.])", text) is not None
