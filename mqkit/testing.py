"""Test kit for mqkit users and plugin authors; also a pytest plugin, loaded on request.

A project opts in with ``pytest_plugins = ["mqkit.testing"]`` in its top-level ``conftest.py``
(or ``-p mqkit.testing`` on the pytest command line or in ``addopts``); installing mqkit alone
adds no fixture to anyone's test run. The fixtures:

- ``make_broker``: ``make_broker("ack", "deadletter", config=..., plugins=[obj])`` builds a
  broker with *only* the named built-in plugins (plus any plugin objects), on the ``fake_clock``;
  every broker it made is closed at the end of the test.
- ``fake_clock``: a :class:`~mqkit.FakeClock`; ``fake_clock.advance(30)`` fires due timers.
- ``hook_recorder``: a :class:`HookRecorder` to pass as a plugin; it records every hook call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import attrs
import pytest

from mqkit.core.broker import Broker
from mqkit.core.codegen import generate
from mqkit.core.config import Config
from mqkit.core.hookspecs import HOOK_NAMES, hookimpl
from mqkit.core.plugins import PluginInfo, builtin_plugins, info_of
from mqkit.core.timers import FakeClock

__all__ = ["FakeClock", "HookCall", "HookRecorder", "broker_config", "make_broker"]


@attrs.frozen(slots=True)
class HookCall:
    """One recorded hook call: the hook's name and its arguments by name."""

    name: str
    kwargs: dict[str, Any]

    def __getattr__(self, item: str) -> Any:
        try:
            return self.kwargs[item]
        except KeyError:
            raise AttributeError(item) from None


def _recording(name: str, argnames: Sequence[str]) -> Callable[..., None]:
    def record(self: HookRecorder, *args: Any) -> None:
        self._record(name, dict(zip(argnames, args, strict=True)))

    # Give the method the hook's exact signature, so pluggy passes every argument.
    params = ", ".join(argnames)
    source = f"def {name}(self, {params}):\n    _record(self, {params})\n"
    fn: Callable[..., None] = generate(name, source, {"_record": record}, f"recorder of {name}")
    return hookimpl(tryfirst=True)(fn)


class HookRecorder:
    """A plugin that records every hook call (``tryfirst``, so it sees rejected publishes too).

    ``recorder.calls`` lists :class:`HookCall` records in order; ``recorder.names()`` their
    names; ``recorder.of("mqkit_publish")`` the calls of one hook. Thread-safe.
    """

    plugin_info = PluginInfo(name="hook-recorder", description="records hook calls")

    def __init__(self, hooks: Sequence[str] | None = None) -> None:
        self._only = None if hooks is None else frozenset(hooks)
        self._lock = threading.Lock()
        self.calls: list[HookCall] = []
        """Every recorded call, in order."""

    def _record(self, name: str, kwargs: dict[str, Any]) -> None:
        if self._only is None or name in self._only:
            with self._lock:
                self.calls.append(HookCall(name, kwargs))

    def names(self) -> list[str]:
        """The names of the recorded calls, in order."""
        with self._lock:
            return [c.name for c in self.calls]

    def of(self, name: str) -> list[HookCall]:
        """The recorded calls of hook ``name``."""
        with self._lock:
            return [c for c in self.calls if c.name == name]

    def clear(self) -> None:
        """Forget every recorded call."""
        with self._lock:
            self.calls.clear()


def _install_recorders() -> None:
    from mqkit.core import hookspecs

    for name in HOOK_NAMES:
        spec = getattr(hookspecs, name)
        argnames = spec.__code__.co_varnames[: spec.__code__.co_argcount]
        setattr(HookRecorder, name, _recording(name, argnames))


_install_recorders()


def broker_config(*plugins: str, config: Config | None = None) -> Config:
    """A config that loads exactly the named built-in plugins (and no other built-in).

    The named plugins' flags are switched on; the others' flags off, and the built-ins that
    load by default are added to ``disable_plugins``.
    """
    cfg = Config() if config is None else config
    builtins = builtin_plugins()
    unknown = [p for p in plugins if p not in builtins]
    if unknown:
        raise ValueError(f"not built-in plugins: {unknown} (built-in: {sorted(builtins)})")
    changes: dict[str, Any] = {}
    disabled = set(cfg.disable_plugins)
    for name, target in builtins.items():
        info = info_of(target)
        assert isinstance(info, PluginInfo), name
        if info.flag is not None:
            changes[info.flag] = name in plugins
        if name in plugins:
            disabled.discard(name)
        elif info.default or info.enabled is not None:
            disabled.add(name)
    named = tuple(sorted(set(cfg.plugins) | {p for p in plugins}))
    return cfg.replace(**changes, plugins=named, disable_plugins=tuple(sorted(disabled)))


def make_broker(
    *plugins: str,
    config: Config | None = None,
    objects: Sequence[object] = (),
    clock: FakeClock | None = None,
) -> Broker:
    """Build a broker with only the named built-in plugins, plus ``objects``."""
    return Broker(broker_config(*plugins, config=config), plugins=objects, clock=clock)


@pytest.fixture
def fake_clock() -> FakeClock:
    """A fake clock: time moves only with ``advance()``, which fires due timers."""
    return FakeClock()


@pytest.fixture
def hook_recorder() -> HookRecorder:
    """A plugin that records every hook call; pass it in ``plugins=[hook_recorder]``."""
    return HookRecorder()


@pytest.fixture(name="make_broker")
def make_broker_fixture(fake_clock: FakeClock) -> Iterator[Callable[..., Broker]]:
    """``make_broker(*plugin_names, config=None, objects=())`` on the fake clock; auto-closed."""
    made: list[Broker] = []

    def factory(
        *plugins: str, config: Config | None = None, objects: Sequence[object] = ()
    ) -> Broker:
        broker = make_broker(*plugins, config=config, objects=objects, clock=fake_clock)
        made.append(broker)
        return broker

    yield factory
    for broker in made:
        broker.close()
