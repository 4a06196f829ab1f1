"""The package's import rules, read from the source (every import, also under TYPE_CHECKING).

- the core (``mqkit/core``) imports no plugin, gateway or application module;
- a plugin (``mqkit/plugins/<name>``, a module or a package) imports no other plugin;
- a gateway (``mqkit/protocols/<name>``) imports no plugin, except the persistence package's
  library modules (its format, serializer and store), which are there to be shared and import
  only the core, and no other gateway, except the gateways' shared password file
  (``mqkit/protocols/passwords.py``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mqkit

PACKAGE = Path(mqkit.__file__).resolve().parent
SHARED_LIBRARIES = frozenset(
    f"mqkit.plugins.persistence.{name}" for name in ("format", "serializer", "store")
)


def shared(name: str) -> bool:
    """Whether ``name`` is (a name in) one of the persistence package's shared libraries."""
    return any(name == lib or name.startswith(f"{lib}.") for lib in SHARED_LIBRARIES)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """Every mqkit module ``path`` imports."""
    package = module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    return imports_of(path.read_text(encoding="utf-8"), package)


def imports_of(source: str, package: str) -> set[str]:
    """Every mqkit module ``source`` (in ``package``) imports (``from x import y``: x and x.y)."""
    tree = ast.parse(source)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "mqkit" or name.startswith("mqkit.")}


def modules(where: str) -> list[Path]:
    return sorted((PACKAGE / where).rglob("*.py"))


def owner(name: str, area: str) -> str | None:
    """``mqkit.<area>.<x>...`` -> ``x`` (the plugin or gateway a module belongs to)."""
    prefix = f"mqkit.{area}."
    return name[len(prefix) :].split(".")[0] if name.startswith(prefix) else None


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(PACKAGE)) for p in paths]


@pytest.mark.parametrize("path", modules("core"), ids=_ids(modules("core")))
def test_the_core_imports_only_the_core(path: Path) -> None:
    outside = sorted(
        name for name in imported(path) if not (name.startswith("mqkit.core") or name == "mqkit")
    )
    assert outside == [], f"{module_name(path)} imports {outside}"


@pytest.mark.parametrize("path", modules("plugins"), ids=_ids(modules("plugins")))
def test_a_plugin_imports_no_other_plugin_and_no_gateway(path: Path) -> None:
    me = owner(module_name(path), "plugins")
    wrong = sorted(
        name
        for name in imported(path)
        if (owner(name, "plugins") not in (None, me) and not shared(name))
        or owner(name, "protocols") is not None
    )
    assert wrong == [], f"{module_name(path)} imports {wrong}"


@pytest.mark.parametrize("path", modules("protocols"), ids=_ids(modules("protocols")))
def test_a_gateway_imports_no_plugin(path: Path) -> None:
    me = owner(module_name(path), "protocols")
    wrong = sorted(
        name
        for name in imported(path)
        if (owner(name, "plugins") is not None and not shared(name))
        or owner(name, "protocols") not in (None, me, "passwords")  # the gateways' shared file
    )
    assert wrong == [], f"{module_name(path)} imports {wrong}"


def test_the_shared_persistence_libraries_import_only_the_core() -> None:
    for name in SHARED_LIBRARIES:
        path = PACKAGE.joinpath(*name.split(".")[1:]).with_suffix(".py")
        wrong = sorted(
            n for n in imported(path) if not n.startswith("mqkit.core") and not shared(n)
        )
        assert wrong == [], f"{name} imports {wrong}"


def test_the_reader_sees_every_form_of_import() -> None:
    """Absolute, relative, nested and TYPE_CHECKING imports are all seen (else the rules prove
    nothing)."""
    source = """
import mqkit.plugins.ttl
from typing import TYPE_CHECKING
from . import metrics
from ..protocols.mqtt import server
if TYPE_CHECKING:
    from mqkit.plugins.ack import AckPlugin
def f():
    from .memory import MemoryPlugin
"""
    found = imports_of(source, "mqkit.plugins")
    assert {
        "mqkit.plugins.ttl",
        "mqkit.plugins.metrics",
        "mqkit.protocols.mqtt.server",
        "mqkit.plugins.ack",
        "mqkit.plugins.memory",
    } <= found
    assert owner("mqkit.plugins.ack.AckPlugin", "plugins") == "ack"


def test_only_the_shared_libraries_are_allowed() -> None:
    assert shared("mqkit.plugins.persistence.format.MQTT_DIR")
    assert shared("mqkit.plugins.persistence.serializer")
    assert not shared("mqkit.plugins.persistence.plugin.PersistencePlugin")
    assert not shared("mqkit.plugins.persistence")  # the package: its __init__ is not a library
    assert not shared("mqkit.plugins.persistence.formats")
