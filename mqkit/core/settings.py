"""Plugin settings sections: ``[mqtt]``, ``[http]``, a third-party plugin's own table.

A plugin declares its section in its :class:`~mqkit.PluginInfo`
(``PluginInfo(name="mqtt", settings=MQTTSettings, section="mqtt")``). The settings class is a
frozen, slotted attrs subclass of :class:`Settings` whose fields all have defaults; its
:meth:`Settings.rules` are the plugin's own checks. A :class:`~mqkit.Config` carries sections by
name in ``Config.settings``: a settings instance, or a mapping (a TOML table, ``MQKIT_MQTT_*``
variables) that the broker structures with the shared cattrs converter. ``Broker(...)`` builds
every section before any plugin starts, and a plugin reads its own with
``broker.settings(MQTTSettings)``.

Every error - an unknown section or field, a value of the wrong type, a broken rule - is an
:class:`~mqkit.InvalidConfigError` naming ``section.field`` and the bad value.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from mqkit.core.convert import converter, describe_structure_error
from mqkit.core.errors import InvalidConfigError

__all__ = ["Settings", "build_sections", "check_field_types"]


@attrs.frozen(slots=True, kw_only=True)
class Settings:
    """Base class of a plugin's settings section.

    Subclass it with ``@attrs.frozen(slots=True, kw_only=True)``, give every field a default,
    and override :meth:`rules` with the plugin's checks. Field types mqkit checks: ``bool``,
    ``int``, ``float`` (finite seconds), ``str``, ``tuple[str, ...]`` and enums.
    """

    def rules(self) -> Iterable[tuple[str, bool, str]]:
        """The plugin's checks: ``(field, is_bad, why)``; the first bad one is raised."""
        return ()


def _type_name(kind: object) -> str:
    """A field's annotation as written: a string until cattrs resolves it to the class."""
    if isinstance(kind, type):
        return kind.__name__
    return str(kind)


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond a float's range
        return False


_FIELD_TYPES: dict[str, Callable[[object], bool]] = {
    "bool": lambda v: isinstance(v, bool),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "tuple[str, ...]": lambda v: isinstance(v, tuple) and all(isinstance(x, str) for x in v),
}


def check_field_types(obj: Any, prefix: str = "") -> None:
    """Raise ``InvalidConfigError`` for the first field of ``obj`` whose value has a wrong type.

    ``prefix`` (``"mqtt."``) is put before the field's name in the message and in ``field``.
    """
    cls = type(obj)
    hints = attrs.resolve_types(cls) if prefix else cls
    for field in attrs.fields(hints):
        value = getattr(obj, field.name)
        name = f"{prefix}{field.name}"
        kind = field.type
        if isinstance(kind, type) and issubclass(kind, enum.Enum):
            if not isinstance(value, kind):
                allowed = ", ".join(str(member.value) for member in kind)
                raise InvalidConfigError(
                    f"{InvalidConfigError.default}: {name} must be one of {allowed}, not {value!r}",
                    field=name,
                )
            continue
        text = _type_name(kind)
        expected = _FIELD_TYPES.get(text)
        if expected is not None and not expected(value):
            raise InvalidConfigError(
                f"{InvalidConfigError.default}: {name} must be {text}, "
                f"not {type(value).__name__} {value!r}",
                field=name,
            )
        if text == "float" and not _finite(value):
            raise InvalidConfigError(
                f"{InvalidConfigError.default}: {name} must be a finite number of "
                f"seconds, not {value!r}",
                field=name,
            )


def check_section(section: str, obj: Settings) -> None:
    """Check one section's field types, then its plugin's rules (``InvalidConfigError``)."""
    check_field_types(obj, f"{section}.")
    for field, bad, why in obj.rules():
        if bad:
            name = f"{section}.{field}"
            raise InvalidConfigError(
                f"{InvalidConfigError.default}: {name} {why} (got {getattr(obj, field)!r})",
                field=name,
            )


def structure_section(section: str, cls: type[Settings], value: object) -> Settings:
    """Turn what ``Config.settings[section]`` holds into a checked ``cls`` instance."""
    if isinstance(value, cls):
        obj = value
    elif isinstance(value, Mapping):
        known = {f.name for f in attrs.fields(cls)}
        for key in value:
            if key not in known:
                name = f"{section}.{key}"
                raise InvalidConfigError(
                    f"{InvalidConfigError.default}: unknown key {name} = {value[key]!r} "
                    f"(the fields of [{section}]: {', '.join(sorted(known))})",
                    field=name,
                )
        try:
            obj = converter.structure(dict(value), cls)
        except Exception as exc:
            text, field = describe_structure_error(exc)
            raise InvalidConfigError(
                f"{InvalidConfigError.default}: {section}.{text}",
                field=f"{section}.{field}" if field else section,
            ) from None
    else:
        raise InvalidConfigError(
            f"{InvalidConfigError.default}: settings section {section!r} must be a "
            f"{cls.__name__} or a mapping of its fields, not {type(value).__name__} {value!r}",
            field=section,
        )
    check_section(section, obj)
    return obj


def build_sections(
    given: Mapping[str, object], owners: Mapping[str, type[Settings]]
) -> dict[str, Settings]:
    """Every owned section, built from ``given`` (a config's ``settings``) or by default.

    ``owners`` maps each section name to the settings class its plugin declares. A section no
    plugin owns is an error naming the sections that exist.
    """
    for section in given:
        if section not in owners:
            known = ", ".join(f"[{name}]" for name in sorted(owners)) or "none"
            raise InvalidConfigError(
                f"{InvalidConfigError.default}: unknown settings section [{section}] "
                f"(the installed plugins declare: {known})",
                field=str(section),
            )
    sections: dict[str, Settings] = {}
    for section, cls in owners.items():
        if section in given:
            sections[section] = structure_section(section, cls, given[section])
        else:
            obj = cls()
            check_section(section, obj)
            sections[section] = obj
    return sections
