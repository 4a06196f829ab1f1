"""``python -m mqkit`` and the ``mqkit`` console script: delegate to :mod:`mqkit.cli`.

The command line needs the ``cli`` extra (typer, rich); without it this says which extra to
install instead of failing with an import error.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]

_CLI_PACKAGES = frozenset({"typer", "rich", "click"})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mqkit`` command; return its exit code."""
    try:
        from mqkit.cli import main as cli_main
    except ImportError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing not in _CLI_PACKAGES:
            raise
        print(
            f"mqkit: the command line needs the 'cli' extra ({missing} is not installed).\n"
            "Install it with:  pip install 'mqkit[cli]'   (from a clone: pip install -e '.[cli]')",
            file=sys.stderr,
        )
        return 1
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
