"""The persistence package: its format's version, and its library modules standing alone.

The store records the version of its format with its first write; a store of a later version
is refused with ``PersistenceError`` naming both versions (nothing is read or written); the
library modules (format, serializer, store, inspector) load without the plugin.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import mqkit
from mqkit.plugins.persistence.format import DATABASE, FORMAT_VERSION, META_TABLE, STORE_DIR
from mqkit.plugins.persistence.inspector import inspect_store

Factory = Callable[..., mqkit.Broker]
ROOT = Path(__file__).resolve().parents[2]


def meta(path: Path) -> dict[str, int]:
    with sqlite3.connect(path / STORE_DIR / DATABASE) as db:
        return dict(db.execute(f"SELECT key, value FROM {META_TABLE}").fetchall())


def test_the_first_write_records_the_format_version(make_broker: Factory, tmp_path: Path) -> None:
    broker = make_broker("persistence", config=mqkit.Config(persistence_path=str(tmp_path)))
    broker.publish("t", mqkit.Message("m", 1))
    broker.close()
    assert meta(tmp_path)["format"] == FORMAT_VERSION


def test_a_store_of_a_later_format_is_refused(make_broker: Factory, tmp_path: Path) -> None:
    config = mqkit.Config(persistence_path=str(tmp_path))
    broker = make_broker("persistence", config=config)
    broker.publish("t", mqkit.Message("m", 1))
    broker.close()
    with sqlite3.connect(tmp_path / STORE_DIR / DATABASE) as db:
        later = (FORMAT_VERSION + 1,)
        db.execute(f"UPDATE {META_TABLE} SET value = ? WHERE key = 'format'", later)
    with pytest.raises(mqkit.PersistenceError) as caught:
        make_broker("persistence", config=config)
    assert str(caught.value) == (
        f"mq: persistence failed: the store in {str(tmp_path / STORE_DIR)!r} was written by a "
        f"later mqkit (store format {FORMAT_VERSION + 1}; this version reads formats up to "
        f"{FORMAT_VERSION})"
    )
    # Refused, not changed: it still holds its message, and the directory is free again.
    assert inspect_store(tmp_path).total_messages == 1 and inspect_store(tmp_path).locked_by is None


def test_the_library_modules_do_not_load_the_plugin() -> None:
    code = (
        "import sys\n"
        "import mqkit.plugins.persistence.store, mqkit.plugins.persistence.inspector\n"
        "import mqkit.protocols.mqtt.store\n"
        "assert 'mqkit.plugins.persistence.plugin' not in sys.modules, 'plugin loaded'\n"
        "from mqkit.plugins.persistence import PersistencePlugin\n"
        "from mqkit.plugins.persistence.plugin import PersistencePlugin as Same\n"
        "assert PersistencePlugin is Same\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
