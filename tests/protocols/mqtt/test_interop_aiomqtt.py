"""aiomqtt 2.5.1 (asyncio) against the gateway."""

from __future__ import annotations

import asyncio

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import mqkit

from .helpers import TIMEOUT, Srv


def run(coro: object) -> None:
    asyncio.run(asyncio.wait_for(coro, TIMEOUT))  # type: ignore[arg-type]


def test_round_trip_all_qos_v5(srv: Srv) -> None:
    inproc = srv.broker.subscribe("aio/x")

    async def main() -> None:
        async with (
            aiomqtt.Client(
                srv.host, srv.port, identifier="s", protocol=aiomqtt.ProtocolVersion.V5
            ) as s,
            aiomqtt.Client(srv.host, srv.port, identifier="p") as p,
        ):
            await s.subscribe("aio/#", qos=2)
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = [("who", "aiomqtt")]
            for qos in (0, 1, 2):
                await p.publish("aio/x", f"q{qos}".encode(), qos=qos, properties=props)
            got = []
            async for message in s.messages:
                got.append((message.payload, message.qos))
                if len(got) == 3:
                    break
            assert sorted(got) == [(b"q0", 0), (b"q1", 1), (b"q2", 2)]

    run(main())
    messages = [inproc.get(timeout=TIMEOUT) for _ in range(3)]
    assert [m.data for m in messages] == [b"q0", b"q1", b"q2"]
    assert [m.meta["mqtt.qos"] for m in messages] == ["0", "1", "2"]


def test_in_process_to_aiomqtt_v311(srv: Srv) -> None:
    async def main() -> None:
        async with aiomqtt.Client(
            srv.host, srv.port, identifier="c", protocol=aiomqtt.ProtocolVersion.V311
        ) as c:
            await c.subscribe("feed/+", qos=1)
            srv.broker.publish("feed/a", mqkit.Message("1", {"n": 1}))
            async for message in c.messages:
                assert message.topic.value == "feed/a"
                assert message.payload == b'{"n":1}'
                break

    run(main())


def test_retained(srv: Srv) -> None:
    async def main() -> None:
        async with aiomqtt.Client(srv.host, srv.port, identifier="r") as c:
            await c.publish("aio/ret", b"kept", qos=1, retain=True)
        async with aiomqtt.Client(srv.host, srv.port, identifier="r2") as c:
            await c.subscribe("aio/ret")
            async for message in c.messages:
                assert (message.payload, message.retain) == (b"kept", True)
                break

    run(main())
