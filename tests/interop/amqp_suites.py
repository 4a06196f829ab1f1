"""Run the test suites of aiormq and aio-pika (from their PyPI sdists) against AMQP servers.

Usage (from a clone; CI runs it from ``.ci/run``)::

    python tests/interop/amqp_suites.py [--target rabbitmq] [--target mqkit] [--floors FILE]

The sdists of aiormq 7.2.4 and aio-pika 10.2.1 are downloaded into a scratch directory (never
committed) with a virtual environment of their own (pytest, aiomisc-pytest and the other test
requirements, pinned below: the aiomisc pytest plugin must not load into mqkit's own test
runs). Each suite's ``tests/conftest.py`` gets a small shim appended: its Docker fixtures
(``docker``, ``rabbitmq_container``, ``amqp_direct_url``) are replaced by the server named in
``AMQP_URL`` (and ``AMQPS_PORT``), and the tests that restart a broker container of their own
(``docker``) are skipped, and the autouse ``memory_tracer`` (tracemalloc: the client
library's own leak check, which triples the run time and says nothing about the server) is
off. Then, per target, a fresh server is started for each suite:

- ``rabbitmq``: a private node of Debian's ``rabbitmq-server`` (``benchmarks/servers.py``),
  with an AMQPS listener using the certificates the aiormq suite ships (``tests/certs``);
- ``mqkit``: mqkit's AMQP gateway (``Broker(Config(enable_amqp=True))``) run by ``--python``
  (default: this interpreter), only where that Python has ``mqkit.protocols.amqp``, with its
  TLS listener (``[amqp] tls_cert/tls_key/tls_ca``) on the same certificates.

Each suite runs with pytest (``--timeout`` seconds per test, 30 by default: RabbitMQ's slowest
test takes 8; the whole run is bounded by ``--suite-timeout``, after which pytest is
interrupted; without its JUnit file the results are read from its ``-v`` output). The script
prints passed/failed/errors/skipped per suite and target, the tests RabbitMQ passes and mqkit
does not, and checks the floors: ``--floors FILE`` (JSON, ``{"mqkit": {"aiormq": N,
"aio-pika": M}, "rabbitmq": {...}}``) holds the least number of passed tests each target must
reach. It exits 1 when a target ran and passed fewer tests than
its floor, 0 otherwise - mqkit's failures above its floor are reported, not fatal.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

SUITES = {"aiormq": "7.2.4", "aio-pika": "10.2.1"}
"""The suites: PyPI name -> version."""

TEST_REQUIREMENTS = [
    "pytest==9.2.0",
    "pytest-timeout==2.4.0",
    "aiomisc==18.0.37",
    "aiomisc-pytest==2.0.0",
    "pamqp==4.0.1",
    "yarl==1.25.1",
    "shortuuid==1.0.13",
    "timeout-decorator==0.5.0",
]
"""What the suites import besides the packages under test (their ``test`` groups, pinned)."""

SHIM = '''

# -- appended by mqkit's tests/interop/amqp_suites.py: the server under test is AMQP_URL ----
# (and AMQPS_PORT for amqps), not a Docker container; tests that restart a broker container
# of their own (the "docker" fixture) are skipped; the client's own leak check is off.
import os as _shim_os

from yarl import URL as _ShimURL

from tests.docker_client import ContainerInfo as _ShimContainerInfo


def pytest_configure(config):
    """No Docker check: the server is given."""


@pytest.fixture(autouse=True)
def memory_tracer():
    """Not here: tracemalloc checks the client library for leaks, triples the run time and
    says nothing about the server."""
    yield


@pytest.fixture(scope="session")
def docker():
    pytest.skip("restarts a broker container of its own (needs Docker)")


@pytest.fixture(scope="session")
def rabbitmq_container():
    url = _ShimURL(_shim_os.environ["AMQP_URL"])
    ports = {"5672/tcp": url.port, "5671/tcp": int(_shim_os.environ["AMQPS_PORT"])}
    return _ShimContainerInfo(id="external", ports=ports, host=url.host)


@pytest.fixture(scope="session")
def amqp_direct_url(rabbitmq_container):
    return _ShimURL.build(
        scheme="amqp",
        user="guest",
        password="guest",
        path="//",
        host=rabbitmq_container.host,
        port=rabbitmq_container.ports["5672/tcp"],
    )
'''


def load_servers() -> ModuleType:
    """``benchmarks/servers.py`` (the RabbitMQ node and mqkit's gateway in processes)."""
    spec = importlib.util.spec_from_file_location(
        "mqkit_benchmarks_servers", ROOT / "benchmarks" / "servers.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run(command: list[str], **kwargs: object) -> None:
    """Run ``command``; exit with its output when it fails."""
    proc = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{proc.stdout}\n{proc.stderr}")


def prepare(work: Path) -> dict[str, Path]:
    """The scratch venv and the unpacked, shimmed suites (``{suite: directory}``)."""
    venv = work / "venv"
    if not (venv / "bin" / "python").exists():
        run([sys.executable, "-m", "venv", str(venv)])
        run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *TEST_REQUIREMENTS])
    sdists = work / "sdist"
    pins = [f"{name}=={version}" for name, version in SUITES.items()]
    run([str(venv / "bin" / "python"), "-m", "pip", "download", "--quiet", "--no-deps",
         "--no-binary", ",".join(SUITES), *pins, "-d", str(sdists)])  # fmt: skip
    dirs: dict[str, Path] = {}
    for name, version in SUITES.items():
        tarball = sdists / f"{name.replace('-', '_')}-{version}.tar.gz"
        target = work / f"{name.replace('-', '_')}-{version}"
        if not target.exists():
            with tarfile.open(tarball) as tar:
                tar.extractall(work, filter="data")
            with open(target / "tests" / "conftest.py", "a") as conftest:
                conftest.write(SHIM)
        dirs[name] = target
    tarballs = [str(sdists / f"{n.replace('-', '_')}-{v}.tar.gz") for n, v in SUITES.items()]
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", *tarballs])
    return dirs


