"""Generate docs/hooks.md from the docstrings in mqkit/core/hookspecs.py.

Run ``python docs/gen_hooks.py`` after changing a hook; a test checks the file is current.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

from mqkit.core import hookspecs

HEADER = """# Hook reference

Generated from `mqkit/core/hookspecs.py` by `python docs/gen_hooks.py`; do not edit by hand.

"""


def render() -> str:
    """Return the Markdown text of the hook reference."""
    parts = [HEADER, inspect.cleandoc(hookspecs.__doc__ or ""), "\n"]
    for name in hookspecs.HOOK_NAMES:
        fn = getattr(hookspecs, name)
        opts = getattr(fn, "mqkit_spec", {}) or {}
        kind = "firstresult" if opts.get("firstresult") else "all implementations"
        sig = str(inspect.signature(fn)).replace("'", "")
        parts.append(
            f'\n## `{name}`\n\n```python title="signature"\ndef {name}{sig}\n```\n\n'
            f"*Call type:* {kind}.\n\n"
        )
        parts.append(inspect.cleandoc(fn.__doc__ or "") + "\n")
    return "".join(parts)


if __name__ == "__main__":
    out = Path(__file__).with_name("hooks.md")
    out.write_text(render())
    print(f"wrote {out}", file=sys.stderr)
