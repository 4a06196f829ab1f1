"""Plugin loading: which plugins a broker gets, their dependencies, and their registration.

Every plugin - built-in or third-party - is an entry point in the group ``mqkit.plugins``. An
entry point names a class (instantiated once per broker, with the broker: :func:`instantiate`),
an instance, or a module. What a broker loads is decided by its :class:`~mqkit.Config`:

1. mqkit's own plugins whose :class:`PluginInfo` says the config enables them (their flag);
2. the plugins named in ``Config.plugins`` (resolved through the same entry-point group);
3. with ``Config.autoload_plugins`` (or ``MQKIT_AUTOLOAD_PLUGINS=1``), every installed one;
4. the objects passed as ``Broker(plugins=[...])``;

minus those named in ``Config.disable_plugins``. Installing a package never changes a broker by
itself. Each plugin's requirements (data in its ``plugin_info``) are checked before anything is
registered; a failure names the plugin and the flag to turn on. A seed flag that switches on a
built-in plugin this installation cannot load (its extra is not installed) or this version does
not have (``enable_amqp``) fails the broker with a
``FeatureNotEnabledError`` saying so.

A plugin may declare a settings section (``PluginInfo(settings=..., section=...)``); the
sections of every built-in plugin and of every planned plugin are known to the broker, which
builds them (:mod:`mqkit.core.settings`).
"""

from __future__ import annotations

import importlib.metadata
import inspect
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

from mqkit.core import hookspecs
from mqkit.core.config import Config
from mqkit.core.errors import FeatureNotEnabledError, InvalidConfigError, MQError, PluginError
from mqkit.core.features import Feature
from mqkit.core.hookspecs import PROJECT
from mqkit.core.settings import Settings

if TYPE_CHECKING:
    from mqkit.core.broker import Broker

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginInfo",
    "PluginManager",
    "Requirement",
    "enable_hint",
    "plan_plugins",
    "settings_owners",
]

log = logging.getLogger("mqkit.plugins")

ENTRY_POINT_GROUP = "mqkit.plugins"
_POSITIONAL_ONLY = inspect.Parameter.POSITIONAL_ONLY
_POSITIONAL_OR_KEYWORD = inspect.Parameter.POSITIONAL_OR_KEYWORD


@attrs.frozen(slots=True, kw_only=True)
class Requirement:
    """A plugin this plugin needs, when ``when(config)`` holds (always when ``when`` is None)."""

    plugin: str
    when: Callable[[Config], bool] | None = None
    hint: str = ""
    """What the user should do, e.g. ``"set enable_dead_letter_queue=True"``."""


@attrs.frozen(slots=True, kw_only=True)
class PluginInfo:
    """What a plugin declares about itself, as the class attribute ``plugin_info``.

    ``enabled`` says whether a config switches the plugin on (mqkit's own plugins: their flag);
    ``default`` plugins load unless ``disable_plugins`` names them. ``flag`` names the config
    field that switches it (for messages and the test kit). ``runtime_toggle=False`` means
    ``update_config`` may not switch it on or off while the broker runs. ``settings`` is the
    plugin's settings class (a :class:`~mqkit.Settings` subclass) filled from the config's
    ``section`` table (``[mqtt]``, ``MQKIT_MQTT_*``); ``extra`` names the pip extra that
    installs the libraries the plugin needs (``pip install 'mqkit[mqtt]'``).
    """

    name: str
    description: str = ""
    flag: str | None = None
    enabled: Callable[[Config], bool] | None = None
    default: bool = False
    requires: tuple[Requirement, ...] = ()
    runtime_toggle: bool = True
    settings: type[Settings] | None = None
    section: str = ""
    extra: str = ""

    def __attrs_post_init__(self) -> None:
        if (self.settings is None) != (not self.section):
            raise PluginError.because(
                f"plugin {self.name!r}: PluginInfo needs settings and section together"
            )
        if self.settings is not None and not (
            isinstance(self.settings, type) and issubclass(self.settings, Settings)
        ):
            raise PluginError.because(
                f"plugin {self.name!r}: settings must be a subclass of mqkit.Settings, "
                f"not {self.settings!r}"
            )

    def enabled_by(self, config: Config) -> bool:
        """Whether ``config`` itself switches this plugin on."""
        if self.enabled is not None:
            return self.enabled(config)
        if self.flag is not None:
            return bool(getattr(config, self.flag))
        return False