VERBOSE = re.compile(r"^(tests/\S+\.py)::(\S.*?) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
"""A result line of ``pytest -v``: path, test name, outcome."""
OUTCOMES = {"PASSED": "pass", "XPASS": "pass", "FAILED": "FAIL", "ERROR": "ERROR"}


def results_from_log(path: Path) -> dict[str, str]:
    """``{test id: ...}`` from ``pytest -v`` output: what ran before a run was cut short."""
    out: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        found = VERBOSE.match(line)
        if found:
            module = found[1].removesuffix(".py").replace("/", ".")
            test = found[2]
            if "::" in test:  # a test method: Class::method
                cls, test = test.rsplit("::", 1)
                module = f"{module}.{cls}"
            outcome = OUTCOMES.get(found[3], "skip")
            if out.get(f"{module}::{test}") != "ERROR":  # an error at teardown stays an error
                out[f"{module}::{test}"] = outcome
    return out


def results(path: Path) -> dict[str, str]:
    """``{test id: pass|FAIL|ERROR|skip}`` from a JUnit XML file (empty if there is none)."""
    try:
        tree = ET.parse(path)
    except (OSError, ET.ParseError):
        return {}
    out: dict[str, str] = {}
    for case in tree.iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None:
            out[name] = "FAIL"
        elif case.find("error") is not None:
            out[name] = "ERROR"
        elif case.find("skipped") is not None:
            out[name] = "skip"
        else:
            out[name] = "pass"
    return out


def run_suite(
    work: Path,
    suite: Path,
    name: str,
    target: str,
    url: str,
    tls_port: int,
    args: argparse.Namespace,
) -> dict[str, str]:
    """Run one suite against the server at ``url``; return its results."""
    xml = work / f"{target}-{name}.xml"
    log = work / f"{target}-{name}.log"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AMQP_URL")}
    env.update(AMQP_URL=url, AMQPS_PORT=str(tls_port), PYTHONDONTWRITEBYTECODE="1")
    # --tb=native: pytest's own traceback formatting parses the test's source with ast, which
    # Python 3.11 can abort with "AST constructor recursion depth mismatch" (an INTERNALERROR
    # that ends the whole run) after a deep-stack failure in aiormq's suite.
    command = [str(work / "venv" / "bin" / "python"), "-m", "pytest", "-p", "no:cacheprovider",
               "-v", "--tb=native", "-o", "log_cli=false", "-W", "ignore::DeprecationWarning",
               f"--timeout={args.timeout}", f"--junitxml={xml}", "tests"]  # fmt: skip
    started = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=suite, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            proc.wait(timeout=args.suite_timeout)
        except subprocess.TimeoutExpired:
            # SIGINT: pytest stops as after Ctrl-C and writes its JUnit file - unless a hung
            # test ignores it; then what ran is read from the -v output
            print(f"  {name} against {target}: stopped after {args.suite_timeout} s", flush=True)
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    got = results(xml) or results_from_log(log)
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
    print(f"  {name} against {target}: {tail[0]} ({time.monotonic() - started:.0f} s)", flush=True)
    return got


HEADINGS = ("passed", "failed", "errors", "skipped", "total")


def counts(res: dict[str, str]) -> dict[str, int]:
    return {k: sum(1 for v in res.values() if v == k) for k in ("pass", "FAIL", "ERROR", "skip")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--target",
        action="append",
        choices=["rabbitmq", "mqkit"],
        help="servers to run against (default: both; mqkit where it exists)",
    )
    parser.add_argument("--suite", action="append", choices=list(SUITES), help="default: both")
    parser.add_argument("--python", default=sys.executable, help="the Python that runs mqkit")
    parser.add_argument(
        "--work", type=Path, help="scratch directory, kept (default: a new one, removed at the end)"
    )
    parser.add_argument("--timeout", type=int, default=30, help="seconds per test")
    parser.add_argument("--suite-timeout", type=int, default=600, help="seconds per suite run")
    parser.add_argument("--floors", type=Path, help="JSON file of least passed counts")
    parser.add_argument("--json", type=Path, help="write every test's result here")
    args = parser.parse_args()
    servers = load_servers()
    targets = args.target or ["rabbitmq", "mqkit"]
    suites = args.suite or list(SUITES)
    work = args.work or Path(tempfile.mkdtemp(prefix="mqkit-amqp-suites-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"scratch directory: {work}", flush=True)
    try:
        table = run_targets(work, targets, suites, args, servers)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return report(table, suites, args)


def run_targets(
    work: Path, targets: list[str], suites: list[str], args: argparse.Namespace, servers: ModuleType
) -> dict[str, dict[str, dict[str, str]]]:
    """Prepare the suites in ``work`` and run them against each target; return the results."""
    dirs = prepare(work)
    certs = dirs["aiormq"] / "tests" / "certs"
    table: dict[str, dict[str, dict[str, str]]] = {}

    def run_target(target: str) -> None:
        if target == "mqkit":
            # cwd: "-c" puts the working directory first on sys.path
            probe = subprocess.run(
                [args.python, "-c", "import importlib.util as u; "
                 "print(u.find_spec('mqkit.protocols.amqp') is not None)"],
                capture_output=True, text=True, check=False, cwd=tempfile.gettempdir(),
            )  # fmt: skip
            if probe.stdout.strip() != "True":
                print("mqkit: no mqkit.protocols.amqp in this mqkit: not run", flush=True)
                return
        for name in suites:
            tls = (certs / "server.pem", certs / "server.key", certs / "ca.pem")
            if target == "rabbitmq":
                server = servers.RabbitMQNode(tls=tls)
            else:
                server = servers.MqkitAMQPServer(python=args.python, tls=tls)
            server.start()
            try:
                tls_port = server.tls_port
                table.setdefault(target, {})[name] = run_suite(
                    work, dirs[name], name, target, server.url, tls_port, args
                )
            finally:
                server.stop()

    # The targets side by side, each in a thread of its own (each suite run is a pytest process
    # against its own server, with its own result files): most of a run's time is the suites'
    # waits (heartbeats, timeouts, reconnections), so two runs at once take little more than one.
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(targets)) as pool:
        for done in [pool.submit(run_target, target) for target in targets]:
            done.result()
    table = {t: table[t] for t in targets if t in table}  # in the order asked
    return table


def report(
    table: dict[str, dict[str, dict[str, str]]], suites: list[str], args: argparse.Namespace
) -> int:
    """Print the counts and the differences; check the floors; return the exit status."""
    print()
    print(f"{'suite':10} {'target':9}", *(f"{h:>7}" for h in HEADINGS))
    for name in suites:
        for target, per_suite in table.items():
            c = counts(per_suite.get(name, {}))
            total = sum(c.values())
            print(f"{name:10} {target:9}", *(f"{n:>7}" for n in (*c.values(), total)))
    if "rabbitmq" in table and "mqkit" in table:
        for name in suites:
            ref, ours = table["rabbitmq"].get(name, {}), table["mqkit"].get(name, {})
            behind = sorted(t for t, v in ref.items() if v == "pass" and ours.get(t) != "pass")
            ahead = sorted(t for t, v in ours.items() if v == "pass" and ref.get(t) != "pass")
            print(f"\n{name}: RabbitMQ passes, mqkit does not ({len(behind)}):")
            for t in behind:
                print(f"  {ours.get(t, '-'):5} {t}")
            print(f"{name}: mqkit passes, RabbitMQ does not ({len(ahead)}):")
            for t in ahead:
                print(f"  {ref.get(t, '-'):5} {t}")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    floors: dict[str, dict[str, int]] = json.loads(args.floors.read_text()) if args.floors else {}
    problems = []
    for target, per_suite in table.items():
        for name, res in per_suite.items():
            floor = floors.get(target, {}).get(name, 0)
            passed = counts(res)["pass"]
            if passed < floor:
                problems.append(
                    f"{target} passed {passed} tests of {name}, fewer than its floor {floor}"
                )
    if problems:
        print("\nAMQP suites gate FAILED:", *problems, sep="\n  ")
        return 1
    print(
        "\nAMQP suites gate passed (floors: " + (str(args.floors) if args.floors else "none") + ")"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
