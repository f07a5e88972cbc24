"""The plugin system: built-ins, conflicts, failing plugins, enabling and disabling."""

import pytest
from conftest import cli, tiny_recipe

from runner import Metric, Options, Strategy, hookimpl, load_recipe
from runner.errors import RecipeError
from runner.plugins.manager import Plugins, get_plugins, reset_plugins
from runner.plugins.registry import Registry


class NoOptions(Options):
    pass


class OtherFull(Strategy):
    """A second strategy called 'full'."""

    name = "full"
    Options = NoOptions


class Shiny(Strategy):
    """A new strategy."""

    name = "shiny"
    Options = NoOptions


class ConflictingPlugin:
    __name__ = "conflicting"

    @hookimpl
    def register_strategies(self, register):
        register(OtherFull)
        register(Shiny)


class BrokenPlugin:
    __name__ = "broken"

    @hookimpl
    def register_metrics(self, register):
        raise RuntimeError("cannot register")


class WrongKindPlugin:
    __name__ = "wrongkind"

    @hookimpl
    def register_metrics(self, register):
        register(Shiny)  # a strategy offered as a metric


def test_builtins_register_every_kind():
    registry = get_plugins().registry
    assert {"files", "hub", "inline", "synthetic"} <= set(registry.names("data_source"))
    assert {"pretrained", "trained"} <= set(registry.names("tokenizer"))
    assert {"pretrained", "config"} <= set(registry.names("model"))
    assert {"classification", "regression", "causal_lm"} <= set(registry.names("task"))
    assert {"full", "freeze", "lora"} <= set(registry.names("strategy"))
    assert registry.names("trainer") == ["cpo", "dpo", "grpo", "hf", "kto", "orpo", "reward", "rloo", "simpo"]
    assert registry.names("reward") == ["answer_match", "format", "length_penalty", "reward_model"]
    assert {"accuracy", "precision", "recall", "f1", "perplexity"} <= set(registry.names("metric"))
    assert "rich" in registry.names("reporter")


def test_every_component_options_reject_unknown_keys_at_every_depth():
    from pydantic import BaseModel

    def check(model: type[BaseModel], seen: set):
        if model in seen:
            return
        seen.add(model)
        assert model.model_config.get("extra") == "forbid", model
        for field in model.model_fields.values():
            for sub in getattr(field.annotation, "__args__", ()) + (field.annotation,):
                if isinstance(sub, type) and issubclass(sub, BaseModel):
                    check(sub, seen)

    registry = get_plugins().registry
    seen: set = set()
    for kind in ("data_source", "tokenizer", "model", "task", "strategy", "trainer", "metric", "reporter"):
        for _name, registration in registry.registrations(kind):
            assert registration.cls.summary(), f"{registration.cls} has no docstring summary"
            check(registration.cls.Options, seen)


def test_two_plugins_with_one_name_is_an_error_naming_both(tmp_path):
    plugins = Plugins(extra=[ConflictingPlugin()])
    reset_plugins(plugins)
    assert "shiny" in plugins.registry.names("strategy")  # the rest of the plugin still registers
    path = tiny_recipe(tmp_path / "r.toml")
    with pytest.raises(RecipeError) as err:
        load_recipe(path, ["strategy.type=full"])
    message = err.value.issues[0].render()
    assert "registered by two plugins: 'strategy_full' and 'conflicting'" in message
    load_recipe(path, ["strategy.type=shiny"])  # unrelated names keep working


def test_plugins_command_shows_conflicts_and_failures(capsys):
    reset_plugins(Plugins(extra=[ConflictingPlugin(), BrokenPlugin(), WrongKindPlugin()]))
    assert cli("plugins") == 0
    out = capsys.readouterr().out
    assert "conflict: strategy 'full' is registered by strategy_full and conflicting" in out
    assert "RuntimeError: cannot register" in out
    assert "not a Metric" in " ".join(out.split())


def test_a_failing_plugin_does_not_break_other_runs(tmp_path):
    reset_plugins(Plugins(extra=[BrokenPlugin()]))
    load_recipe(tiny_recipe(tmp_path / "r.toml"))


def test_disable_a_builtin_plugin(monkeypatch, tmp_path):
    monkeypatch.setenv("FINETUNE_DISABLE_PLUGINS", "strategy_peft, metrics")
    plugins = Plugins()
    assert "lora" not in plugins.registry.names("strategy")
    assert "strategy_peft" not in plugins.registry.plugins
    reset_plugins(plugins)
    with pytest.raises(RecipeError) as err:
        load_recipe(tiny_recipe(tmp_path / "r.toml"), ["strategy.type=lora"])
    assert "unknown strategy 'lora'" in err.value.message


def test_registry_rejects_classes_of_the_wrong_kind():
    from runner.errors import PluginError

    registry = Registry()
    with pytest.raises(PluginError, match="not a Metric"):
        registry.add("metric", Shiny, "p")

    class Nameless(Metric):
        pass

    with pytest.raises(PluginError, match="has no `name`"):
        registry.add("metric", Nameless, "p")