def info_of(obj: object) -> PluginInfo | None:
    """The ``plugin_info`` an object (or class, or module) declares, if any."""
    info = getattr(obj, "plugin_info", None)
    return info if isinstance(info, PluginInfo) else None


@attrs.frozen(slots=True)
class _EntryPoint:
    name: str
    value: str
    builtin: bool
    ep: importlib.metadata.EntryPoint
    clash: str = ""
    """Why the name cannot be loaded: two installed packages declare it (raised on load)."""


_ep_cache: dict[tuple[str, ...], dict[str, _EntryPoint]] = {}


def entry_points() -> dict[str, _EntryPoint]:
    """The ``mqkit.plugins`` entry points installed now (cached per ``sys.path``)."""
    key = tuple(sys.path)
    cached = _ep_cache.get(key)
    if cached is not None:
        return cached
    found: dict[str, _EntryPoint] = {}
    for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=_ep_key):
        dist = getattr(ep, "dist", None)
        builtin = dist is not None and dist.name == "mqkit"
        previous = found.get(ep.name)
        if previous is not None and previous.value != ep.value:
            if previous.builtin:
                continue  # never let a third-party package shadow a built-in name
            if not builtin:  # fails only a broker that asks for this name
                clash = f"two installed packages declare plugin {ep.name!r}: "
                found[ep.name] = attrs.evolve(
                    previous, clash=f"{clash}{previous.value} and {ep.value}"
                )
                continue
        found[ep.name] = _EntryPoint(ep.name, ep.value, builtin, ep)
    _ep_cache.clear()
    _ep_cache[key] = found
    return found


def _ep_key(ep: importlib.metadata.EntryPoint) -> tuple[bool, str]:
    dist = getattr(ep, "dist", None)
    return (dist is None or dist.name != "mqkit", ep.name)


def clear_entry_point_cache() -> None:
    """Forget the cached entry points (after installing a plugin package at run time)."""
    _ep_cache.clear()


def load_entry_point(name: str) -> Any:
    """Import the object entry point ``name`` names; ``PluginError`` if it is missing or broken."""
    found = entry_points().get(name)
    if found is None:
        raise PluginError.because(
            f"plugin {name!r} not found: no entry point {name!r} in group {ENTRY_POINT_GROUP!r}"
            " (is its package installed?)"
        )
    if found.clash:
        raise PluginError.because(found.clash)
    try:
        return found.ep.load()
    except Exception as exc:
        raise PluginError.because(f"plugin {name!r} could not be loaded: {exc!r}") from exc


def builtin_plugins() -> dict[str, Any]:
    """Mqkit's own plugins: name -> loaded entry-point object."""
    return {name: load_entry_point(name) for name, ep in entry_points().items() if ep.builtin}


def _load_builtins() -> tuple[dict[str, Any], dict[str, Exception]]:
    """Mqkit's own plugins that load, and why each of the others does not."""
    loaded: dict[str, Any] = {}
    broken: dict[str, Exception] = {}
    for name, ep in entry_points().items():
        if not ep.builtin:
            continue
        try:
            loaded[name] = ep.ep.load()
        except Exception as exc:  # its extra's libraries are missing, most likely
            broken[name] = exc
    return loaded, broken


def _extra_hint(name: str, extra: str = "") -> str:
    return f"pip install 'mqkit[{extra or name}]'"


def _switches() -> dict[str, str]:
    """Seed flags that switch on a built-in plugin: flag -> plugin name (Config's metadata)."""
    return {
        field.name: str(field.metadata["plugin"])
        for field in attrs.fields(Config)
        if "plugin" in field.metadata
    }


def _check_switches(
    config: Config, loaded: Mapping[str, Any], broken: Mapping[str, Exception]
) -> None:
    """A seed flag on whose plugin cannot load here, or is not in this version: fail now."""
    claimed = {info.flag for info in map(info_of, loaded.values()) if info is not None}
    for flag, plugin in _switches().items():
        if not getattr(config, flag) or flag in claimed:
            continue
        if plugin in broken:
            exc = broken[plugin]
            raise FeatureNotEnabledError.because(
                f"{flag}=True needs the {plugin!r} plugin, which cannot be imported "
                f"({type(exc).__name__}: {exc}): {_extra_hint(plugin)}"
            )
        raise FeatureNotEnabledError.because(
            f"{flag}=True asks for the {plugin!r} plugin, which this version of mqkit "
            "does not include"
        )


