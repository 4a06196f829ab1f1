"""``mqkit.Plugin`` (hooks declared for the type checker only) and plugins built with the broker.

The type checks themselves are in tests/typing/; here, what happens at run time: the base
class adds no hook, a subclass implements exactly what it defines, mqkit's own plugins are
called without adapters, and plugin classes are built as ``cls(broker)`` or ``cls()``.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import mqkit
from mqkit.core import hookspecs
from mqkit.core.hookspecs import HOOK_NAMES

ROOT = Path(__file__).resolve().parents[2]
NOT_CONVERTED: set[str] = set()  # every built-in plugin subclasses mqkit.Plugin


def all_builtins_config() -> mqkit.Config:
    """Every built-in plugin (persistence aside) switched on; nothing binds a port."""
    return mqkit.Config(
        enable_ack_support=True,
        enable_dead_letter_queue=True,
        dead_letter_topic="dlq",
        enable_metrics=True,
        enable_priority_queue=True,
        enable_transactions=True,
        enable_mqtt=True,
        max_memory_usage=1 << 30,
        message_ttl=60,
    )


def implemented(broker: mqkit.Broker, plugin_name: str) -> set[str]:
    """The hooks the broker calls ``plugin_name`` for (the compiled facade's view)."""
    return {
        hook
        for hook, impls in broker.hooks.impls.items()
        if any(name == plugin_name for name, _ in impls)
    }


# --- the base class at run time -----------------------------------------------------------------


def test_the_base_class_has_no_hook_at_run_time() -> None:
    assert [name for name in dir(mqkit.Plugin) if name.startswith("mqkit_")] == []


def test_a_subclass_implements_exactly_the_hooks_it_defines() -> None:
    class OnlyPublish(mqkit.Plugin):
        plugin_info = mqkit.PluginInfo(name="only-publish")

        def __init__(self, broker: mqkit.Broker) -> None:
            self.published = 0

        @mqkit.hookimpl
        def mqkit_publish(
            self, broker: mqkit.Broker, topic: str, message: mqkit.Message
        ) -> bool | None:
            self.published += 1
            return None

    cfg = mqkit.Config(enable_metrics=False, enable_priority_queue=False, disable_plugins=("ttl",))
    with mqkit.Broker(cfg, plugins=[OnlyPublish]) as broker:
        assert broker.plugin_names() == ["only-publish"]
        assert implemented(broker, "only-publish") == {"mqkit_publish"}
        hooks = broker.hooks
        assert hooks.publish_on
        assert not (hooks.deliver_on or hooks.delivered_on or hooks.drop_on or hooks.error_on)
        assert not (hooks.accept_on or hooks.published_on)
        sub = broker.subscribe("t")
        broker.publish("t", mqkit.Message("m-1"))
        assert sub.get(timeout=1).id == "m-1"
        plugin = broker.get_plugin("only-publish")
        assert isinstance(plugin, OnlyPublish) and plugin.published == 1


def test_builtin_plugins_implement_exactly_their_marked_methods_and_are_called_directly() -> None:
    with mqkit.Broker(all_builtins_config()) as broker:
        names = set(broker.plugin_names())
        assert {"ack", "deadletter", "memory", "metrics", "priority", "transactions"} <= names
        assert {"ttl", "mqtt"} <= names
        for name in names - NOT_CONVERTED:
            plugin = broker.get_plugin(name)
            assert isinstance(plugin, mqkit.Plugin), name
            defined = {
                attr
                for cls in type(plugin).__mro__
                for attr in vars(cls)
                if attr.startswith("mqkit_")
            }
            assert implemented(broker, name) == defined, name
            for hook in defined:
                # The full signature: the facade calls the bound method itself, no adapter.
                (fn,) = [fn for owner, fn in broker.hooks.impls[hook] if owner == name]
                assert getattr(fn, "__self__", None) is plugin, (name, hook)


def test_the_declarations_are_the_hook_specifications() -> None:
    """mqkit/core/plugin.py declares every hook, in order, exactly as hookspecs.py does."""
    tree = ast.parse((ROOT / "mqkit" / "core" / "plugin.py").read_text(encoding="utf-8"))
    (plugin,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Plugin"]
    (block,) = [n for n in plugin.body if isinstance(n, ast.If)]
    assert ast.unparse(block.test) == "TYPE_CHECKING"
    declared = [n for n in block.body if isinstance(n, ast.FunctionDef)]
    spec_order = [name for name, value in vars(hookspecs).items() if hasattr(value, "mqkit_spec")]
    assert [d.name for d in declared] == spec_order
    assert sorted(spec_order) == list(HOOK_NAMES)
    for decl in declared:
        spec = inspect.signature(getattr(hookspecs, decl.name))
        args = decl.args.args
        assert args[0].arg == "self"
        assert [(a.arg, ast.unparse(a.annotation) if a.annotation else None) for a in args[1:]] == [
            (p.name, p.annotation) for p in spec.parameters.values()
        ], decl.name
        assert decl.returns is not None
        assert ast.unparse(decl.returns) == spec.return_annotation, decl.name


# --- built with the broker ----------------------------------------------------------------------


class TakesBroker:
    """A plugin class whose constructor takes the broker."""

    plugin_info = mqkit.PluginInfo(name="takes-broker")

    def __init__(self, broker: mqkit.Broker) -> None:
        self.built_with = broker
        self.at_start: object = None

    @mqkit.hookimpl
    def mqkit_broker_start(self, broker: mqkit.Broker) -> None:
        self.at_start = broker


class NoArguments:
    """A plugin class whose constructor takes nothing: built as ``cls()``."""

    plugin_info = mqkit.PluginInfo(name="no-arguments")

    def __init__(self) -> None:
        self.broker: mqkit.Broker | None = None

    @mqkit.hookimpl
    def mqkit_broker_start(self, broker: mqkit.Broker) -> None:
        self.broker = broker


class OptionalBroker:
    plugin_info = mqkit.PluginInfo(name="optional-broker")

    def __init__(self, broker: mqkit.Broker | None = None) -> None:
        self.built_with = broker


class OptionalOther:
    plugin_info = mqkit.PluginInfo(name="optional-other")

    def __init__(self, limit: int = 3) -> None:
        self.limit = limit


def test_a_class_whose_constructor_takes_the_broker_is_built_with_it() -> None:
    with mqkit.Broker(plugins=[TakesBroker, OptionalBroker]) as broker:
        plugin = broker.get_plugin("takes-broker")
        assert isinstance(plugin, TakesBroker)
        assert plugin.built_with is broker and plugin.at_start is broker
        optional = broker.get_plugin("optional-broker")
        assert isinstance(optional, OptionalBroker) and optional.built_with is broker


def test_a_class_whose_constructor_takes_no_broker_is_built_without_it() -> None:
    with mqkit.Broker(plugins=[NoArguments, OptionalOther]) as broker:
        plugin = broker.get_plugin("no-arguments")
        assert isinstance(plugin, NoArguments) and plugin.broker is broker  # from the start hook
        other = broker.get_plugin("optional-other")
        assert isinstance(other, OptionalOther) and other.limit == 3  # not given the broker


def test_a_plugin_object_is_registered_as_it_is_and_gets_the_broker_at_start() -> None:
    obj = NoArguments()
    with mqkit.Broker(plugins=[obj]) as broker:
        assert broker.get_plugin("no-arguments") is obj
        assert obj.broker is broker


def test_a_constructor_that_fails_fails_the_broker_naming_the_plugin() -> None:
    class Broken:
        plugin_info = mqkit.PluginInfo(name="broken")

        def __init__(self, broker: mqkit.Broker) -> None:
            raise RuntimeError("no database")

    class Refusing:
        plugin_info = mqkit.PluginInfo(name="refusing")

        def __init__(self, broker: mqkit.Broker) -> None:
            raise mqkit.InvalidConfigError.because("refusing needs a setting")

    with pytest.raises(mqkit.PluginError) as caught:
        mqkit.Broker(plugins=[Broken])
    assert "plugin 'broken' could not be built: RuntimeError('no database')" in str(caught.value)
    with pytest.raises(mqkit.InvalidConfigError, match="refusing needs a setting"):
        mqkit.Broker(plugins=[Refusing])


def test_a_plugin_switched_off_and_on_again_is_built_anew_with_the_broker() -> None:
    with mqkit.Broker(mqkit.Config(enable_ack_support=True)) as broker:
        first = broker.get_plugin("ack")
        broker.update_config(broker.config.replace(enable_ack_support=False))
        assert not broker.has_plugin("ack")
        broker.update_config(broker.config.replace(enable_ack_support=True))
        second = broker.get_plugin("ack")
        assert second is not None and second is not first
        sub = broker.subscribe("t")
        broker.publish("t", mqkit.AckMessage("m-1", ack_id="a-1"))
        assert sub.get(timeout=1).id == "m-1"
        broker.ack("t", "a-1")  # the new plugin works: it has the broker