def test_lifecycle_hooks_are_called_once_per_run(tmp_path):
    from conftest import run_recipe

    calls = []

    class Recorder:
        __name__ = "recorder"

        @hookimpl
        def on_run_start(self, run):
            calls.append(("start", run["name"]))

        @hookimpl
        def on_evaluation(self, run, split, step, metrics):
            calls.append(("eval", split, step is None, "accuracy" in metrics))

        @hookimpl
        def on_run_end(self, run, status, metrics):
            calls.append(("end", status, sorted(metrics)))

    reset_plugins(Plugins(extra=[Recorder()]))
    run_recipe(tiny_recipe(tmp_path / "r.toml", rows=120, epochs=1), tmp_path / "run")
    assert calls[0] == ("start", "r")
    assert ("eval", "validation", False, True) in calls  # during training
    assert ("eval", "test", True, True) in calls  # final
    assert calls[-1] == ("end", "completed", ["test", "train", "validation"])
    assert sum(1 for c in calls if c[0] == "start") == 1


def test_a_plugin_named_like_a_builtin_is_refused_not_shadowing_it(tmp_path):
    class Impostor:
        __name__ = "plugins.metrics"  # short name 'metrics', as the built-in

        @hookimpl
        def register_metrics(self, register):
            raise AssertionError("must not be called")

    plugins = Plugins(extra=[Impostor()])
    assert "accuracy" in plugins.registry.names("metric")
    refused = plugins.registry.plugins["metrics (in-process)"]
    assert "already taken by built-in plugin 'metrics'" in refused.error
    reset_plugins(plugins)
    load_recipe(tiny_recipe(tmp_path / "r.toml"))


def test_every_component_accepts_its_own_resolved_options():
    """recipe.resolved.toml writes every option: a component must accept its defaults written out."""
    from pydantic import ValidationError

    registry = get_plugins().registry
    checked = 0
    for kind in ("data_source", "tokenizer", "model", "task", "strategy", "trainer", "metric", "reporter"):
        for _name, registration in registry.registrations(kind):
            options_cls = registration.cls.Options
            try:
                defaults = options_cls()
            except ValidationError:
                continue  # has required options: the quickstart round trip covers those
            options_cls.model_validate(defaults.model_dump(mode="json", exclude_none=True))
            checked += 1
    assert checked >= 15


class SilentPlugin:
    """A plugin object that implements no hook at all."""

    __name__ = "silent"


class EmptyHookPlugin:
    __name__ = "emptyhook"

    @hookimpl
    def register_strategies(self, register):
        pass


class RecipesOnlyPlugin:
    __name__ = "recipesonly"

    @hookimpl
    def register_recipes(self, register):
        pass


def test_plugins_warns_about_a_plugin_that_registers_nothing(capsys):
    reset_plugins(Plugins(extra=[SilentPlugin(), EmptyHookPlugin(), RecipesOnlyPlugin()]))
    assert cli("plugins") == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "warning: plugin silent registered no components:" in out
    assert "has no @hookimpl registration hooks" in out
    assert "warning: plugin emptyhook registered no components: its hooks (register_strategies) called" in out
    assert "recipesonly registered" not in out  # a recipe pack need not register components
    assert out.count("registered no components") == 2  # and no built-in is warned about


def test_plugins_names_a_folder_that_shadows_the_installed_package(tmp_path, monkeypatch, capsys):
    """`finetune plugins` run from the folder above a flat plugin project: the project's folder is
    imported instead of the installed module, as an empty namespace package."""
    import importlib
    import sys

    (tmp_path / "shadowed").mkdir()  # a project folder, no __init__.py: a namespace package
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "shadowed", raising=False)
    module = importlib.import_module("shadowed")
    assert module.__file__ is None
    reset_plugins(Plugins(extra=[module]))
    assert cli("plugins") == 0
    out = " ".join(capsys.readouterr().out.split())
    assert (
        f"warning: plugin shadowed registered no components: 'shadowed' was imported as an empty namespace "
        f"package from {tmp_path / 'shadowed'}: a folder named 'shadowed' in the current directory shadows "
        "the installed package" in out
    )


def test_plugins_names_a_module_under_the_current_directory(tmp_path, monkeypatch, capsys):
    import importlib
    import sys

    (tmp_path / "localmod.py").write_text('"""Nothing registered here."""\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "localmod", raising=False)
    reset_plugins(Plugins(extra=[importlib.import_module("localmod")]))
    assert cli("plugins") == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "plugin localmod registered no components: 'localmod' was imported from" in out
    assert "under the current directory" in out


def test_a_plugin_failing_at_run_start_leaves_the_run_failed_not_running(tmp_path):
    from conftest import run_recipe

    from runner.storage.rundir import RunDir

    class Broken:
        __name__ = "broken"

        @hookimpl
        def on_run_start(self, run):
            raise RuntimeError("tracker server unreachable")

    reset_plugins(Plugins(extra=[Broken()]))
    with pytest.raises(RuntimeError, match="tracker server unreachable"):
        run_recipe(tiny_recipe(tmp_path / "r.toml", rows=120, epochs=1), tmp_path / "run")
    status = RunDir(tmp_path / "run").status()
    assert status["state"] == "failed" and "tracker server unreachable" in status["error"]
