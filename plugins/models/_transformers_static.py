"""What transformers knows about model architectures, read from its source files without importing
it (importing transformers imports torch, which `finetune validate` must not do).

Everything here is best effort: when the source does not have the expected shape, the answer is
None and the check is left to build time, where the real config class decides.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path


@functools.cache
def _root() -> Path | None:
    spec = importlib.util.find_spec("transformers")
    return Path(spec.origin).parent if spec and spec.origin else None


def _literal_dict(path: Path, name: str) -> dict | None:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            call = node.value
            if isinstance(call, ast.Call) and call.args:
                try:
                    return dict(ast.literal_eval(call.args[0]))
                except ValueError:
                    return None
    return None


@functools.cache
def architectures() -> dict[str, str] | None:
    """model_type -> config class name."""
    root = _root()
    return _literal_dict(root / "models" / "auto" / "auto_mappings.py", "CONFIG_MAPPING_NAMES") if root else None


def _fields(tree: ast.Module, class_name: str) -> tuple[dict, list[str], list[str]] | None:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            fields, aliases = {}, []
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    if "ClassVar" in ast.unparse(item.annotation):
                        continue
                    try:
                        fields[item.target.id] = ast.literal_eval(item.value) if item.value else None
                    except ValueError:
                        fields[item.target.id] = None
                elif isinstance(item, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "attribute_map" for t in item.targets
                ):
                    try:
                        aliases = list(ast.literal_eval(item.value))
                    except ValueError:
                        return None
            bases = [ast.unparse(b) for b in node.bases]
            return fields, aliases, bases
    return None


@functools.cache
def config_fields(model_type: str) -> dict | None:
    """The keys a config of this architecture accepts, with their default values; None if unknown."""
    root, names = _root(), architectures()
    if root is None or names is None or model_type not in names:
        return None
    special = _literal_dict(root / "models" / "auto" / "auto_mappings.py", "SPECIAL_MODEL_TYPE_TO_MODULE_NAME") or {}
    module = special.get(model_type, model_type.replace("-", "_"))
    path = root / "models" / module / f"configuration_{module}.py"
    base_path = root / "configuration_utils.py"
    try:
        own = _fields(ast.parse(path.read_text(encoding="utf-8")), names[model_type])
        base = _fields(ast.parse(base_path.read_text(encoding="utf-8")), "PreTrainedConfig")
    except (OSError, SyntaxError):
        return None
    if own is None or base is None:
        return None
    fields, aliases, bases = own
    if any(b not in ("PreTrainedConfig", "PretrainedConfig") for b in bases):
        return None  # inherits fields from another config: leave it to build time
    merged = {**base[0], **fields}
    for alias in aliases:
        merged.setdefault(alias, None)
    return merged
