"""AMQP servers in processes of their own: a private RabbitMQ node and mqkit's AMQP gateway.

Used by ``benchmarks/bench_amqp.py``, by the test suite's ``rabbitmq`` fixture
(``tests/support/rabbitmq.py`` loads this file by its path: ``benchmarks/`` is not a package)
and by ``tests/interop/amqp_suites.py``. Standard library only.

:class:`RabbitMQNode` boots Debian's ``rabbitmq-server`` as the current user, sharing nothing
with a system-wide node: its own directory (Mnesia, logs, PID file, config, ``HOME`` for the
Erlang cookie), free ports for AMQP, Erlang distribution and epmd, a unique node name, and an
epmd of its own (started here, ``-start_epmd false`` for the node) - so it neither needs nor
disturbs a RabbitMQ on 5672 or the system's epmd on 4369. :meth:`RabbitMQNode.stop` stops the
node (SIGTERM: the server script stops the VM and waits), kills whatever is left of the process
group it started (``beam.smp``, ``erl_child_setup``), stops its epmd and removes the directory.

:class:`MqkitAMQPServer` runs ``mqkit.Broker(Config(enable_amqp=True, amqp_port=0))`` and
``start_amqp_server()`` in a child Python (the interpreter running this code, with its
environment). Both have ``host``, ``port`` and ``url`` (``amqp://guest:guest@HOST:PORT/%2F``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType

__all__ = [
    "AMQP_HEADER",
    "MqkitAMQPServer",
    "RabbitMQNode",
    "ServerError",
    "free_port",
    "mqkit_amqp_available",
    "rabbitmq_script",
    "wait_for_amqp",
]

AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
"""The AMQP 0-9-1 protocol header a client sends first."""

DEBIAN_SCRIPT = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
"""The server script behind Debian's ``/usr/sbin/rabbitmq-server`` (which, run as root,
switches to the ``rabbitmq`` user and the system node's directories)."""


class ServerError(RuntimeError):
    """A server did not start (its output is in the message) or did not stop."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rabbitmq_script() -> str | None:
    """The ``rabbitmq-server`` to run as the current user, or None when none is installed.

    On Debian that is :data:`DEBIAN_SCRIPT`; elsewhere (a generic-unix tarball) the
    ``rabbitmq-server`` on ``PATH`` runs as whoever starts it.
    """
    found = shutil.which("rabbitmq-server")
    if found is None:
        return None
    if DEBIAN_SCRIPT.is_file():
        return str(DEBIAN_SCRIPT)
    return found


def mqkit_amqp_available() -> bool:
    """Whether this Python has mqkit's AMQP gateway (``mqkit.protocols.amqp``)."""
    try:
        return importlib.util.find_spec("mqkit.protocols.amqp") is not None
    except ModuleNotFoundError:
        return False


def _amqp_answers(host: str, port: int) -> bool:
    """Whether a server on ``host:port`` answers the protocol header with a method frame."""
    try:
        with socket.create_connection((host, port), timeout=2) as sock:
            sock.sendall(AMQP_HEADER)
            first = sock.recv(1)
    except OSError:
        return False
    return first == b"\x01"  # connection.start arrives in a method frame (type 1)


