"""The plugin machinery: loading, validation, dependencies, order, isolation, lifecycle.

The third-party plugin is a real package (``tests/fixtures/sample_plugin``) with a hand-written
``.dist-info``: putting its directory on ``sys.path`` makes ``importlib.metadata`` find its
``mqkit.plugins`` entry point exactly as it finds an installed package's.
"""

from __future__ import annotations

import importlib
import logging
import textwrap
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from attrs import evolve as attrs_evolve

import mqkit
from mqkit import Config, Message, PluginError
from mqkit.core import plugins
from mqkit.core.hookspecs import HOOK_NAMES
from mqkit.core.plugins import clear_entry_point_cache
from mqkit.testing import HookRecorder, broker_config

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "sample_plugin"

MakeBroker = Callable[..., mqkit.Broker]


@pytest.fixture(autouse=True)
def _no_autoload_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests decide about autoloading themselves, whatever the outer environment says."""
    monkeypatch.delenv("MQKIT_AUTOLOAD_PLUGINS", raising=False)


@pytest.fixture
def sample(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The sample plugin package, "installed": importable and its entry point visible."""
    monkeypatch.syspath_prepend(str(SAMPLE_DIR))
    clear_entry_point_cache()
    yield importlib.import_module("mqkit_sample_plugin")
    clear_entry_point_cache()


EXTRA_MODULE = """
import mqkit


class FailStart:
    plugin_info = mqkit.PluginInfo(name="failstart")

    @mqkit.hookimpl
    def mqkit_broker_start(self, broker):
        raise RuntimeError("failstart cannot start")


class BadHooks:
    plugin_info = mqkit.PluginInfo(name="badhooks")

    @mqkit.hookimpl
    def mqkit_foo(self, broker):
        pass


class Pinned:
    plugin_info = mqkit.PluginInfo(name="pinned", runtime_toggle=False)

    @mqkit.hookimpl
    def mqkit_publish(self, message):
        pass
"""

EXTRA_ENTRY_POINTS = """
[mqkit.plugins]
failstart = mqkit_extra_plugins:FailStart
badhooks = mqkit_extra_plugins:BadHooks
pinned = mqkit_extra_plugins:Pinned
broken = mqkit_no_such_module:Plugin
modplugin = mqkit_module_plugin
"""

MODULE_PLUGIN = """
import mqkit

plugin_info = mqkit.PluginInfo(name="modplugin")
seen = []


@mqkit.hookimpl
def mqkit_publish(message):
    seen.append(message.id)
"""


