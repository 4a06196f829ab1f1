"""The AMQP gateway's logins (the MQTT gateway's password file format) and vhost permissions.

``user:hash`` lines (``$scrypt$...`` or ``$pbkdf2-sha256$...``, as written by
``python -m mqkit.protocols.mqtt.auth``), re-read when the file changes. The same file can
serve both gateways (``[mqtt] password_file`` and ``[amqp] password_file``).
"""

from __future__ import annotations

import re
import shlex

from mqkit.core.errors import InvalidConfigError
from mqkit.protocols.passwords import PasswordFile, verify_password

__all__ = ["PasswordFile", "Permissions", "verify_password"]


_KINDS = ("configure", "write", "read")


class Permissions:
    """RabbitMQ-style per-vhost permissions: configure, write and read regular expressions.

    One line per user and vhost, as ``rabbitmqctl set_permissions`` takes them::

        # user   vhost    configure   write     read
        alice    /        "^alice-.*" ".*"      ".*"
        bob      staging  ""          "^logs$"  ""

    Fields are split as a shell would (quote an empty or spaced one). A user may open only the
    vhosts they have a line for. A resource (an exchange or queue name) is allowed when the
    regular expression finds a match in it (``re.search``, as RabbitMQ); ``""`` allows nothing.
    The default exchange is checked as ``amq.default``.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        """The file's path."""
        self._rules: dict[tuple[str, str], tuple[re.Pattern[str] | None, ...]] = {}
        try:
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError as exc:
            raise _bad_file(path, f"cannot be read: {exc}") from None
        for number, line in enumerate(lines, 1):
            try:
                fields = shlex.split(line, comments=True)
            except ValueError as exc:
                raise _bad_file(path, f"line {number}: {exc}") from None
            if not fields:
                continue
            if len(fields) != 5:
                raise _bad_file(path, f"line {number}: want user vhost configure write read")
            user, vhost, *patterns = fields
            compiled: list[re.Pattern[str] | None] = []
            for kind, pattern in zip(_KINDS, patterns, strict=True):
                try:
                    compiled.append(re.compile(pattern) if pattern else None)
                except re.error as exc:
                    raise _bad_file(path, f"line {number}: bad {kind} pattern: {exc}") from None
            self._rules[(user, vhost)] = tuple(compiled)

    def may_open(self, user: str, vhost: str) -> bool:
        """Whether ``user`` may open ``vhost``."""
        return (user, vhost) in self._rules

    def allowed(self, user: str, vhost: str, kind: str, resource: str) -> bool:
        """Whether ``user`` has ``kind`` (configure, write, read) permission on ``resource``."""
        rules = self._rules.get((user, vhost))
        if rules is None:
            return False
        pattern = rules[_KINDS.index(kind)]
        return pattern is not None and pattern.search(resource or "amq.default") is not None


def _bad_file(path: str, why: str) -> InvalidConfigError:
    return InvalidConfigError(
        f"{InvalidConfigError.default}: amqp.permissions_file {path!r} {why}",
        field="amqp.permissions_file",
    )
