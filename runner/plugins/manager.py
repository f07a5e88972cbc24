"""Loading plugins: built-ins first, then installed entry points of group `finetune`.

Environment variables, as in pytest and llm:
- FINETUNE_DISABLE_PLUGINS=a,b  skip these plugins (entry-point or built-in plugin names: plugins.BUILTIN);
- FINETUNE_LOAD_PLUGINS=a,b     load only these third-party plugins (empty: none of them).

A plugin that fails to import, or whose registration hook raises, is recorded with its error and
shown by `finetune plugins`; it does not break runs that do not use it.
"""

from __future__ import annotations

import importlib
import os
import traceback
from importlib.metadata import entry_points

import pluggy

from runner import __version__, hookspecs
from runner.components import KINDS
from runner.plugins.packs import BUILTIN_PACK, shipped_recipes_dir
from runner.plugins.registry import PluginInfo, Registry

GROUP = "finetune"
HOOK_OF_KIND = {
    "data_source": "register_data_sources",
    "tokenizer": "register_tokenizers",
    "model": "register_models",
    "task": "register_tasks",
    "strategy": "register_strategies",
    "trainer": "register_trainers",
    "objective": "register_objectives",
    "reward": "register_rewards",
    "extractor": "register_extractors",
    "engine": "register_engines",
    "metric": "register_metrics",
    "reporter": "register_reporters",
    "audit": "register_audits",
}
assert set(HOOK_OF_KIND) == set(KINDS)


def _env_list(name: str) -> set[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return {item.strip() for item in value.split(",") if item.strip()}


def _short(module_name: str) -> str:
    return module_name.rsplit(".", 1)[-1]


class Plugins:
    """A pluggy plugin manager together with the registry its plugins filled."""

    def __init__(self, extra: list[object] | None = None):
        from plugins import BUILTIN

        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.registry = Registry()
        self.packs = self.registry.packs  # recipe packs: the shipped recipes first, then the installed ones
        self.packs.add(BUILTIN_PACK, __version__, "built-in").register(shipped_recipes_dir())
        disabled = _env_list("FINETUNE_DISABLE_PLUGINS") or set()
        only = _env_list("FINETUNE_LOAD_PLUGINS")

        for name, module_name in BUILTIN.items():
            if name in disabled:
                continue
            info = PluginInfo(name, __version__, "built-in")
            self._load(info, lambda m=module_name: importlib.import_module(m))

        for ep in entry_points(group=GROUP):
            if ep.name in disabled or (only is not None and ep.name not in only):
                continue
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            self._load(PluginInfo(ep.name, version, dist), ep.load)

        for obj in extra or []:  # plugins registered in-process (tests, embedding)
            name = getattr(obj, "__name__", type(obj).__name__)
            self._load(PluginInfo(_short(name), "", "in-process"), lambda o=obj: o)

        self._collect()

    def _load(self, info: PluginInfo, load) -> None:
        if info.name in self.registry.plugins:
            # A second plugin of one name would shadow the first (a built-in, say): refuse it.
            taken = self.registry.plugins[info.name]
            info.error = (
                f"the plugin name '{info.name}' is already taken by {taken.source} plugin '{taken.name}'; "
                "rename this entry point"
            )
            self.registry.plugins[f"{info.name} ({info.source})"] = info
            return
        self.registry.plugins[info.name] = info
        try:
            self.pm.register(load(), name=info.name)
        except Exception as exc:  # a broken plugin must not break unrelated runs
            info.error = _describe(exc)

    def _collect(self) -> None:
        for kind, hook_name in HOOK_OF_KIND.items():
            hook = getattr(self.pm.hook, hook_name)
            # Call each implementation on its own so that every component is attributed to its
            # plugin and one plugin's failure does not stop the others from registering.
            for impl in hook.get_hookimpls():  # in registration order: built-ins first
                info = self.registry.plugins[impl.plugin_name]
                if info.error:
                    continue

                def register(cls, kind=kind, plugin=impl.plugin_name):
                    self.registry.add(kind, cls, plugin)
                    self.registry.plugins[plugin].components.append((kind, cls.name))

                try:
                    impl.function(register=register)
                except Exception as exc:
                    info.error = _describe(exc)
        self._collect_recipes()

    def _collect_recipes(self) -> None:
        for impl in self.pm.hook.register_recipes.get_hookimpls():
            info = self.registry.plugins[impl.plugin_name]
            if info.error:
                continue
            # A pack is named after its distribution (what `pip install` and `extends` name);
            # a built-in plugin adds to the runner's own pack, an in-process one is named itself.
            name = {"built-in": BUILTIN_PACK, "in-process": info.name}.get(info.source, info.source)
            pack = self.packs.add(name, info.version or "in-process", info.name)
            try:
                impl.function(register=pack.register)
            except Exception as exc:  # a broken pack, like a broken plugin, breaks nothing else
                info.error = _describe(exc)

    @property
    def hook(self):
        return self.pm.hook


def _describe(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


_DEFAULT: Plugins | None = None


def get_plugins() -> Plugins:
    """The process-wide plugin manager, loaded on first use."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Plugins()
    return _DEFAULT


def create_component(kind: str, value: str | dict):
    """The component an option typed `runner.ComponentOf(kind)` names (validated with the recipe): a name,
    or a table with `type` and the component's options."""
    from runner.errors import FinetuneError

    table = {"type": value} if isinstance(value, str) else dict(value)
    name = table.pop("type", None)
    cls = get_plugins().registry.get(kind, name) if isinstance(name, str) else None
    if cls is None:
        noun = kind.replace("_", " ")
        raise FinetuneError(f"no {noun} {name!r} is registered", hint=f"finetune reference --kind {kind}")
    return cls(cls.Options.model_validate(table))


def reset_plugins(plugins: Plugins | None = None) -> None:
    """Replace the process-wide plugin manager (tests use a fresh one)."""
    global _DEFAULT
    _DEFAULT = plugins