@pytest.fixture
def extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A second installed package whose entry points misbehave in various ways."""
    (tmp_path / "mqkit_extra_plugins.py").write_text(EXTRA_MODULE)
    (tmp_path / "mqkit_module_plugin.py").write_text(MODULE_PLUGIN)
    dist = tmp_path / "mqkit_extra_plugins-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: mqkit-extra-plugins\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text(textwrap.dedent(EXTRA_ENTRY_POINTS))
    monkeypatch.syspath_prepend(str(tmp_path))
    clear_entry_point_cache()
    yield tmp_path
    clear_entry_point_cache()


def named(name: str, **attrs: Any) -> Any:
    """Build a plugin class called ``name`` with ``plugin_info`` and the given attributes."""
    return type(name, (), {"plugin_info": mqkit.PluginInfo(name=name), **attrs})


def by(plugin: str) -> str:
    """How error messages name a plugin."""
    return repr(plugin)


# --- a third-party plugin passed as an object --------------------------------------------------


def test_object_plugin_observes_publish_and_delivery(
    make_broker: MakeBroker, sample: ModuleType
) -> None:
    plugin = sample.SamplePlugin()
    broker = make_broker(objects=[plugin])
    assert broker.plugin_names() == ["sample"]
    assert broker.get_plugin("sample") is plugin
    sub = broker.subscribe("orders")
    broker.publish("orders", Message("m-1", "payload"))

    got = sub.get_nowait()

    assert (got.id, got.data, got.topic) == ("m-1", "payload", "orders")
    assert plugin.events == [
        ("broker_start",),
        ("publish", "orders", "m-1"),
        ("published", "orders", "m-1"),
        ("deliver", "orders", "m-1"),
        ("delivered", "orders", "m-1"),
    ]


def test_hooks_get_the_broker_topic_stamped_message_and_subscription(
    make_broker: MakeBroker, hook_recorder: HookRecorder
) -> None:
    broker = make_broker(objects=[hook_recorder])
    sub = broker.subscribe("orders")
    broker.publish("  orders ", Message("m-1"))
    got = sub.get_nowait()

    (publish,) = hook_recorder.of("mqkit_publish")
    assert publish.broker is broker
    assert publish.topic == "orders"
    assert publish.message.id == "m-1"
    assert publish.message.topic == "orders"  # the broker's stamped copy
    assert publish.message.time is not None
    (deliver,) = hook_recorder.of("mqkit_deliver")
    (delivered,) = hook_recorder.of("mqkit_delivered")
    for call in (deliver, delivered):
        assert call.broker is broker
        assert call.subscription is sub
        assert call.message is got


def test_plugin_can_be_passed_as_a_class(make_broker: MakeBroker, sample: ModuleType) -> None:
    broker = make_broker(objects=[sample.SamplePlugin])
    plugin = broker.get_plugin("sample")
    assert isinstance(plugin, sample.SamplePlugin)
    assert plugin.events == [("broker_start",)]


def test_plugin_rejects_a_publish_with_its_own_mqerror(
    make_broker: MakeBroker, sample: ModuleType, hook_recorder: HookRecorder
) -> None:
    plugin = sample.SamplePlugin()
    broker = make_broker(objects=[plugin, hook_recorder])
    sub = broker.subscribe("orders")

    with pytest.raises(sample.SampleRejectedError) as caught:
        broker.publish("orders", Message("m-1", meta={"sample": "reject"}))

    assert caught.value is plugin.rejections[-1]
    assert isinstance(caught.value, mqkit.MQError)
    assert not isinstance(caught.value, PluginError)
    with pytest.raises(TimeoutError):
        sub.get_nowait()
    assert hook_recorder.of("mqkit_accept") == []
    assert hook_recorder.of("mqkit_published") == []
    (error,) = hook_recorder.of("mqkit_error")
    assert (error.operation, error.topic, error.error) == ("publish", "orders", caught.value)


def test_rejection_in_a_batch_rejects_the_whole_batch(
    make_broker: MakeBroker, sample: ModuleType
) -> None:
    broker = make_broker(objects=[sample.SamplePlugin()])
    sub = broker.subscribe("orders")
    batch = [Message("m-1"), Message("m-2", meta={"sample": "reject"}), Message("m-3")]

    with pytest.raises(sample.SampleRejectedError):
        broker.publish_batch("orders", batch)

    with pytest.raises(TimeoutError):
        sub.get_nowait()


def test_unexpected_error_in_publish_is_a_plugin_error_and_the_broker_goes_on(
    make_broker: MakeBroker, sample: ModuleType
) -> None:
    broker = make_broker(objects=[sample.SamplePlugin()])
    sub = broker.subscribe("orders")

    with pytest.raises(PluginError) as caught:
        broker.publish("orders", Message("m-1", meta={"sample": "crash"}))

    assert by("sample") in str(caught.value)
    assert "mqkit_publish" in str(caught.value)
    cause = caught.value.__cause__
    assert isinstance(cause, RuntimeError)
    assert str(cause) == "sample crashed on m-1"
    with pytest.raises(TimeoutError):
        sub.get_nowait()

    broker.publish("orders", Message("m-2"))
    assert sub.get_nowait().id == "m-2"
    assert not broker.closed


@pytest.mark.parametrize(
    ("action", "hook"),
    [("crash-published", "mqkit_published"), ("crash-delivered", "mqkit_delivered")],
)
def test_error_in_a_notification_hook_breaks_neither_delivery_nor_other_plugins(
    make_broker: MakeBroker,
    sample: ModuleType,
    caplog: pytest.LogCaptureFixture,
    action: str,
    hook: str,
) -> None:
    seen: list[str] = []

    class Later:
        """Runs after the sample plugin (trylast), so it sees what happens after the crash."""

        plugin_info = mqkit.PluginInfo(name="later")

        @mqkit.hookimpl(trylast=True)
        def mqkit_published(self, messages: Sequence[Message]) -> None:
            seen.extend(f"published {m.id}" for m in messages)

        @mqkit.hookimpl(trylast=True)
        def mqkit_delivered(self, message: Message) -> None:
            seen.append(f"delivered {message.id}")

    broker = make_broker(objects=[Later(), sample.SamplePlugin()])
    first, second = broker.subscribe("orders"), broker.subscribe("orders")
    assert broker.health_check().status == "healthy"

    with caplog.at_level(logging.ERROR, logger="mqkit"):
        broker.publish("orders", Message("m-1", meta={"sample": action}))
        assert first.get_nowait().id == "m-1"
        assert second.get_nowait().id == "m-1"

    assert seen == ["published m-1", "delivered m-1", "delivered m-1"]
    health = broker.health_check()
    assert health.status == "degraded"
    assert any(by("sample") in problem for problem in health.problems), health.problems
    assert not any(by("later") in problem for problem in health.problems)
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert logged
    assert all(r.name.startswith("mqkit") for r in logged)
    assert all(by("sample") in r.getMessage() and hook in r.getMessage() for r in logged)

    broker.publish("orders", Message("m-2"))
    assert first.get_nowait().id == "m-2"


# --- enabled by name, through the entry point ----------------------------------------------------


def test_plugin_enabled_by_name_through_its_entry_point(sample: ModuleType) -> None:
    with mqkit.Broker(Config(plugins=["sample"])) as broker:
        plugin = broker.get_plugin("sample")
        assert isinstance(plugin, sample.SamplePlugin)
        sub = broker.subscribe("orders")
        broker.publish("orders", Message("m-1"))
        assert sub.get_nowait().id == "m-1"
        assert plugin.events[:3] == [
            ("broker_start",),
            ("publish", "orders", "m-1"),
            ("published", "orders", "m-1"),
        ]
    assert plugin.events[-1] == ("broker_close",)


def test_each_broker_gets_its_own_instance_of_a_named_plugin(
    make_broker: MakeBroker, sample: ModuleType
) -> None:
    one = make_broker(config=Config(plugins=["sample"]))
    two = make_broker(config=Config(plugins=["sample"]))
    assert one.get_plugin("sample") is not two.get_plugin("sample")


def test_a_missing_plugin_name_fails_with_plugin_error_naming_it(
    make_broker: MakeBroker, sample: ModuleType
) -> None:
    with pytest.raises(PluginError, match="'no-such-plugin'"):
        make_broker(config=Config(plugins=["sample", "no-such-plugin"]))


def test_a_plugin_that_cannot_be_imported_fails_with_plugin_error(
    make_broker: MakeBroker, extra: Path
) -> None:
    with pytest.raises(PluginError, match="'broken'") as caught:
        make_broker(config=Config(plugins=["broken"]))
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)


def test_an_entry_point_may_name_a_module(make_broker: MakeBroker, extra: Path) -> None:
    broker = make_broker(config=Config(plugins=["modplugin"]))
    module = broker.get_plugin("modplugin")
    assert isinstance(module, ModuleType)
    assert module.__name__ == "mqkit_module_plugin"
    module.seen.clear()
    broker.publish("t", Message("m-1"))
    assert module.seen == ["m-1"]


def test_enabling_and_disabling_the_same_plugin_is_invalid(
    make_broker: MakeBroker, sample: ModuleType
) -> None:
    with pytest.raises(mqkit.InvalidConfigError, match="sample") as caught:
        make_broker(config=Config(plugins=["sample"], disable_plugins=["sample"]))
    assert caught.value.field == "disable_plugins"


def test_installing_a_plugin_does_not_load_it(make_broker: MakeBroker, sample: ModuleType) -> None:
    broker = make_broker(config=Config())
    assert "sample" not in broker.plugin_names()
    with mqkit.Broker() as default_broker:
        assert "sample" not in default_broker.plugin_names()


def test_autoload_plugins_loads_installed_plugins(
    make_broker: MakeBroker, sample: ModuleType
) -> None:
    broker = make_broker(config=Config(autoload_plugins=True))
    assert isinstance(broker.get_plugin("sample"), sample.SamplePlugin)


@pytest.mark.parametrize("value", ["1", "true"])
def test_autoload_environment_variable_loads_installed_plugins(
    make_broker: MakeBroker, sample: ModuleType, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("MQKIT_AUTOLOAD_PLUGINS", value)
    broker = make_broker(config=Config())
    assert isinstance(broker.get_plugin("sample"), sample.SamplePlugin)


def test_autoload_skips_disabled_plugins(make_broker: MakeBroker, sample: ModuleType) -> None:
    broker = make_broker(config=Config(autoload_plugins=True, disable_plugins=["sample"]))
    assert "sample" not in broker.plugin_names()


def test_disabled_plugin_object_is_not_registered(
    make_broker: MakeBroker, sample: ModuleType
) -> None:
    broker = make_broker(config=Config(disable_plugins=["sample"]), objects=[sample.SamplePlugin()])
    assert broker.plugin_names() == []


# --- what registration refuses -------------------------------------------------------------------


def test_a_marked_unknown_hook_fails_naming_the_plugin(make_broker: MakeBroker) -> None:
    class Foo:
        plugin_info = mqkit.PluginInfo(name="foo-plugin")

        @mqkit.hookimpl
        def mqkit_foo(self, broker: mqkit.Broker) -> None:
            pass

    with pytest.raises(PluginError, match=r"'foo-plugin'.*mqkit_foo"):
        make_broker(objects=[Foo()])


@pytest.mark.parametrize(
    "decorate",
    [
        pytest.param(mqkit.hookimpl(specname="mqkit_foo"), id="specname"),
        pytest.param(mqkit.hookimpl, id="no-prefix"),
    ],
)
def test_a_marked_method_for_no_known_hook_fails(
    make_broker: MakeBroker, decorate: Callable[[Any], Any]
) -> None:
    def on_foo(self: object, broker: mqkit.Broker) -> None:
        pass

    plugin = named("sneaky", on_foo=decorate(on_foo))
    with pytest.raises(PluginError, match=r"'sneaky'.*unknown hook"):
        make_broker(objects=[plugin()])


def test_specname_may_name_a_known_hook(make_broker: MakeBroker) -> None:
    seen: list[str] = []

    def check(self: object, message: Message) -> None:
        seen.append(message.id)

    broker = make_broker(
        objects=[named("aliased", check=mqkit.hookimpl(specname="mqkit_publish")(check))()]
    )
    broker.publish("t", Message("m-1"))
    assert seen == ["m-1"]


def test_an_unmarked_hook_named_method_fails(make_broker: MakeBroker) -> None:
    class Unmarked:
        plugin_info = mqkit.PluginInfo(name="unmarked")

        def mqkit_publish(self, broker: mqkit.Broker, topic: str, message: Message) -> None:
            pass

    with pytest.raises(PluginError, match=r"'unmarked'.*mqkit_publish.*@mqkit\.hookimpl"):
        make_broker(objects=[Unmarked()])


@pytest.mark.parametrize("option", ["wrapper", "hookwrapper"])
def test_hook_wrappers_are_refused(make_broker: MakeBroker, option: str) -> None:
    def mqkit_publish(self: object, message: Message) -> Iterator[None]:
        yield

    plugin = named("wrapping", mqkit_publish=mqkit.hookimpl(**{option: True})(mqkit_publish))
    with pytest.raises(PluginError, match=r"'wrapping'.*wrapper"):
        make_broker(objects=[plugin()])


def test_wrong_argument_names_fail_naming_the_plugin(make_broker: MakeBroker) -> None:
    class Misspelt:
        plugin_info = mqkit.PluginInfo(name="misspelt")

        @mqkit.hookimpl
        def mqkit_publish(self, msg: Message) -> None:
            pass

    with pytest.raises(PluginError, match="'misspelt'") as caught:
        make_broker(objects=[Misspelt()])
    assert "msg" in str(caught.value)


def test_two_plugins_of_one_name_are_refused(make_broker: MakeBroker, sample: ModuleType) -> None:
    with pytest.raises(PluginError, match="'sample'"):
        make_broker(objects=[sample.SamplePlugin(), sample.SamplePlugin()])
    with pytest.raises(PluginError, match="'sample'"):
        make_broker(config=Config(plugins=["sample"]), objects=[sample.SamplePlugin()])


def test_two_plugins_providing_one_feature_are_refused(make_broker: MakeBroker) -> None:
    def usage(self: object) -> int:
        return 1

    first = type("First", (mqkit.MemoryFeature,), {"usage": usage})
    second = type("Second", (mqkit.MemoryFeature,), {"usage": usage})
    with pytest.raises(PluginError, match=r"'First' and 'Second'.*'memory'"):
        make_broker(objects=[first(), second()])


def test_a_feature_plugin_backs_the_broker_api(make_broker: MakeBroker) -> None:
    class Memory(mqkit.MemoryFeature):
        plugin_info = mqkit.PluginInfo(name="fake-memory")

        def usage(self) -> int:
            return 1234

    assert make_broker().memory_usage() == 0
    assert make_broker(objects=[Memory()]).memory_usage() == 1234


# --- dependencies are data -----------------------------------------------------------------------


def needy(*requires: mqkit.Requirement) -> object:
    cls = type("Needy", (), {"plugin_info": mqkit.PluginInfo(name="needy", requires=requires)})
    return cls()


def test_a_missing_requirement_fails_naming_both_plugins_and_the_hint(
    make_broker: MakeBroker,
) -> None:
    plugin = needy(mqkit.Requirement(plugin="other", hint="set X"))
    with pytest.raises(PluginError) as caught:
        make_broker(objects=[plugin])
    text = str(caught.value)
    assert by("needy") in text
    assert by("other") in text
    assert "set X" in text


def test_a_requirement_is_met_by_loading_the_other_plugin(make_broker: MakeBroker) -> None:
    plugin = needy(mqkit.Requirement(plugin="other", hint="set X"))
    broker = make_broker(objects=[plugin, named("other")()])
    assert sorted(broker.plugin_names()) == ["needy", "other"]


def test_a_requirement_is_met_by_a_plugin_enabled_by_name(
    make_broker: MakeBroker, sample: ModuleType
) -> None:
    plugin = needy(mqkit.Requirement(plugin="sample"))
    with pytest.raises(PluginError, match="'needy' needs plugin 'sample'"):
        make_broker(objects=[plugin])
    broker = make_broker(config=Config(plugins=["sample"]), objects=[plugin])
    assert sorted(broker.plugin_names()) == ["needy", "sample"]


def test_a_conditional_requirement_is_checked_only_when_its_condition_holds(
    make_broker: MakeBroker,
) -> None:
    seen: list[Config] = []

    def when(cfg: Config) -> bool:
        seen.append(cfg)
        return cfg.max_ack_retries > 3

    plugin = needy(mqkit.Requirement(plugin="other", when=when, hint="set X"))

    broker = make_broker(config=Config(max_ack_retries=3), objects=[plugin])
    assert broker.plugin_names() == ["needy"]
    assert seen[-1].max_ack_retries == 3

    with pytest.raises(PluginError, match="'needy' needs plugin 'other': set X"):
        make_broker(config=Config(max_ack_retries=5), objects=[plugin])

    broker = make_broker(config=Config(max_ack_retries=5), objects=[plugin, named("other")()])
    assert sorted(broker.plugin_names()) == ["needy", "other"]


# --- implementations take any subset of a hook's arguments ---------------------------------------


def test_implementations_may_declare_a_subset_of_the_arguments(make_broker: MakeBroker) -> None:
    seen: list[tuple[str, ...]] = []

    class Partial:
        plugin_info = mqkit.PluginInfo(name="partial")

        @mqkit.hookimpl
        def mqkit_broker_start(self) -> None:
            seen.append(("start",))

        @mqkit.hookimpl
        def mqkit_publish(self, message: Message) -> None:
            seen.append(("publish", message.id))

        @mqkit.hookimpl
        def mqkit_deliver(self, message: Message, broker: mqkit.Broker) -> None:
            seen.append(("deliver", message.id, type(broker).__name__))

        @mqkit.hookimpl
        def mqkit_delivered(self, subscription: mqkit.Subscription) -> None:
            seen.append(("delivered", subscription.topic))

    broker = make_broker(objects=[Partial()])
    sub = broker.subscribe("orders")
    broker.publish("orders", Message("m-1"))
    assert sub.get_nowait().id == "m-1"
    assert seen == [
        ("start",),
        ("publish", "m-1"),
        ("deliver", "m-1", "Broker"),
        ("delivered", "orders"),
    ]


# --- order and firstresult -----------------------------------------------------------------------


def publisher(name: str, log: list[str], **opts: bool) -> object:
    def mqkit_publish(self: object, message: Message) -> None:
        log.append(name)

    return named(name, mqkit_publish=mqkit.hookimpl(**opts)(mqkit_publish))()


@pytest.mark.parametrize(
    ("a_opts", "b_opts", "expected"),
    [
        pytest.param({}, {}, ["b", "a"], id="last-registered-first"),
        pytest.param({"tryfirst": True}, {}, ["a", "b"], id="tryfirst"),
        pytest.param({}, {"trylast": True}, ["a", "b"], id="trylast"),
        pytest.param({"tryfirst": True}, {"tryfirst": True}, ["b", "a"], id="both-tryfirst"),
    ],
)
def test_implementations_run_in_pluggy_order(
    make_broker: MakeBroker, a_opts: dict[str, bool], b_opts: dict[str, bool], expected: list[str]
) -> None:
    log: list[str] = []
    broker = make_broker(objects=[publisher("a", log, **a_opts), publisher("b", log, **b_opts)])
    assert broker.plugin_names() == ["a", "b"]
    broker.publish("t", Message("m-1"))
    assert log == expected


def test_objects_register_after_named_plugins_and_so_run_first(
    make_broker: MakeBroker, sample: ModuleType
) -> None:
    log: list[str] = []

    class Peek:
        """Runs last (trylast) and reports what ran before it."""

        plugin_info = mqkit.PluginInfo(name="peek")

        def __init__(self, sample_plugin: list[Any]) -> None:
            self.sample_plugin = sample_plugin

        @mqkit.hookimpl(trylast=True)
        def mqkit_publish(self, message: Message) -> None:
            log.append(f"peek saw sample events: {len(self.sample_plugin[0].events)}")

    holder: list[Any] = []
    broker = make_broker(
        config=Config(plugins=["sample"]), objects=[publisher("mine", log), Peek(holder)]
    )
    holder.append(broker.get_plugin("sample"))
    assert broker.plugin_names() == ["sample", "mine", "peek"]
    broker.publish("t", Message("m-1"))
    # mine (registered after sample) ran before sample; peek (trylast) after both.
    assert log == ["mine", "peek saw sample events: 2"]


def test_a_plugin_returning_true_takes_the_message_over(
    make_broker: MakeBroker, hook_recorder: HookRecorder
) -> None:
    log: list[str] = []
    taken: list[Message] = []

    def mqkit_publish(self: object, message: Message) -> bool:
        taken.append(message)
        return True

    taker = named("taker", mqkit_publish=mqkit.hookimpl(mqkit_publish))()
    # Registered first, so it runs after the taker (and must not run at all).
    observer = publisher("observer", log)
    broker = make_broker(objects=[observer, taker, hook_recorder])
    sub = broker.subscribe("t")

    broker.publish("t", Message("m-1"))

    assert [m.id for m in taken] == ["m-1"]
    assert log == []
    with pytest.raises(TimeoutError):
        sub.get_nowait()
    assert len(hook_recorder.of("mqkit_publish")) == 1
    assert hook_recorder.of("mqkit_accept") == []
    assert hook_recorder.of("mqkit_published") == []


def test_none_lets_the_message_go_on(make_broker: MakeBroker) -> None:
    log: list[str] = []
    broker = make_broker(objects=[publisher("a", log), publisher("b", log)])
    sub = broker.subscribe("t")
    broker.publish("t", Message("m-1"))
    assert log == ["b", "a"]
    assert sub.get_nowait().id == "m-1"


# --- for_messages: per-message hooks narrowed by message class -----------------------------------


class Narrow:
    """Concerned with priority messages only, and with every message while max_topics == 7."""

    plugin_info = mqkit.PluginInfo(name="narrow")

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.asked: list[type] = []

    def interest(self, cls: type[Message], config: Config) -> bool:
        self.asked.append(cls)
        return issubclass(cls, mqkit.PriorityMessage) or config.max_topics == 7

    @mqkit.hookimpl
    @mqkit.for_messages(lambda cls, config: Narrow.current.interest(cls, config))
    def mqkit_publish(self, message: Message) -> None:
        self.seen.append(f"publish {message.id}")

    @mqkit.hookimpl
    @mqkit.for_messages(lambda cls, config: Narrow.current.interest(cls, config))
    def mqkit_deliver(self, message: Message) -> None:
        self.seen.append(f"deliver {message.id}")

    @mqkit.hookimpl
    @mqkit.for_messages(lambda cls, config: Narrow.current.interest(cls, config))
    def mqkit_delivered(self, message: Message) -> None:
        self.seen.append(f"delivered {message.id}")

    current: Narrow


def test_for_messages_skips_the_classes_an_implementation_declined(
    make_broker: MakeBroker, hook_recorder: HookRecorder
) -> None:
    narrow = Narrow.current = Narrow()
    broker = make_broker(objects=[narrow, hook_recorder])
    sub = broker.subscribe("t")
    for i in range(3):
        broker.publish("t", Message(f"plain-{i}"))
        broker.publish("t", mqkit.PriorityMessage(f"prio-{i}"))
    assert [sub.get_nowait().id for _ in range(6)] == [
        m for i in range(3) for m in (f"plain-{i}", f"prio-{i}")
    ]
    assert narrow.seen == [f"publish prio-{i}" for i in range(3)] + [
        f"{hook} prio-{i}" for i in range(3) for hook in ("deliver", "delivered")
    ]
    # The other implementations still see every message; each class was asked about once
    # per hook, not once per message.
    assert len(hook_recorder.of("mqkit_publish")) == 6
    assert sorted(c.__name__ for c in narrow.asked) == sorted(["Message", "PriorityMessage"] * 3)

    hooks = broker.hooks  # the hook recorder wants every message: no class is idle
    assert hooks.publish_idle == hooks.deliver_idle == hooks.delivered_idle == set()

    # The answer may depend on the configuration: a new configuration asks again.
    narrow.seen.clear()
    broker.update_config(attrs_evolve(broker.config, max_topics=7))
    broker.publish("t", Message("plain-after"))
    assert sub.get_nowait().id == "plain-after"
    assert narrow.seen == ["publish plain-after", "deliver plain-after", "delivered plain-after"]


def test_a_class_no_implementation_wants_skips_the_hook_call(make_broker: MakeBroker) -> None:
    narrow = Narrow.current = Narrow()
    broker = make_broker(objects=[narrow])
    sub = broker.subscribe("t")
    broker.publish("t", Message("plain"))
    broker.publish("t", mqkit.PriorityMessage("prio"))
    assert [sub.get_nowait().id for _ in range(2)] == ["plain", "prio"]
    hooks = broker.hooks
    for idle in (hooks.publish_idle, hooks.deliver_idle, hooks.delivered_idle):
        assert idle == {Message}
    asked = len(narrow.asked)
    broker.publish("t", Message("plain-2"))
    assert sub.get_nowait().id == "plain-2"
    assert len(narrow.asked) == asked  # the answer is kept: not asked again
    assert narrow.seen == ["publish prio", "deliver prio", "delivered prio"]


class NarrowAccept:
    """Accept and published, concerned with priority messages only; a refusing store last."""

    plugin_info = mqkit.PluginInfo(name="narrow-accept")

    def __init__(self) -> None:
        self.seen: list[str] = []

    @mqkit.hookimpl
    @mqkit.for_messages(lambda cls, config: issubclass(cls, mqkit.PriorityMessage))
    def mqkit_accept(self, messages: Sequence[Message]) -> None:
        self.seen.append("accept " + " ".join(m.id for m in messages))

    @mqkit.hookimpl
    @mqkit.for_messages(lambda cls, config: issubclass(cls, mqkit.PriorityMessage))
    def mqkit_published(self, messages: Sequence[Message]) -> None:
        self.seen.append("published " + " ".join(m.id for m in messages))

    @mqkit.hookimpl
    def mqkit_refused(self, messages: Sequence[Message], error: mqkit.MQError) -> None:
        self.seen.append(f"refused {' '.join(m.id for m in messages)}: {type(error).__name__}")


class RefusingStore:
    plugin_info = mqkit.PluginInfo(name="refusing-store")

    @mqkit.hookimpl(trylast=True)
    def mqkit_accept(self, messages: Sequence[Message]) -> None:
        for m in messages:
            if m.meta.get("store") == "refuse":
                raise mqkit.PersistenceError.because("disk says no")
            if m.meta.get("store") == "crash":
                raise RuntimeError("store crashed")


def test_accept_and_published_are_narrowed_for_one_message_not_for_a_batch(
    make_broker: MakeBroker,
) -> None:
    narrow = NarrowAccept()
    broker = make_broker(objects=[narrow])
    sub = broker.subscribe("t")
    broker.publish("t", Message("plain"))
    broker.publish("t", mqkit.PriorityMessage("prio"))
    broker.publish_batch("t", [Message("b1"), Message("b2")])
    assert len([sub.get_nowait() for _ in range(4)]) == 4
    assert narrow.seen == ["accept prio", "published prio", "accept b1 b2", "published b1 b2"]
    assert broker.hooks.accept_idle == {Message}


@pytest.mark.parametrize(
    ("store", "error"), [("refuse", "PersistenceError"), ("crash", "PluginError")]
)
def test_a_refused_accept_is_reported_to_every_implementation(
    make_broker: MakeBroker, store: str, error: str
) -> None:
    narrow = NarrowAccept()
    broker = make_broker(objects=[narrow, RefusingStore()])
    sub = broker.subscribe("t")
    batch = [mqkit.PriorityMessage("p1"), Message("bad", meta={"store": store})]
    with pytest.raises(getattr(mqkit, error)):
        broker.publish_batch("t", batch)
    assert narrow.seen == ["accept p1 bad", f"refused p1 bad: {error}"]
    with pytest.raises(TimeoutError):
        sub.get_nowait()


def test_an_interest_that_raises_counts_as_interested(make_broker: MakeBroker) -> None:
    seen: list[str] = []

    def broken(cls: type[Message], config: Config) -> bool:
        raise RuntimeError("boom")

    def mqkit_publish(self: object, message: Message) -> None:
        seen.append(message.id)

    narrowed = mqkit.for_messages(broken)(mqkit_publish)
    plugin = named("broken", mqkit_publish=mqkit.hookimpl(narrowed))
    broker = make_broker(objects=[plugin()])
    broker.publish("t", Message("m-1"))
    broker.publish("t", Message("m-2"))
    assert seen == ["m-1", "m-2"]
    problems = broker.health_check().problems
    assert any(by("broken") in p for p in problems), problems


# --- no plugin, no pluggy call -------------------------------------------------------------------


def test_without_plugins_publish_and_get_make_no_pluggy_call(make_broker: MakeBroker) -> None:
    broker = make_broker()
    assert broker.plugin_names() == []
    traced: list[str] = []

    def before(hook_name: str, impls: object, kwargs: object) -> None:
        traced.append(f"before {hook_name}")

    def after(outcome: object, hook_name: str, impls: object, kwargs: object) -> None:
        traced.append(f"after {hook_name}")

    undo = broker._pm.add_hookcall_monitoring(before, after)
    try:
        sub = broker.subscribe("t")
        broker.publish("t", Message("m-1"))
        assert sub.get_nowait().id == "m-1"
        sub.cancel()
        assert traced == []
        # The monitor is live: a call through pluggy's relay is seen.
        broker._pm.hook.mqkit_health(broker=broker)
        assert traced == ["before mqkit_health", "after mqkit_health"]
    finally:
        undo()

    hooks = broker._hooks
    assert set(hooks.impls) == set(HOOK_NAMES)
    assert all(impls == [] for impls in hooks.impls.values())
    assert not hooks.calls_any()
    flags = {name: value for name, value in vars(hooks).items() if name.endswith("_on")}
    assert {"publish_on", "accept_on", "published_on", "deliver_on", "delivered_on"} <= set(flags)
    assert not any(flags.values()), flags


def test_flags_follow_the_implementations(
    make_broker: MakeBroker, hook_recorder: HookRecorder
) -> None:
    hooks = make_broker(objects=[hook_recorder])._hooks
    assert all(len(impls) == 1 for impls in hooks.impls.values())
    flags = {name: value for name, value in vars(hooks).items() if name.endswith("_on")}
    assert flags
    assert all(flags.values()), flags

    log: list[str] = []
    hooks = make_broker(objects=[publisher("only-publish", log)])._hooks
    assert hooks.publish_on
    assert not hooks.deliver_on
    assert not hooks.delivered_on
    assert not hooks.published_on


# --- lifecycle and update_config -----------------------------------------------------------------


def test_update_config_starts_and_stops_a_named_plugin(
    make_broker: MakeBroker, sample: ModuleType
) -> None:
    broker = make_broker()
    sub = broker.subscribe("t")

    broker.update_config(broker.config.replace(plugins=("sample",)))

    plugin = broker.get_plugin("sample")
    assert isinstance(plugin, sample.SamplePlugin)
    assert plugin.events == [("broker_start",)]
    broker.publish("t", Message("m-1"))
    assert sub.get_nowait().id == "m-1"
    assert ("publish", "t", "m-1") in plugin.events
    assert ("delivered", "t", "m-1") in plugin.events

    broker.update_config(broker.config.replace(plugins=()))

    assert not broker.has_plugin("sample")
    assert plugin.events[-1] == ("broker_close",)
    before = list(plugin.events)
    broker.publish("t", Message("m-2"))
    assert sub.get_nowait().id == "m-2"
    assert plugin.events == before


def test_update_config_keeps_plugins_that_stay(
    make_broker: MakeBroker, sample: ModuleType, hook_recorder: HookRecorder
) -> None:
    broker = make_broker(config=Config(plugins=["sample"]), objects=[hook_recorder])
    plugin = broker.get_plugin("sample")
    broker.update_config(broker.config.replace(max_topics=10))
    assert broker.get_plugin("sample") is plugin
    assert broker.get_plugin("hook-recorder") is hook_recorder
    assert plugin.events == [("broker_start",)]
    assert len(hook_recorder.of("mqkit_broker_start")) == 1


@pytest.mark.parametrize("name", ["failstart", "badhooks", "broken", "no-such-plugin"])
def test_a_failed_update_config_changes_nothing(
    make_broker: MakeBroker, sample: ModuleType, extra: Path, name: str
) -> None:
    broker = make_broker(config=Config(plugins=["sample"]))
    plugin = broker.get_plugin("sample")
    config = broker.config

    with pytest.raises(PluginError, match=repr(name)):
        broker.update_config(config.replace(plugins=("sample", name)))

    assert broker.config is config
    assert broker.plugin_names() == ["sample"]
    assert broker.get_plugin("sample") is plugin
    sub = broker.subscribe("t")
    broker.publish("t", Message("m-1"))
    assert sub.get_nowait().id == "m-1"
    assert ("delivered", "t", "m-1") in plugin.events
    assert ("broker_close",) not in plugin.events


def test_a_plugin_that_cannot_toggle_at_run_time(make_broker: MakeBroker, extra: Path) -> None:
    without = make_broker()
    with pytest.raises(mqkit.InvalidConfigError, match="pinned"):
        without.update_config(without.config.replace(plugins=("pinned",)))
    assert without.plugin_names() == []

    with_it = make_broker(config=Config(plugins=["pinned"]))
    with pytest.raises(mqkit.InvalidConfigError, match="pinned"):
        with_it.update_config(with_it.config.replace(plugins=()))
    assert with_it.plugin_names() == ["pinned"]


def test_a_failing_start_fails_the_broker_and_leaves_no_thread(extra: Path) -> None:
    before = set(threading.enumerate())

    class Timed:
        """Starts background work (the broker's timer thread) when the broker starts."""

        plugin_info = mqkit.PluginInfo(name="timed")

        def __init__(self) -> None:
            self.threads_at_start: set[threading.Thread] = set()
            self.closed = False

        @mqkit.hookimpl(tryfirst=True)
        def mqkit_broker_start(self, broker: mqkit.Broker) -> None:
            broker.timers.call_later(3600, lambda: None)
            self.threads_at_start = set(threading.enumerate())

        @mqkit.hookimpl
        def mqkit_broker_close(self, broker: mqkit.Broker) -> None:
            self.closed = True

    timed = Timed()
    with pytest.raises(PluginError, match="'failstart'") as caught:
        mqkit.Broker(broker_config(config=Config(plugins=["failstart"])), plugins=[timed])

    assert isinstance(caught.value.__cause__, RuntimeError)
    assert timed.threads_at_start - before, "the timer thread never started"
    assert timed.closed
    assert set(threading.enumerate()) - before == set()


def test_close_stops_every_plugin(make_broker: MakeBroker, sample: ModuleType) -> None:
    plugin = sample.SamplePlugin()
    broker = make_broker(objects=[plugin])
    broker.close()
    assert plugin.events == [("broker_start",), ("broker_close",)]
    broker.close()
    assert plugin.events.count(("broker_close",)) == 1


def test_two_brokers_carry_different_plugin_sets(
    make_broker: MakeBroker, sample: ModuleType, hook_recorder: HookRecorder
) -> None:
    one = make_broker(objects=[hook_recorder])
    two = make_broker(config=Config(plugins=["sample"]))
    three = make_broker()
    assert one.plugin_names() == ["hook-recorder"]
    assert two.plugin_names() == ["sample"]
    assert three.plugin_names() == []
    plugin = two.get_plugin("sample")
    hook_recorder.clear()

    for broker in (one, two, three):
        sub = broker.subscribe("t")
        broker.publish("t", Message(f"m-{broker.plugin_names()}"))
        sub.get_nowait()

    assert [c.message.id for c in hook_recorder.of("mqkit_publish")] == ["m-['hook-recorder']"]
    assert [e for e in plugin.events if e[0] == "publish"] == [("publish", "t", "m-['sample']")]


# --- the test kit's hook recorder ----------------------------------------------------------------


def test_hook_recorder_records_the_message_path_in_order(
    make_broker: MakeBroker, hook_recorder: HookRecorder
) -> None:
    broker = make_broker(objects=[hook_recorder])
    assert hook_recorder.names() == ["mqkit_broker_start"]
    hook_recorder.clear()

    sub = broker.subscribe("orders")
    broker.publish("orders", Message("m-1"))
    sub.get_nowait()
    sub.cancel()

    assert hook_recorder.names() == [
        "mqkit_subscription_buffer",
        "mqkit_subscription_taps",
        "mqkit_subscribe",
        "mqkit_publish",
        "mqkit_accept",
        "mqkit_published",
        "mqkit_deliver",
        "mqkit_delivered",
        "mqkit_unsubscribe",
    ]
    _, _, subscribe, publish, accept, published, _, _, unsubscribe = hook_recorder.calls
    assert subscribe.subscription is sub
    assert unsubscribe.subscription is sub
    assert [m.id for m in accept.messages] == [m.id for m in published.messages] == ["m-1"]
    assert publish.kwargs.keys() == {"broker", "topic", "message"}


def test_hook_recorder_can_record_only_some_hooks(make_broker: MakeBroker) -> None:
    recorder = HookRecorder(hooks=["mqkit_publish", "mqkit_broker_close"])
    broker = make_broker(objects=[recorder])
    sub = broker.subscribe("t")
    broker.publish("t", Message("m-1"))
    sub.get_nowait()
    broker.close()
    assert recorder.names() == ["mqkit_publish", "mqkit_broker_close"]


# --- what is installed ------------------------------------------------------------------------


def install(where: Path, dist: str, entry_points: dict[str, str]) -> None:
    """Write a minimal installed distribution declaring ``entry_points`` under ``where``."""
    info = where / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[mqkit.plugins]\n{lines}")


def test_a_third_party_package_cannot_shadow_a_built_in_plugin(
    make_broker: MakeBroker, extra: Path
) -> None:
    builtins = sorted(name for name, ep in plugins.entry_points().items() if ep.builtin)
    assert builtins, "mqkit declares its built-in plugins as entry points"
    name = builtins[0]
    install(extra, "mqkit-shadow", {name: "mqkit_extra_plugins:Pinned"})
    clear_entry_point_cache()

    found = plugins.entry_points()[name]
    assert found.builtin
    assert found.value.startswith("mqkit.")
    broker = make_broker(name)
    assert type(broker.get_plugin(name)).__module__.startswith("mqkit.")


def test_two_packages_declaring_one_name_fail_only_where_that_name_is_used(
    make_broker: MakeBroker, sample: ModuleType, extra: Path
) -> None:
    install(extra, "mqkit-clash", {"sample": "mqkit_extra_plugins:Pinned"})
    clear_entry_point_cache()

    # Installing the clashing package changes no broker that does not ask for the name ...
    assert make_broker().plugin_names() == []
    assert make_broker(config=Config(plugins=["pinned"])).plugin_names() == ["pinned"]
    # ... and fails, naming it, one that does.
    with pytest.raises(PluginError, match=r"two installed packages declare plugin 'sample'"):
        make_broker(config=Config(plugins=["sample"]))
    with pytest.raises(PluginError, match=r"two installed packages declare plugin 'sample'"):
        make_broker(
            config=Config(
                autoload_plugins=True, disable_plugins=["failstart", "broken", "modplugin"]
            )
        )
