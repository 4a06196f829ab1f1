"""A port already in use is said so (issue 15, point 2): never "protocol not enabled"."""

from __future__ import annotations

import errno
import socket

import pytest

import mqkit


def test_start_mqtt_server_on_a_port_in_use_says_the_port_is_in_use() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with mqkit.Broker(mqkit.Config(enable_mqtt=True, mqtt_port=port)) as broker:
            with pytest.raises(OSError) as info:
                broker.start_mqtt_server()
            assert isinstance(info.value, mqkit.ProtocolError)
            assert not isinstance(info.value, mqkit.FeatureNotEnabledError)
            assert info.value.errno == errno.EADDRINUSE
            text = str(info.value)
            assert f"127.0.0.1:{port}" in text and "in use" in text, text
            assert "not enabled" not in text, text
            # nothing was left half-started: once the port is free, the gateway starts
            taken.close()
            host, bound = broker.start_mqtt_server()
            assert (host, bound) == ("127.0.0.1", port)
