"""A subprocess whose output a thread reads line by line, with bounded waits and SIGKILL.

Used by the crash tests (a child that reports each operation once it returned, killed at a
random point of its progress) and by the tests that run ``mqkit serve`` or another broker
process. Every wait has a deadline; nothing sleeps to wait for the child.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["Child"]


class Child:
    """A running subprocess (text mode); a thread reads its stdout into :attr:`lines`.

    ``stdout`` keeps every chunk read, in order; ``stderr`` is read once the process ended.
    """

    def __init__(
        self,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.args = list(args)
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        # Line by line through the file object: a last line without its newline (the child
        # was killed while writing it) comes out too, and is told apart by the caller.
        for line in self.proc.stdout:
            self.stdout.append(line)
            self.lines.put(line)

    def _get(self, timeout: float) -> str | None:
        """The next line, None once the output ended; ``queue.Empty`` after ``timeout``."""
        end = time.monotonic() + timeout
        while True:
            try:
                return self.lines.get(timeout=max(min(end - time.monotonic(), 0.5), 0))
            except queue.Empty:
                if not self._reader.is_alive() and self.lines.empty():
                    return None  # the child closed its output (it ended)
                if time.monotonic() >= end:
                    raise

    def _failure(self, what: str) -> AssertionError:
        self.stop_now()
        return AssertionError(
            f"{what}; exit code {self.proc.returncode}; "
            f"stdout={self.output()[-4000:]!r} stderr={self.stderr[-4000:]!r}"
        )

    def next_line(self, deadline: float) -> str | None:
        """The next line printed (with its newline), None once the output ended.

        Fails (AssertionError, with what the child printed) after ``deadline`` seconds.
        """
        try:
            return self._get(deadline)
        except queue.Empty:
            raise self._failure(f"{self.args}: no output within {deadline} s") from None

    def wait_for(
        self, predicate: Callable[[str], bool], deadline: float, what: str = "no such line"
    ) -> str:
        """Wait for a line that ``predicate`` accepts and return it.

        Fails, killing the child, if it ends or no such line comes within ``deadline``
        seconds; the failure message starts with ``what`` and has the child's output.
        """
        end = time.monotonic() + deadline
        while True:
            try:
                line = self._get(end - time.monotonic())
            except queue.Empty:
                line = None
            if line is None:
                raise self._failure(what)
            if predicate(line):
                return line

    def read_lines(self, count: int, deadline: float) -> list[str]:
        """The next ``count`` lines (fewer if the output ends first); each wait is bounded."""
        got: list[str] = []
        while len(got) < count:
            line = self.next_line(deadline)
            if line is None:
                break
            got.append(line)
        return got

    def kill(self, timeout: float = 60) -> list[str]:
        """SIGKILL the child (it must still run); return every complete line it printed."""
        assert self.proc.poll() is None, f"the child ended before the kill: {self._finish()}"
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=timeout)
        errors = self._finish()
        assert self.proc.returncode == -signal.SIGKILL, errors
        text = self.output()
        complete = text[: text.rfind("\n") + 1]  # a line cut by the kill was never reported
        return complete.splitlines()

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit; return its exit code (fails after ``timeout``)."""
        code = self.proc.wait(timeout=timeout)
        self._finish()
        return code

    def _finish(self) -> str:
        """Join the reader, read the error output and close the pipes; return the errors."""
        self._reader.join(timeout=10)
        if self.proc.stderr is not None and not self.proc.stderr.closed:
            self.stderr = self.proc.stderr.read()
            self.proc.stderr.close()
        if self.proc.stdout is not None and not self._reader.is_alive():
            self.proc.stdout.close()
        return self.stderr

    def output(self) -> str:
        """Everything read from stdout so far."""
        return "".join(self.stdout)

    def stop_now(self) -> None:
        """Kill the process if it still runs (test cleanup), and close its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._finish()