def enable_hint(name: str) -> str:
    """How to switch on the built-in feature ``name``, for a "not enabled" error's text.

    ``"set enable_ack_support=True"``; with the plugin's extra when it cannot be imported; and
    for a flag this version has no plugin for, that it cannot be enabled.
    """
    found = entry_points().get(name)
    flag = next((f for f, p in _switches().items() if p == name), "")
    if found is None:
        what = f"{flag}=True" if flag else f"the {name!r} plugin"
        return f"{what} is not available in this version of mqkit"
    try:
        info = info_of(found.ep.load())
    except Exception:
        what = f"{flag}=True and " if flag else ""
        return f"it needs {what}{_extra_hint(name)}"
    if info is not None and info.flag:
        return f"set {info.flag}=True"
    if info is not None and info.default:
        return f"the {name!r} plugin is off: remove it from disable_plugins"
    return f"add {name!r} to plugins"


def installed_sections() -> set[str]:
    """The settings sections the installed plugins (that can be imported) declare."""
    found: set[str] = set()
    for ep in entry_points().values():
        try:
            info = info_of(ep.ep.load())
        except Exception:
            continue
        if info is not None and info.section:
            found.add(info.section)
    return found


def settings_owners(plan: Mapping[str, Any]) -> dict[str, type[Settings]]:
    """Section name -> settings class, of every built-in plugin and every planned plugin.

    Two plugins declaring one section with different classes is a ``PluginError``.
    """
    owners: dict[str, type[Settings]] = {}
    by: dict[str, str] = {}
    loaded, _ = _load_builtins()
    for name, target in [*loaded.items(), *plan.items()]:
        info = info_of(target)
        if info is None or info.settings is None:
            continue
        cls = owners.get(info.section)
        if cls is not None and cls is not info.settings:
            raise PluginError.because(
                f"plugins {by[info.section]!r} and {name!r} both declare the settings "
                f"section [{info.section}]"
            )
        owners[info.section] = info.settings
        by[info.section] = name
    return owners


def plan_plugins(config: Config, objects: Sequence[object] = ()) -> dict[str, Any]:
    """Decide which plugins a broker with ``config`` gets: name -> class, instance or module.

    Raises ``InvalidConfigError`` when a flag switches on a plugin ``disable_plugins`` names,
    and ``PluginError`` when a plugin is missing, cannot be loaded, or lacks a requirement.
    """
    disabled = set(config.disable_plugins)
    plan: dict[str, Any] = {}
    loaded, broken = _load_builtins()
    _check_switches(config, loaded, broken)
    for name, target in loaded.items():
        info = info_of(target)
        if info is None:
            raise PluginError.because(f"built-in plugin {name!r} declares no plugin_info")
        if info.enabled_by(config):
            if name in disabled:
                what = f"{info.flag}=True" if info.flag else "the configuration"
                raise InvalidConfigError(
                    f"{InvalidConfigError.default}: plugin {name!r} is enabled by {what} "
                    "but named in disable_plugins",
                    field="disable_plugins",
                )
            plan[name] = target
        elif info.default and name not in disabled:
            plan[name] = target
    named = list(config.plugins)
    if config.autoload_plugins or os.environ.get("MQKIT_AUTOLOAD_PLUGINS", "") in ("1", "true"):
        named += [n for n, ep in entry_points().items() if not ep.builtin]
    for name in named:
        if name in disabled:
            if name in config.plugins:
                raise InvalidConfigError(
                    f"{InvalidConfigError.default}: plugin {name!r} is both in plugins "
                    "and in disable_plugins",
                    field="disable_plugins",
                )
            continue
        if name not in plan:
            plan[name] = load_entry_point(name)
    for obj in objects:
        name = plugin_name(obj)
        if name in disabled:
            continue
        if name in plan and plan[name] is not obj:
            raise PluginError.because(f"two plugins are named {name!r}")
        plan[name] = obj
    check_requirements(config, plan)
    return plan


def plugin_name(obj: object) -> str:
    """A plugin's name: its ``plugin_info.name``, else its class (or module) name."""
    info = info_of(obj)
    if info is not None:
        return info.name
    if isinstance(obj, type):
        return obj.__name__
    module_name = getattr(obj, "__name__", None)
    if isinstance(module_name, str) and type(obj).__name__ == "module":
        return module_name
    return type(obj).__name__


