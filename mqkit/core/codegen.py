"""The one code-generation helper: functions made from source text at run time.

mqkit generates a few functions once each (a message class's stamper, a hook implementation's
argument adapter, the test kit's recorder methods) because a specialised function beats a
generic one on the hot path. They are all made here, and each one's source is registered in
:mod:`linecache` under a file name of its own (as attrs does for its generated methods), so
that a traceback through generated code shows its lines, and ``inspect.getsource`` finds them.
"""

from __future__ import annotations

import itertools
import linecache
from collections.abc import Callable
from typing import Any

__all__ = ["generate"]

_serial = itertools.count(1)


def generate(name: str, source: str, namespace: dict[str, Any], what: str) -> Callable[..., Any]:
    """Compile ``source``, which defines the function ``name``, in ``namespace``; return it.

    ``what`` names what the code is for (``"stamper for Message"``): it goes into the file
    name under which the source is registered in :mod:`linecache`, ``<mqkit generated N:
    what>``, unique per call.
    """
    filename = f"<mqkit generated {next(_serial)}: {what}>"
    code = compile(source, filename, "exec")
    lines = source.splitlines(keepends=True)
    # (size, mtime, lines, fullname): an mtime of None keeps linecache.checkcache from
    # dropping the entry (there is no file to compare it with).
    linecache.cache[filename] = (len(source), None, lines, filename)
    exec(code, namespace)
    fn: Callable[..., Any] = namespace[name]
    return fn
