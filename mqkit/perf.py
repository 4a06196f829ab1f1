"""What ``mqkit bench`` measures: mqkit itself, with your config (as redis-benchmark does Redis).

Every measurement builds a broker from the given :class:`~mqkit.Config` - with its persistence
store in a temporary directory and its gateways on free ports, so that a running service and
its data are never touched - and publishes messages of ``payload`` bytes to one topic:

- **throughput**: publish -> get in one thread, 1 -> 1 and 1 -> N subscribers (each publish is
  followed by a get from every subscription; with the ack plugin, get and ack); the median of
  interleaved rounds;
- **latency**: publish -> get across threads, one message at a time: a consumer thread blocks
  in ``get()``; the time from before ``publish`` to ``get()`` returning, as percentiles;
- **plugin costs**: for each plugin the config loads, the 1 -> 1 throughput with the config
  against the same config without that plugin, round by round; the cost is the difference in
  microseconds per message.

It needs nothing beyond mqkit (the ``benchmarks/`` directory of a clone compares mqkit with
its peers).
"""

from __future__ import annotations

import math
import queue
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import attrs

from mqkit.core.broker import Broker
from mqkit.core.config import Config
from mqkit.core.errors import MQError
from mqkit.core.message import AckMessage, Message
from mqkit.core.plugins import builtin_plugins, info_of

__all__ = ["Latency", "PerfRun", "PluginCost", "Throughput", "isolated", "percentile"]

TOPIC: Final = "mqkit-bench"
_GENEROUS: Final = 60.0
"""Seconds the latency run waits for one message before it gives up."""


@attrs.frozen(slots=True, kw_only=True)
class Throughput:
    """Publish -> get throughput of one fan-out: the median of the rounds."""

    subscribers: int
    messages: int
    samples: tuple[float, ...]
    """Every round's elapsed seconds."""

    @property
    def seconds(self) -> float:
        """The median round, in seconds."""
        return statistics.median(self.samples)

    @property
    def rate(self) -> float:
        """Messages published (and got by every subscriber) per second."""
        return self.messages / self.seconds if self.seconds > 0 else math.inf

    @property
    def micros(self) -> float:
        """Microseconds per published message."""
        return self.seconds / self.messages * 1e6

    @property
    def spread(self) -> float:
        """(slowest - fastest round) / median: how noisy the rounds were."""
        return (max(self.samples) - min(self.samples)) / self.seconds if self.seconds else 0.0


@attrs.frozen(slots=True, kw_only=True)
class Latency:
    """Publish -> get latency across threads, in microseconds."""

    messages: int
    p50: float
    p90: float
    p99: float
    max: float


@attrs.frozen(slots=True, kw_only=True)
class PluginCost:
    """What one plugin costs: 1 -> 1 microseconds per message with it and without it."""

    plugin: str
    with_us: float
    """The config's median µs per message."""
    without_us: float = math.nan
    """The median µs per message of the config without this plugin."""
    status: str = "ok"
    """``ok``, or why the config cannot run without the plugin (its error)."""

    @property
    def cost(self) -> float:
        """Microseconds per message the plugin adds (the median of the per-round differences)."""
        return self.with_us - self.without_us


def percentile(ordered: list[float], pct: float) -> float:
    """The nearest-rank ``pct`` percentile of ``ordered`` (sorted, not empty)."""
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def isolated(config: Config, workdir: Path) -> Config:
    """``config`` made safe to measure: its store in ``workdir``, its gateways on free ports."""
    changes: dict[str, Any] = {
        f.name: 0
        for f in attrs.fields(Config)
        if f.name.endswith("_port") and getattr(config, f.name)
    }
    changes["persistence_path"] = str(workdir)
    return config.replace(**changes)


def without(config: Config, plugin: str) -> Config:
    """``config`` without ``plugin``: its enabling flag off and its name in disable_plugins."""
    changes: dict[str, Any] = {
        "plugins": tuple(p for p in config.plugins if p != plugin),
        "disable_plugins": (*config.disable_plugins, plugin),
    }
    target = builtin_plugins().get(plugin)
    info = None if target is None else info_of(target)
    if info is not None and info.flag is not None:
        changes[info.flag] = False
    return config.replace(**changes)


