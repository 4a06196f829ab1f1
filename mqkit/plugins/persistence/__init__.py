"""Persistence: the one home of mqkit's store format, and the ``persistence`` plugin.

The library modules import only :mod:`mqkit.core` and each other, never a hook or another
plugin, so that the MQTT gateway (and the cluster's local spool) can use them:

- :mod:`.format`: file names, the database's tables, the keys, the version, what a record is;
- :mod:`.serializer`: messages and payloads to JSON and back (on mqkit's one converter);
- :mod:`.store`: the message store (group commit, deferred deletes, retention, recovery) and
  the record store of the MQTT sessions;
- :mod:`.inspector`: read-only inspection of a persistence directory (``mqkit inspect``).

:mod:`.plugin` holds the ``persistence`` plugin (its hooks only); this package does not import
it, so importing a library module never loads the plugin.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    """``PersistencePlugin``, imported on first use only.

    The old entry point (of installs made before the package) and
    ``from mqkit.plugins.persistence import PersistencePlugin`` keep working.
    """
    if name == "PersistencePlugin":
        from mqkit.plugins.persistence.plugin import PersistencePlugin

        return PersistencePlugin
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
