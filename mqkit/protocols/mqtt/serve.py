"""Run a broker with the MQTT gateway until interrupted: ``python -m mqkit.protocols.mqtt.serve``.

Options: ``--host``, ``--port`` (0: any free port), ``--tls-port``, ``--cert``/``--key`` (TLS),
``--password-file``, ``--acl-file``, ``--no-anonymous``, ``--persistence DIR``. Prints
``listening HOST PORT`` (and ``tls HOST PORT``) once it accepts connections; SIGINT or
SIGTERM closes the broker (clients are disconnected, wills published). SIGHUP re-reads the
ACL file (:meth:`.MQTTPlugin.reload_acl`) and prints ``acl reloaded``, or, when the file is
bad, ``acl not reloaded: REASON`` and keeps the rules in force.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from mqkit.core.broker import Broker
from mqkit.core.config import Config
from mqkit.core.errors import MQError
from mqkit.protocols.mqtt.plugin import MQTTPlugin
from mqkit.protocols.mqtt.settings import MQTTSettings

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the options, serve, and return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m mqkit.protocols.mqtt.serve")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--tls-port", type=int, default=8883)
    parser.add_argument("--cert", default="")
    parser.add_argument("--key", default="")
    parser.add_argument("--password-file", default="")
    parser.add_argument("--acl-file", default="")
    parser.add_argument("--no-anonymous", action="store_true")
    parser.add_argument("--persistence", default="")
    parser.add_argument("--max-inflight", type=int, default=32)
    args = parser.parse_args(argv)
    mqtt = MQTTSettings(
        host=args.host,
        tls_port=args.tls_port,
        tls_cert=args.cert,
        tls_key=args.key,
        password_file=args.password_file,
        acl_file=args.acl_file,
        allow_anonymous=not args.no_anonymous,
        max_inflight=args.max_inflight,
    )
    config = Config(
        enable_mqtt=True,
        mqtt_port=args.port,
        settings={"mqtt": mqtt},
        enable_persistence=bool(args.persistence),
        persistence_path=args.persistence,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with Broker(config) as broker:
        host, port = broker.start_mqtt_server()
        print(f"listening {host} {port}", flush=True)
        plugin = broker.get_plugin("mqtt")
        assert isinstance(plugin, MQTTPlugin)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, lambda *_: _reload_acl(plugin))
        tls = plugin.tls_address
        if tls is not None:
            print(f"tls {tls[0]} {tls[1]}", flush=True)
        stop.wait()
    return 0


def _reload_acl(plugin: MQTTPlugin) -> None:
    try:
        plugin.reload_acl()
    except MQError as exc:
        print(f"acl not reloaded: {exc}", flush=True)
    else:
        print("acl reloaded", flush=True)


if __name__ == "__main__":
    sys.exit(main())