def check_requirements(config: Config, plan: Mapping[str, Any]) -> None:
    """Raise ``PluginError`` naming the first plugin whose requirement is not in ``plan``."""
    for name, target in plan.items():
        info = info_of(target)
        if info is None:
            continue
        for req in info.requires:
            if req.plugin in plan:
                continue
            if req.when is None or req.when(config):
                hint = f": {req.hint}" if req.hint else ""
                raise PluginError.because(f"plugin {name!r} needs plugin {req.plugin!r}{hint}")


def instantiate(target: Any, broker: Broker) -> object:
    """Turn a planned target into the object to register: a class is built for ``broker``.

    A class whose constructor's first parameter is positional and required, or is named
    ``broker``, is built as ``cls(broker)``; any other class as ``cls()`` (it may take the
    broker from ``mqkit_broker_start``). Objects and modules are registered as they are. A
    constructor's ``MQError`` passes unchanged; anything else becomes a ``PluginError`` naming
    the plugin, and an ``ImportError`` (a library the plugin imports when it starts is
    missing) a ``PluginError`` naming the plugin's extra.
    """
    if not isinstance(target, type):
        return target
    try:
        return target(broker) if _takes_broker(target) else target()
    except MQError:
        raise
    except ImportError as exc:
        info = info_of(target)
        if info is None or not info.extra:
            raise
        raise PluginError.because(
            f"plugin {info.name!r} needs a library that is not installed ({exc}): "
            f"{_extra_hint(info.name, info.extra)}"
        ) from exc
    except Exception as exc:
        raise PluginError.because(
            f"plugin {plugin_name(target)!r} could not be built: {exc!r}"
        ) from exc


def _takes_broker(cls: type) -> bool:
    """Whether ``cls(...)``'s first parameter is positional and required, or named broker."""
    try:
        params = list(inspect.signature(cls).parameters.values())
    except (TypeError, ValueError):  # no signature to read (a C type): built with no argument
        return False
    if not params or params[0].kind not in (_POSITIONAL_ONLY, _POSITIONAL_OR_KEYWORD):
        return False
    first = params[0]
    return first.default is inspect.Parameter.empty or first.name == "broker"


class PluginManager(pluggy.PluginManager):
    """pluggy's manager with mqkit's rules: the ``mqkit_`` prefix, no wrappers, clear errors.

    One per broker; never module-global.
    """

    def __init__(self) -> None:
        super().__init__(PROJECT)
        self.add_hookspecs(hookspecs)

    def parse_hookimpl_opts(self, plugin: object, name: str) -> Any:
        """Read hookimpl options; an unmarked ``mqkit_*`` method is an error, not silence."""
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("mqkit_") and callable(getattr(plugin, name, None)):
            raise PluginError.because(
                f"plugin {self._name_for(plugin)!r}: method {name} looks like a hook but is not "
                "marked with @mqkit.hookimpl"
            )
        if opts is not None and (opts.get("wrapper") or opts.get("hookwrapper")):
            raise PluginError.because(
                f"plugin {self._name_for(plugin)!r}: {name} is a hook wrapper; mqkit hooks do "
                "not take wrappers (use tryfirst/trylast)"
            )
        return opts

    @staticmethod
    def _name_for(plugin: object) -> str:
        return plugin_name(plugin)

    def register_checked(self, plugin: object, name: str) -> None:
        """Register ``plugin`` as ``name``; every problem becomes a ``PluginError`` naming it."""
        try:
            self.register(plugin, name=name)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError.because(f"plugin {name!r} cannot be registered: {exc}") from exc
        # Every marked method whose hook has no spec (a misspelt name, a ``specname`` naming no
        # hook, a marked method without the ``mqkit_`` prefix) is an unknown hook.
        unknown = [caller.name for caller in self.get_hookcallers(plugin) or () if not caller.spec]
        if unknown:
            self.unregister(plugin)
            raise PluginError.because(
                f"plugin {name!r} implements unknown hook(s): {', '.join(sorted(unknown))}"
            )

    def features(self) -> dict[str, Feature]:
        """The features the registered plugins provide, by key; two for one key is an error."""
        found: dict[str, Feature] = {}
        for name, plugin in self.list_name_plugin():
            if isinstance(plugin, Feature):
                key = plugin.feature
                if key in found:
                    raise PluginError.because(
                        f"plugins {self.get_name(found[key])!r} and {name!r} both provide "
                        f"the {key!r} feature"
                    )
                found[key] = plugin
        return found
