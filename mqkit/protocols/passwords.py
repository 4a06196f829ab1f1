"""The gateways' password file: ``user:hash`` lines, salted hashes, re-read when it changes.

One format for every gateway (``[mqtt] password_file``, ``[amqp] password_file``: the same
file can serve both). A hash is ``$scrypt$<n>$<r>$<p>$<salt>$<key>`` or
``$pbkdf2-sha256$<iterations>$<salt>$<key>`` (salt and key in unpadded base64), as
:func:`hash_password` writes them; manage a file with
``python -m mqkit.protocols.mqtt.auth passwd FILE USER``. A verified password is remembered (as
a SHA-256 of the user and password) so that reconnecting clients do not pay the key
derivation again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import threading

from mqkit.core.errors import InvalidConfigError

__all__ = ["PasswordFile", "hash_password", "verify_password"]

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
PBKDF2_ITERATIONS = 200_000


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def hash_password(password: str | bytes, method: str = "scrypt") -> str:
    """A salted hash of ``password`` for the password file (``scrypt`` or ``pbkdf2-sha256``)."""
    raw = password.encode() if isinstance(password, str) else password
    salt = secrets.token_bytes(16)
    if method == "scrypt":
        key = hashlib.scrypt(raw, salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
        return f"$scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"
    if method == "pbkdf2-sha256":
        key = hashlib.pbkdf2_hmac("sha256", raw, salt, PBKDF2_ITERATIONS)
        return f"$pbkdf2-sha256${PBKDF2_ITERATIONS}${_b64(salt)}${_b64(key)}"
    raise ValueError(f"unknown password hash method {method!r}")


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

    def __init__(self, path: str, setting: str = "mqtt.password_file") -> None:
        self.path = path
        """The file's path."""
        self.setting = setting
        """The setting that named the file (for error texts)."""
        self._lock = threading.Lock()
        self._stamp: tuple[float, int] | None = None
        self._users: dict[str, str] = {}
        self._verified: dict[bytes, bool] = {}
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
                f"{InvalidConfigError.default}: {self.setting} cannot be read: {exc}",
                field=self.setting,
            ) from None
        users: dict[str, str] = {}
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, hashed = line.partition(":")
            if sep:
                users[user] = hashed
        self._users = users
        self._verified = {}
        self._stamp = stamp

    def users(self) -> list[str]:
        """The user names in the file."""
        with self._lock:
            self._load()
            return sorted(self._users)

    def check(self, username: str, password: bytes) -> bool:
        """Whether ``username`` exists and ``password`` is theirs."""
        with self._lock:
            self._load()
            stored = self._users.get(username)
            if stored is None:
                return False
            token = hashlib.sha256(username.encode() + b"\x00" + password).digest()
            known = self._verified.get(token)
            if known is not None:
                return known
        ok = verify_password(stored, password)
        with self._lock:
            if len(self._verified) > 10_000:
                self._verified.clear()
            self._verified[token] = ok
        return ok
