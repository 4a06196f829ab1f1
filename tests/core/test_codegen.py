"""Generated code (stampers, hook adapters) shows its source in tracebacks."""

from __future__ import annotations

import inspect
import linecache
import traceback

import mqkit
from mqkit.core.codegen import generate
from mqkit.core.message import stamper


def test_generated_functions_have_their_source_in_linecache() -> None:
    fn = generate("twice", "def twice(x):\n    return 2 * x\n", {}, "a test")
    assert fn(21) == 42
    filename = fn.__code__.co_filename
    assert filename.startswith("<mqkit generated ") and filename.endswith(": a test>")
    assert linecache.getline(filename, 2).strip() == "return 2 * x"
    linecache.checkcache()  # no file to compare with: the entry stays
    assert inspect.getsource(fn) == "def twice(x):\n    return 2 * x\n"


def test_a_traceback_through_a_stamper_shows_its_line() -> None:
    stamp = stamper(mqkit.Message)
    assert "stamper of Message" in stamp.__code__.co_filename
    try:
        stamp(None, "t", 1.0, 1)  # type: ignore[arg-type]
    except AttributeError as exc:
        text = "".join(traceback.format_exception(exc))
    else:  # pragma: no cover - the stamper must not accept None
        raise AssertionError("stamped None")
    assert "stamper of Message" in text
    assert "m.meta" in text or "n.id = m.id" in text  # the generated line itself is shown


def test_a_hook_adapter_is_generated_with_its_source(make_broker) -> None:
    class Partial:
        @mqkit.hookimpl
        def mqkit_publish(self, message: mqkit.Message) -> None:  # a subset of the arguments
            raise RuntimeError("boom")

    broker = make_broker(objects=[Partial()])
    try:
        broker.publish("t", mqkit.Message("m"))
    except mqkit.PluginError as exc:
        cause = exc.__cause__
        assert cause is not None
        text = "".join(traceback.format_exception(cause))
    else:  # pragma: no cover
        raise AssertionError("the plugin's error was not raised")
    assert "adapter of" in text and "return fn(a2)" in text


def test_reported_operations_keep_their_signature_and_docstring() -> None:
    nack = inspect.signature(mqkit.Broker.nack)
    assert list(nack.parameters) == ["self", "topic", "ack_id", "requeue"]
    assert nack.parameters["requeue"].default is True
    assert mqkit.Broker.subscribe_pattern.__doc__ == (
        "Subscribe to every topic a glob pattern matches (``orders.*``)."
    )
    assert mqkit.Broker.publish_priority.__name__ == "publish_priority"


def test_a_reported_operation_takes_keywords_and_defaults(make_broker) -> None:
    broker = make_broker()
    sub = broker.subscribe(topic="t", opts=mqkit.SubOptions(buffer_size=3))
    assert sub.topic == "t" and broker.subscribe_pattern(pattern="t.*").is_pattern
    assert broker.subscriptions("t") == [sub]


def test_a_traceback_through_a_reported_operation_shows_its_line(make_broker) -> None:
    broker = make_broker()
    try:
        broker.subscribe(" ")
    except mqkit.InvalidTopicError as exc:
        text = "".join(traceback.format_exception(exc))
    else:  # pragma: no cover
        raise AssertionError("a blank topic was accepted")
    assert "@reported Broker.subscribe" in text and "return _method(self, topic, opts)" in text
