"""The AMQP gateway's password check: the MQTT gateway's password file format.

``user:hash`` lines (``$scrypt$...`` or ``$pbkdf2-sha256$...``, as written by
``python -m mqkit.protocols.mqtt.auth``), re-read when the file changes. The same file can
serve both gateways (``[mqtt] password_file`` and ``[amqp] password_file``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import threading

from mqkit.core.errors import InvalidConfigError

__all__ = ["PasswordFile", "verify_password"]


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def verify_password(stored: str, password: bytes) -> bool:
    """Whether ``password`` matches the ``stored`` hash (False for a malformed hash)."""
    parts = stored.split("$")
    try:
        if len(parts) == 7 and parts[1] == "scrypt":
            n, r, p = int(parts[2]), int(parts[3]), int(parts[4])
            salt, key = _unb64(parts[5]), _unb64(parts[6])
            got = hashlib.scrypt(
                password, salt=salt, n=n, r=r, p=p, dklen=len(key), maxmem=256 * 1024 * 1024
            )
        elif len(parts) == 5 and parts[1] == "pbkdf2-sha256":
            salt, key = _unb64(parts[3]), _unb64(parts[4])
            got = hashlib.pbkdf2_hmac("sha256", password, salt, int(parts[2]), len(key))
        else:
            return False
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, key)


class PasswordFile:
    """The users of a password file, re-read when the file changes. Thread-safe."""

    def __init__(self, path: str) -> None:
        self.path = path
        """The file's path."""
        self._lock = threading.Lock()
        self._stamp: tuple[float, int] | None = None
        self._users: dict[str, str] = {}
        self._load()

    def _load(self) -> None:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime, st.st_size)
            if stamp == self._stamp:
                return
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise InvalidConfigError(
                f"{InvalidConfigError.default}: amqp.password_file cannot be read: {exc}",
                field="amqp.password_file",
            ) from None
        users: dict[str, str] = {}
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                user, sep, hashed = line.partition(":")
                if sep:
                    users[user] = hashed
        self._users = users
        self._stamp = stamp

    def check(self, username: str, password: bytes) -> bool:
        """Whether ``username`` exists and ``password`` is theirs."""
        with self._lock:
            self._load()
            stored = self._users.get(username)
        return stored is not None and verify_password(stored, password)
