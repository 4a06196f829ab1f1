"""The ``mqkit`` command line (``python -m mqkit``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mqkit`` command; return its exit code."""
    parser = argparse.ArgumentParser(prog="mqkit", description="mqkit, an in-process broker")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="run a short scripted pub/sub scenario and print it")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from mqkit.demo import run_demo

        return run_demo()
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
