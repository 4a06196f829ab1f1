"""One broker, two worlds: amq.topic is the broker's topic space, both ways (and MQTT's)."""

from __future__ import annotations

from collections.abc import Callable

import paho.mqtt.client as paho
import pika

import mqkit

from .conftest import AMQPServer
from .helpers import TIMEOUT, connect


def test_an_in_process_publish_reaches_queues_bound_to_amq_topic(
    mqkit_amqp: AMQPServer,
) -> None:
    conn = connect(mqkit_amqp)
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "amq.topic", "orders.*.created")
    broker = mqkit_amqp.broker
    broker.publish("orders.eu.created", mqkit.Message("m1", b"hello", meta={"tenant": "acme"}))
    broker.publish("orders.eu.deleted", mqkit.Message("m2", b"no"))
    broker.publish("orders.eu.created", mqkit.Message("m3", "text"))
    broker.publish("orders.eu.created", mqkit.Message("m4", {"n": 1}, type="order"))
    got = []
    for method, props, body in ch.consume(q, auto_ack=True, inactivity_timeout=TIMEOUT):
        assert method is not None
        got.append((method.exchange, method.routing_key, props, body))
        if len(got) == 3:
            break
    assert [(e, k, b) for e, k, _, b in got] == [
        ("amq.topic", "orders.eu.created", b"hello"),
        ("amq.topic", "orders.eu.created", b"text"),
        ("amq.topic", "orders.eu.created", b'{"n":1}'),
    ]
    first, second, third = (p for _, _, p, _ in got)
    assert first.message_id == "m1" and first.headers == {"tenant": "acme"}
    assert second.content_type == "text/plain"
    assert third.content_type == "application/json" and third.type == "order"
    conn.close()


def test_an_amqp_publish_to_amq_topic_reaches_in_process_subscribers(
    mqkit_amqp: AMQPServer,
) -> None:
    broker = mqkit_amqp.broker
    exact = broker.subscribe("sensors.kitchen.temp")
    pattern = broker.subscribe_pattern("sensors.*")
    conn = connect(mqkit_amqp)
    ch = conn.channel()
    props = pika.BasicProperties(
        content_type="application/json", correlation_id="c9", headers={"unit": "C"}
    )
    ch.basic_publish("amq.topic", "sensors.kitchen.temp", b"21.5", props)
    got = exact.get(timeout=TIMEOUT)
    assert got.data == b"21.5" and got.topic == "sensors.kitchen.temp"
    assert got.meta["amqp.content_type"] == "application/json"
    assert got.meta["amqp.correlation_id"] == "c9"
    assert got.meta["unit"] == "C"
    assert pattern.get(timeout=TIMEOUT).data == b"21.5"
    conn.close()


def test_amqp_publishes_reach_both_in_process_and_bound_queues(mqkit_amqp: AMQPServer) -> None:
    sub = mqkit_amqp.broker.subscribe("a.b")
    conn = connect(mqkit_amqp)
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "amq.topic", "a.#")
    ch.confirm_delivery()
    ch.basic_publish("amq.topic", "a.b", b"both", mandatory=True)
    assert sub.get(timeout=TIMEOUT).data == b"both"
    for method, props, body in ch.consume(q, auto_ack=True, inactivity_timeout=TIMEOUT):
        assert (method.routing_key, body) == ("a.b", b"both")
        assert props.message_id is None  # it came from AMQP: no id was made up
        break
    conn.close()


def test_mqtt_and_amqp_meet_on_the_same_topics(
    amqp_server_factory: Callable[..., AMQPServer],
) -> None:
    server = amqp_server_factory(enable_mqtt=True, mqtt_port=0)
    host, port = server.broker.start_mqtt_server()
    conn = connect(server)
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "amq.topic", "#")
    received: list[tuple[str, bytes]] = []
    import threading

    subscribed, arrived = threading.Event(), threading.Event()
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bridge-test")
    client.on_subscribe = lambda *a: subscribed.set()

    def on_message(c: object, u: object, msg: paho.MQTTMessage) -> None:
        received.append((msg.topic, msg.payload))
        arrived.set()

    client.on_message = on_message
    client.connect(host, port)
    client.loop_start()
    try:
        client.subscribe("from-amqp", qos=1)
        assert subscribed.wait(TIMEOUT)
        ch.basic_publish("amq.topic", "from-amqp", b"to mqtt")
        assert arrived.wait(TIMEOUT)
        assert received == [("from-amqp", b"to mqtt")]
        client.publish("from-mqtt", b"to amqp", qos=1).wait_for_publish(TIMEOUT)
        for method, _, body in ch.consume(q, auto_ack=True, inactivity_timeout=TIMEOUT):
            assert method is not None
            if method.routing_key == "from-mqtt":
                assert body == b"to amqp"
                break
    finally:
        client.loop_stop()
        client.disconnect()
        conn.close()
