"""Authentication and authorisation of MQTT clients: password file, ACL file, default hooks.

**Password file** (``[mqtt] password_file``): one ``user:hash`` per line; ``#`` starts a
comment. A hash is ``$scrypt$<n>$<r>$<p>$<salt>$<key>`` or
``$pbkdf2-sha256$<iterations>$<salt>$<key>`` (salt and key in unpadded base64), as
:func:`hash_password` writes them. Manage it with
``python -m mqkit.protocols.mqtt.auth passwd FILE USER`` (reads the password from stdin). The
file is re-read when it changes. A verified password is remembered (as a SHA-256 of the user
and password) so that reconnecting clients do not pay the key derivation again.

**ACL file** (``[mqtt] acl_file``)::

    # rules before any "user" line apply to every client, anonymous ones included
    topic read public/#
    user alice
    topic readwrite sensors/#
    topic write commands/alice/+
    topic deny sensors/private/#
    # "pattern" rules apply to every client; %u is the user name, %c the client id
    pattern readwrite clients/%c/#
    pattern deny clients/%c/admin/#

``read`` allows subscribing to filters the rule covers (``sensors/+/temp`` under
``sensors/#``) and receiving messages on topics it matches, ``write`` allows publishing to
topics the rule matches, ``readwrite`` both. ``deny`` takes both away and wins over every
grant, wherever it stands: a SUBSCRIBE to a filter a deny rule covers is refused, and a wider
subscription that was granted (``sensors/#``) never delivers a message on a denied topic.
With an ACL file, anything no rule allows is denied; without one, everything is allowed.

A ``pattern`` is never widened: a user name or client id that contains ``+``, ``#`` or ``/``,
or is empty, is never put into one. For such a client, ``pattern`` grants do not apply, and a
``pattern deny`` denies it everything. ``%u`` patterns do not apply to anonymous clients.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from typing import Final

import attrs

from mqkit.core.errors import InvalidConfigError
from mqkit.protocols.mqtt.topics import compile_filter, covers, filter_is_valid
from mqkit.protocols.passwords import PasswordFile, hash_password, verify_password

__all__ = [
    "AccessControl",
    "AclRule",
    "Authenticator",
    "PasswordFile",
    "hash_password",
    "verify_password",
]

_ACCESS: Final = ("read", "write", "readwrite", "deny")
"""The access words of an ACL line."""

_PLACEHOLDER = re.compile("%[uc]")
_UNSAFE = re.compile("[+#/]")


@attrs.frozen(slots=True)
class AclRule:
    """One ACL line: ``access`` is ``read``, ``write``, ``readwrite`` or ``deny``."""

    access: str
    topic_filter: str
    pattern: bool = False
    """A ``pattern`` rule: ``%u``/``%c`` are replaced by the user name and client id."""

    @property
    def denies(self) -> bool:
        """A ``deny`` rule: it takes away what any other rule grants."""
        return self.access == "deny"

    def allows(self, action: str) -> bool:
        """Whether the rule grants ``action`` (``publish`` or ``subscribe``)."""
        need = "write" if action == "publish" else "read"
        return need in self.access

    def filter_for(self, username: str | None, client_id: str) -> str | None:
        """The rule's filter for one client; ``""`` when the rule does not apply to it.

        None when a ``pattern`` cannot be filled in safely: the user name or client id it
        needs contains ``+``, ``#`` or ``/``, or is empty (substituted, it would widen the
        rule to other clients' topics).
        """
        if not self.pattern:
            return self.topic_filter
        if username is None and "%u" in self.topic_filter:
            return ""
        names = {"%u": username or "", "%c": client_id}
        for placeholder in _PLACEHOLDER.findall(self.topic_filter):
            name = names[placeholder]
            if not name or _UNSAFE.search(name):
                return None
        # One pass: a name that itself holds "%c" or "%u" is not substituted again.
        filled = _PLACEHOLDER.sub(lambda m: names[m.group()], self.topic_filter)
        return filled if filter_is_valid(filled) else None


class AccessControl:
    """Per-user ACLs read from an ACL file (see the module docstring)."""

    def __init__(self, general: Sequence[AclRule], per_user: dict[str, list[AclRule]]) -> None:
        self.general = tuple(general)
        """Rules for every client (lines before any ``user`` line, and ``pattern`` lines)."""
        self.per_user = {u: tuple(r) for u, r in per_user.items()}
        """Rules per user name."""

    @classmethod
    def load(cls, path: str) -> AccessControl:
        """Read an ACL file; ``InvalidConfigError`` (naming ``mqtt.acl_file``) if it is bad."""
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise InvalidConfigError(
                f"{InvalidConfigError.default}: mqtt.acl_file cannot be read: {exc}",
                field="mqtt.acl_file",
            ) from None
        return cls.parse(text)

    @classmethod
    def parse(cls, text: str) -> AccessControl:
        """Parse ACL text."""
        general: list[AclRule] = []
        per_user: dict[str, list[AclRule]] = {}
        current: list[AclRule] = general
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            word, _, rest = line.partition(" ")
            rest = rest.strip()
            if word == "user":
                if not rest:
                    raise _acl_error(number, "user needs a name")
                current = per_user.setdefault(rest, [])
                continue
            if word not in ("topic", "pattern"):
                raise _acl_error(number, f"unknown keyword {word!r}")
            access, _, topic_filter = rest.partition(" ")
            if access not in _ACCESS:
                access, topic_filter = "readwrite", rest
            topic_filter = topic_filter.strip()
            if not filter_is_valid(topic_filter):
                raise _acl_error(number, f"invalid topic filter {topic_filter!r}")
            rule = AclRule(access, topic_filter, pattern=word == "pattern")
            (general if word == "pattern" else current).append(rule)
        return cls(general, per_user)

    def allowed(self, username: str | None, client_id: str, action: str, topic: str) -> bool:
        """Whether ``username`` may ``publish`` to a topic or ``subscribe`` to a filter.

        A topic name given with ``subscribe`` asks whether the client may receive a message
        on that topic. A ``deny`` rule that matches wins over every grant.
        """
        rules = self.general + (self.per_user.get(username, ()) if username is not None else ())
        granted = False
        for rule in rules:
            denies = rule.denies
            if not denies and (granted or not rule.allows(action)):
                continue
            pattern = rule.filter_for(username, client_id)
            if pattern is None:
                if denies:
                    return False  # it cannot say what it denies: it denies everything
                continue
            if not pattern:
                continue
            publish = action == "publish"
            if compile_filter(pattern)(topic) if publish else covers(pattern, topic):
                if denies:
                    return False
                granted = True
        return granted


def _acl_error(line: int, why: str) -> InvalidConfigError:
    return InvalidConfigError(
        f"{InvalidConfigError.default}: mqtt.acl_file line {line}: {why}", field="mqtt.acl_file"
    )


class Authenticator:
    """The built-in checks behind the MQTT plugin's ``mqkit_authenticate``/``mqkit_authorize``."""

    def __init__(
        self,
        password_file: str = "",
        acl_file: str = "",
        allow_anonymous: bool = True,
    ) -> None:
        self.passwords = PasswordFile(password_file) if password_file else None
        """The password file, when configured."""
        self.acl_file = acl_file
        """The ACL file's path ("": none)."""
        self.acl = AccessControl.load(acl_file) if acl_file else None
        """The ACLs, when configured."""
        self.allow_anonymous = allow_anonymous
        """Whether clients without a user name are let in."""

    def authenticate(self, username: str | None, password: bytes | None) -> bool:
        """Check a user name and password (may take tens of milliseconds: key derivation)."""
        if username is None:
            return self.allow_anonymous
        if self.passwords is None:
            return self.allow_anonymous
        return self.passwords.check(username, password or b"")

    def reload_acl(self) -> None:
        """Read the ACL file again; on ``InvalidConfigError`` the rules in force stay."""
        if self.acl_file:
            self.acl = AccessControl.load(self.acl_file)

    def authorize(self, username: str | None, client_id: str, action: str, topic: str) -> bool:
        """Check an action against the ACLs (everything is allowed without an ACL file)."""
        if self.acl is None:
            return True
        return self.acl.allowed(username, client_id, action, topic)


def _main(argv: Sequence[str]) -> int:
    """``passwd FILE USER``: add or replace USER with the password read from stdin."""
    if len(argv) != 3 or argv[0] != "passwd":
        print("usage: python -m mqkit.protocols.mqtt.auth passwd FILE USER", file=sys.stderr)
        return 2
    _, path, user = argv
    if ":" in user:
        print("a user name cannot contain ':'", file=sys.stderr)
        return 2
    password = sys.stdin.readline().rstrip("\n")
    lines: list[str] = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            lines = [ln for ln in f.read().splitlines() if ln.partition(":")[0] != user]
    lines.append(f"{user}:{hash_password(password)}")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover - a command-line tool
    raise SystemExit(_main(sys.argv[1:]))