class PerfRun:
    """The measurements of one config: ``messages`` per run of ``payload`` bytes each.

    ``on_step(description)`` is called after each run (for a progress bar); :meth:`steps` is
    how many runs :meth:`throughput`, :meth:`latency` and :meth:`plugin_costs` make in all.
    Raises :class:`~mqkit.MQError` when the config's broker cannot start.
    """

    def __init__(
        self,
        config: Config,
        *,
        messages: int,
        payload: int,
        rounds: int,
        on_step: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.messages = messages
        self.rounds = rounds
        self.data = b"x" * payload
        self.on_step = on_step
        with self._broker(config) as broker:
            loaded = tuple(broker.plugin_names())
        self.plugins: tuple[str, ...] = loaded
        """The plugins the config loads."""

    def steps(self, subscribers: int) -> int:
        """How many runs the three measurements make (``subscribers``: the fan-out besides 1)."""
        fanouts = 1 if subscribers == 1 else 2
        return self.rounds * fanouts + 1 + self.rounds * (1 + len(self.plugins))

    def _step(self, description: str) -> None:
        if self.on_step is not None:
            self.on_step(description)

    @contextmanager
    def _broker(self, config: Config) -> Iterator[Broker]:
        workdir = Path(tempfile.mkdtemp(prefix="mqkit-bench-"))
        try:
            with Broker(isolated(config, workdir / "store")) as broker:
                yield broker
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _batch(self, broker: Broker) -> tuple[list[Message], bool]:
        ack = "ack" in broker.plugin_names()
        make = AckMessage if ack else Message
        return [make(f"m-{i}", self.data) for i in range(self.messages)], ack

    def _run(self, config: Config, subscribers: int) -> float:
        """One run: publish every message, each followed by a get from every subscription."""
        with self._broker(config) as broker:
            msgs, ack = self._batch(broker)
            subs = [broker.subscribe(TOPIC) for _ in range(subscribers)]
            publish, gets = broker.publish, [s.get for s in subs]
            t0 = time.perf_counter()
            if ack:
                for m in msgs:
                    publish(TOPIC, m)
                    for s in subs:
                        got: Any = s.get()
                        s.ack(got.ack_id)
            else:
                for m in msgs:
                    publish(TOPIC, m)
                    for get in gets:
                        get()
            return time.perf_counter() - t0

    def throughput(self, subscribers: int) -> Throughput:
        """Publish -> get with ``subscribers`` subscriptions, ``rounds`` times."""
        samples = []
        for _ in range(self.rounds):
            samples.append(self._run(self.config, subscribers))
            self._step(f"1 -> {subscribers}")
        return Throughput(subscribers=subscribers, messages=self.messages, samples=tuple(samples))

    def latency(self) -> Latency:
        """Publish -> get across threads, one message in flight at a time."""
        n = self.messages
        sent, got = [0] * n, [0] * n
        back: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        with self._broker(self.config) as broker:
            msgs, ack = self._batch(broker)
            sub = broker.subscribe(TOPIC)

            def consume() -> None:
                try:
                    for i in range(n):
                        message: Any = sub.get(timeout=_GENEROUS)
                        got[i] = time.perf_counter_ns()
                        if ack:
                            sub.ack(message.ack_id)
                        back.put(None)
                except BaseException as exc:
                    back.put(exc)

            consumer = threading.Thread(target=consume, name="mqkit-bench-consumer", daemon=True)
            consumer.start()
            for i, m in enumerate(msgs):
                sent[i] = time.perf_counter_ns()
                broker.publish(TOPIC, m)
                failed = back.get(timeout=_GENEROUS)
                if failed is not None:
                    raise failed
            consumer.join(_GENEROUS)
        self._step("latency")
        ordered = sorted((g - s) / 1000 for s, g in zip(sent, got, strict=True))
        return Latency(
            messages=n,
            p50=percentile(ordered, 50),
            p90=percentile(ordered, 90),
            p99=percentile(ordered, 99),
            max=ordered[-1],
        )

    def plugin_costs(self) -> list[PluginCost]:
        """Each loaded plugin's cost: the config against the config without it, interleaved."""
        configs: dict[str, Config] = {}
        status: dict[str, str] = {}
        for plugin in self.plugins:
            try:
                configs[plugin] = without(self.config, plugin)
                with self._broker(configs[plugin]):
                    pass
            except MQError as exc:
                status[plugin] = str(exc)
        runs = [("", self.config)] + [(p, c) for p, c in configs.items() if p not in status]
        samples: dict[str, list[float]] = {name: [] for name, _ in runs}
        for r in range(self.rounds):
            k = r % len(runs)
            for name, config in runs[k:] + runs[:k]:
                samples[name].append(self._run(config, 1) / self.messages * 1e6)
                self._step(f"without {name}" if name else "the config")
            for plugin in status:
                self._step(f"without {plugin}")
        base = samples[""]
        with_us = statistics.median(base)
        out = []
        for plugin in self.plugins:
            if plugin in status:
                out.append(PluginCost(plugin=plugin, with_us=with_us, status=status[plugin]))
                continue
            cost = statistics.median(w - wo for w, wo in zip(base, samples[plugin], strict=True))
            out.append(PluginCost(plugin=plugin, with_us=with_us, without_us=with_us - cost))
        return out
