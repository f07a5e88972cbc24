"""What plugins registered: components by kind and name, and recipe packs (runner.plugins.packs)."""

from __future__ import annotations

from dataclasses import dataclass, field

from runner.components import KINDS, Component
from runner.errors import PluginError
from runner.plugins.packs import Packs


@dataclass(frozen=True)
class Registration:
    cls: type[Component]
    plugin: str  # the plugin (module or entry point) that registered it


@dataclass
class PluginInfo:
    name: str
    version: str
    source: str  # "built-in" or the distribution that provides it
    error: str | None = None  # why it failed to load, if it did
    components: list[tuple[str, str]] = field(default_factory=list)  # (kind, name)


class Registry:
    """Components by kind and name. Two plugins registering one name is a conflict: the name is
    unusable until one of them is removed, and using it is an error naming both."""

    def __init__(self) -> None:
        self._components: dict[str, dict[str, Registration]] = {kind: {} for kind in KINDS}
        self.conflicts: dict[tuple[str, str], list[Registration]] = {}
        self.plugins: dict[str, PluginInfo] = {}
        # Recipe packs by name: what `extends = "pack:recipe"` and `pack:path` file options reach.
        self.packs = Packs()

    def add(self, kind: str, cls: type, plugin: str) -> None:
        base = KINDS[kind]
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(f"plugin {plugin!r} registered {cls!r} as a {kind}, but it is not a {base.__name__}")
        if not cls.name:
            raise PluginError(f"plugin {plugin!r}: {cls.__name__} has no `name`")
        registration = Registration(cls, plugin)
        key = (kind, cls.name)
        if key in self.conflicts:
            self.conflicts[key].append(registration)
            return
        existing = self._components[kind].get(cls.name)
        if existing is not None and existing.cls is not cls:
            self.conflicts[key] = [existing, registration]
            del self._components[kind][cls.name]
            return
        self._components[kind][cls.name] = registration

    def get(self, kind: str, name: str) -> type[Component] | None:
        """The component class, or None if unknown. Raises PluginError for a conflicting name."""
        if (kind, name) in self.conflicts:
            plugins = " and ".join(repr(r.plugin) for r in self.conflicts[(kind, name)])
            raise PluginError(
                f"the {kind.replace('_', ' ')} {name!r} is registered by two plugins: {plugins}",
                hint="uninstall one of them, or disable it with FINETUNE_DISABLE_PLUGINS=<name>",
            )
        registration = self._components[kind].get(name)
        return registration.cls if registration else None

    def names(self, kind: str) -> list[str]:
        return sorted({*self._components[kind], *(n for k, n in self.conflicts if k == kind)})

    def registrations(self, kind: str) -> list[tuple[str, Registration]]:
        return sorted(self._components[kind].items())
