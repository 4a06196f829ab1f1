"""Generate docs/hooks.md from the docstrings in mqkit/core/hookspecs.py.

Run ``python docs/gen_hooks.py`` after changing a hook; a test checks the file is current.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

from mqkit.core import hookspecs

HEADER = """# Hook reference

Generated from `mqkit/core/hookspecs.py` by `python docs/gen_hooks.py`; do not edit by hand.

"""


_ROLE = re.compile(r":(?:func|class|mod|meth|attr):`(~?)([^`]+)`")


def markdown(text: str) -> str:
    """The docstrings' reStructuredText inline markup as Markdown.

    ``code`` becomes `code`; a role naming a hook links to its section; any other role shows
    the name as code (with ``~``, its last part only).
    """

    def role(match: re.Match[str]) -> str:
        short, target = match.group(1), match.group(2)
        if target in hookspecs.HOOK_NAMES:
            return f"[`{target}`](#{target})"
        return f"`{target.rsplit('.', 1)[-1] if short else target}`"

    return _ROLE.sub(role, text).replace("``", "`")


def render() -> str:
    """Return the Markdown text of the hook reference."""
    parts = [HEADER, markdown(inspect.cleandoc(hookspecs.__doc__ or "")), "\n"]
    for name in hookspecs.HOOK_NAMES:
        fn = getattr(hookspecs, name)
        opts = getattr(fn, "mqkit_spec", {}) or {}
        kind = "firstresult" if opts.get("firstresult") else "all implementations"
        sig = str(inspect.signature(fn)).replace("'", "")
        parts.append(
            f'\n## `{name}`\n\n```python title="signature"\ndef {name}{sig}\n```\n\n'
            f"*Call type:* {kind}.\n\n"
        )
        parts.append(markdown(inspect.cleandoc(fn.__doc__ or "")) + "\n")
    return "".join(parts)


if __name__ == "__main__":
    out = Path(__file__).with_name("hooks.md")
    out.write_text(render())
    print(f"wrote {out}", file=sys.stderr)