def wait_for_amqp(
    host: str, port: int, deadline: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Return once ``host:port`` answers an AMQP client; ServerError after ``deadline`` s.

    With ``proc``, fail at once if that process ends first (its exit ends the wait).
    """
    end = time.monotonic() + deadline
    while not _amqp_answers(host, port):
        if time.monotonic() > end:
            raise ServerError(f"nothing answers AMQP on {host}:{port} after {deadline} s")
        if proc is None:
            time.sleep(0.1)
            continue
        try:
            code = proc.wait(timeout=0.1)  # the pause between attempts, ended by an exit
        except subprocess.TimeoutExpired:
            continue
        raise ServerError(f"the server exited with code {code} before it accepted AMQP")


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def _kill_group(pgid: int) -> None:
    """SIGKILL what is left of the process group ``pgid`` (a session started here)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _stat(pid: int) -> tuple[int, str] | None:
    """``(parent pid, start time)`` of a process from ``/proc`` (None if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), fields[19]


def _descendants(root: int) -> list[tuple[int, str]]:
    """Every process below ``root`` as ``(pid, start time)`` (empty without ``/proc``).

    ``beam.smp`` puts some helpers (``erl_child_setup``, ``inet_gethost``) in sessions of
    their own, out of the process group: :meth:`RabbitMQNode.stop` finds them here.
    """
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        stat = _stat(int(entry.name))
        if stat is not None:
            children.setdefault(stat[0], []).append((int(entry.name), stat[1]))
    found: list[tuple[int, str]] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def _reap(processes: list[tuple[int, str]], deadline: float) -> None:
    """Wait up to ``deadline`` s for ``processes`` to end, then SIGKILL those still there.

    A process counts as still there only with the same start time (not a reused pid).
    """
    end = time.monotonic() + deadline
    alive = processes
    while alive:
        alive = [(pid, start) for pid, start in alive if (_stat(pid) or (0, ""))[1] == start]
        if not alive or time.monotonic() > end:
            break
        time.sleep(0.05)
    for pid, _ in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


class RabbitMQNode:
    """A private RabbitMQ node on 127.0.0.1 (see the module's docstring).

    ``port`` is the AMQP port (default: a free one). With ``tls`` (certificate, key and CA
    certificate files) the node also listens for AMQPS on :attr:`tls_port` (a free port),
    asking for a client certificate but not requiring one. ``start()`` boots the node (about
    5 s) and returns once it accepts AMQP connections (within ``boot_timeout`` seconds);
    ``stop()`` ends it and everything it started. Also a context manager. The user ``guest``
    (password ``guest``) may connect from 127.0.0.1.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        port: int = 0,
        boot_timeout: float = 90.0,
        keep_dir: bool = False,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        self.tls = tls
        self.tls_port = 0
        """The AMQPS port with ``tls`` (0 without)."""
        self.boot_timeout = boot_timeout
        self.keep_dir = keep_dir
        self.port = port
        """The AMQP port (0 before ``start()``: a free one then)."""
        self._fixed_port = port
        self.dist_port = 0
        self.epmd_port = 0
        self.nodename = ""
        self.directory: Path | None = None
        self.boot_seconds = 0.0
        self._server: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The AMQP URL of the node's default virtual host, as user guest."""
        return f"amqp://guest:guest@{self.host}:{self.port}/%2F"

    @property
    def log(self) -> str:
        """The end of what the node wrote (its console output and its log file)."""
        if self.directory is None:
            return ""
        logs = sorted((self.directory / "log").glob("*.log"))
        return "\n".join(_tail(p) for p in [self.directory / "server.out", *logs])

    def __enter__(self) -> RabbitMQNode:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Boot the node; ServerError (with its output) when it does not accept AMQP in time."""
        script = rabbitmq_script()
        if script is None:
            raise ServerError("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
        started = time.monotonic()
        self.directory = Path(tempfile.mkdtemp(prefix="mqkit-rabbitmq-"))
        try:
            self._start_epmd()
            self._start_server(script)
            wait_for_amqp(self.host, self.port, self.boot_timeout, self._server)
        except BaseException as exc:
            log = self.log
            self.stop()
            if isinstance(exc, ServerError):
                raise ServerError(f"RabbitMQ did not start: {exc}\n{log}") from None
            raise
        self.boot_seconds = time.monotonic() - started

    def _start_epmd(self) -> None:
        """Start an epmd of our own on a free port (a few tries: a port can be taken meanwhile)."""
        assert self.directory is not None
        epmd = shutil.which("epmd")
        if epmd is None:
            raise ServerError("epmd (Debian package erlang-base) is not installed")
        for _ in range(5):
            port = free_port()
            with open(self.directory / "epmd.out", "ab") as out:
                proc = subprocess.Popen(
                    [epmd, "-port", str(port), "-address", "127.0.0.1"],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            end = time.monotonic() + 10
            while time.monotonic() < end:
                try:
                    socket.create_connection((self.host, port), timeout=1).close()
                except OSError:
                    try:
                        proc.wait(timeout=0.05)  # the pause between attempts
                    except subprocess.TimeoutExpired:
                        continue
                    break  # it exited: the port was taken; try another
                else:
                    self._epmd, self.epmd_port = proc, port
                    return
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        raise ServerError(f"epmd did not start: {_tail(self.directory / 'epmd.out')}")

    def _start_server(self, script: str) -> None:
        assert self.directory is not None
        d = self.directory
        self.port, self.dist_port = self._fixed_port or free_port(), free_port()
        self.nodename = f"rabbit-{uuid.uuid4().hex[:12]}@localhost"
        (d / "rabbitmq.conf").write_text(
            "log.console = false\nlog.file.level = info\ndisk_free_limit.absolute = 10MB\n"
        )
        if self.tls is not None:
            cert, key, ca = self.tls
            self.tls_port = free_port()
            with open(d / "rabbitmq.conf", "a") as conf:
                conf.write(
                    f"listeners.ssl.1 = {self.host}:{self.tls_port}\n"
                    f"ssl_options.certfile = {cert}\n"
                    f"ssl_options.keyfile = {key}\n"
                    f"ssl_options.cacertfile = {ca}\n"
                    "ssl_options.verify = verify_peer\n"
                    "ssl_options.fail_if_no_peer_cert = false\n"
                )
        (d / "rabbitmq-env.conf").write_text("")
        (d / "enabled_plugins").write_text("[].\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(d),  # the Erlang cookie (.erlang.cookie) goes here
            ERL_EPMD_PORT=str(self.epmd_port),
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_PID_FILE=str(d / "rabbitmq.pid"),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS=self.host,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-start_epmd false",
        )
        with open(d / "server.out", "ab") as out:
            self._server = subprocess.Popen(
                [script],
                env=env,
                cwd=d,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the node and its epmd; kill what remains; remove the directory. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            below = _descendants(server.pid)
            if server.poll() is None:
                server.terminate()  # the script stops the VM (rabbit's own shutdown) and waits
                with contextlib.suppress(subprocess.TimeoutExpired):
                    server.wait(timeout=timeout)
            _kill_group(server.pid)  # beam.smp, if it outlived the script
            if server.poll() is None:
                server.wait(timeout=10)
            _reap(below, 5.0)  # the VM's helpers in sessions of their own
        epmd, self._epmd = self._epmd, None
        if epmd is not None:
            if epmd.poll() is None:
                epmd.terminate()
                try:
                    epmd.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    epmd.kill()
                    epmd.wait(timeout=10)
            _kill_group(epmd.pid)
        if self.directory is not None and not self.keep_dir:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


_MQKIT_SERVER = """
import signal, sys, threading
import mqkit
stop = threading.Event()
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda *_: stop.set())
settings = {}
if len(sys.argv) == 4:  # certificate, key, CA: the TLS listener on a free port
    cert, key, ca = sys.argv[1:]
    settings["amqp"] = {
        "tls_cert": cert, "tls_key": key, "tls_ca": ca, "tls_port": 0,
        "tls_fail_if_no_peer_cert": False,
    }
config = mqkit.Config(
    enable_amqp=True, amqp_host="127.0.0.1", amqp_port=0, settings=settings
)
with mqkit.Broker(config) as broker:
    host, port = broker.start_amqp_server()
    tls = broker.get_plugin("amqp").tls_address
    print(f"listening {host} {port} {tls[1] if tls else 0}", flush=True)
    stop.wait()
"""


class MqkitAMQPServer:
    """mqkit's AMQP gateway (a ``Broker`` with its defaults and ``enable_amqp``) in a child.

    ``python`` is the interpreter to run (default: this one); the child inherits the
    environment (``PYTHONPATH`` included). ``start()`` returns once it accepts AMQP. With
    ``tls`` (certificate, key and CA certificate files, as for :class:`RabbitMQNode`) the
    gateway also listens for AMQPS on :attr:`tls_port` (``[amqp] tls_*``, a free port) and, as
    :class:`RabbitMQNode` (``verify_peer``, ``fail_if_no_peer_cert = false``), verifies a
    client certificate against that CA when one is presented.
    """

    def __init__(
        self,
        python: str = sys.executable,
        boot_timeout: float = 60.0,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        self.python = python
        self.boot_timeout = boot_timeout
        self.tls = tls
        self.host = "127.0.0.1"
        self.port = 0
        self.tls_port = 0
        """The AMQPS port with ``tls`` (0 without)."""
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: Path | None = None

    @property
    def url(self) -> str:
        """The AMQP URL of the default virtual host, as user guest."""
        return f"amqp://guest:guest@{self.host}:{self.port}/%2F"

    def __enter__(self) -> MqkitAMQPServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the child; ServerError (with its output) if it does not listen in time."""
        fd, name = tempfile.mkstemp(prefix="mqkit-amqp-", suffix=".out")
        self._out = Path(name)
        with os.fdopen(fd, "wb") as out:
            self._proc = subprocess.Popen(
                [self.python, "-c", _MQKIT_SERVER, *(str(f) for f in self.tls or ())],
                cwd=tempfile.gettempdir(),  # "-c" puts the working directory first on sys.path
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        end = time.monotonic() + self.boot_timeout
        while True:
            ready = [
                line
                for line in _tail(self._out).splitlines(keepends=True)
                if line.startswith("listening ") and line.endswith("\n")
            ]
            if ready:
                _, host, port, tls_port = ready[0].split()
                self.host, self.port, self.tls_port = host, int(port), int(tls_port)
                break
            try:
                code = self._proc.wait(timeout=0.05)  # the pause between looks, ended by an exit
            except subprocess.TimeoutExpired:
                if time.monotonic() > end:
                    output = _tail(self._out)
                    self.stop()
                    raise ServerError(f"mqkit's AMQP gateway did not start: {output}") from None
                continue
            output = _tail(self._out)
            self.stop()
            raise ServerError(f"mqkit's AMQP gateway exited with code {code}: {output}")
        wait_for_amqp(self.host, self.port, self.boot_timeout, self._proc)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the child (SIGTERM, then SIGKILL); idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            _kill_group(proc.pid)
        if self._out is not None:
            self._out.unlink(missing_ok=True)
            self._out = None
