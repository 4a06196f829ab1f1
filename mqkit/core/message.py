"""Message types: frozen, slotted attrs classes, as in the seed (``mq.Message`` and its kin).

The broker fills in ``topic`` and ``time`` on publish (and a generated ``ack_id`` when an
ack-required message has none) by making a *stamped copy*: the publisher's object is never
changed. The copy is made by a function generated once per class (``stamper``), which fills
the slots of an unfrozen twin of the class and then turns it into the class itself: a few plain
slot stores, on the hottest line of the broker (``__init__`` or ``attrs.evolve`` cost far more).
"""

from __future__ import annotations

import base64
import enum
import itertools
import os
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType, MemberDescriptorType
from typing import Any, Final, Protocol, TypeVar, cast

import attrs

from mqkit.core.checks import as_finite, describe
from mqkit.core.codegen import generate
from mqkit.core.errors import InvalidMessageError

__all__ = [
    "AckMessage",
    "AckPolicy",
    "AckTTLMessage",
    "Message",
    "Priority",
    "PriorityMessage",
    "PriorityTTLMessage",
    "TTLMessage",
    "check_message",
    "estimate_size",
    "has_field",
    "message_priority",
    "needs_ack",
    "posix_time",
    "redelivery",
    "set_store_seq",
    "stamper",
    "store_seq",
]

EMPTY_META: Final[Mapping[str, str]] = MappingProxyType({})


class Priority(enum.IntEnum):
    """Priority levels of the seed; any ``int`` is accepted, higher is delivered first."""

    LOWEST = 0
    LOW = 10
    NORMAL = 20
    HIGH = 30
    HIGHEST = 40


class AckPolicy(enum.IntEnum):
    """Acknowledgement policy of an :class:`AckMessage` (``TIMEOUT`` behaves as ``REQUIRED``)."""

    NONE = 0
    REQUIRED = 1
    TIMEOUT = 2


class _MetaKey:
    """What ``==`` and ``hash`` see of ``meta``: the mapping's items, in any order.

    ``meta`` compares as it always did (a ``dict`` equals a read-only view of the same
    items); it hashes as the set of its items, so a message hashes when its meta values do,
    whatever mapping holds them (a ``mappingproxy`` has no hash of its own).
    """

    __slots__ = ("meta",)

    def __init__(self, meta: Mapping[str, str]) -> None:
        self.meta = meta

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _MetaKey) and bool(self.meta == other.meta)

    def __hash__(self) -> int:
        return hash(frozenset(self.meta.items()))


_EXACT_SECONDS: Final = float(2**32)
"""Within this many seconds of 1970 (1833-2106) POSIX seconds hold any microsecond exactly."""


def _posix_seconds(value: datetime | float | None) -> float | None:
    """``Message.time``'s converter: what ``__init__`` stores, POSIX seconds or None.

    An aware ``datetime`` is taken at its instant (a naive one as UTC, as the store does), a
    finite number as POSIX seconds; anything else is refused (``InvalidMessageError``).
    """
    if value is None or (value.__class__ is float and abs(value) < _EXACT_SECONDS):
        return value
    seconds: float | None
    if isinstance(value, datetime):
        seconds = (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
    elif isinstance(value, bool):
        seconds = None
    else:
        seconds = as_finite(value)
    if seconds is not None and not -_EXACT_SECONDS < seconds < _EXACT_SECONDS:
        try:
            datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            seconds = None
    if seconds is None:
        raise InvalidMessageError.because(
            f"time must be a datetime, POSIX seconds or None, not {describe(value)}"
        )
    return float(seconds)


@attrs.frozen(slots=True)
class Message:
    """A message: an id, a payload and metadata.

    ``topic`` and ``time`` are filled in by the broker on publish, on a copy: a subscriber
    receives a message whose ``topic`` is the topic it was published to. ``attempt`` counts
    deliveries of an ack-required message (the broker sets it on redelivery). The payload
    ``data`` is shared, not copied: treat received payloads as read-only.

    Messages are values: equal messages hash equal (a message is hashable when its ``data``
    and ``meta`` values are), and every message class pickles, copies and deep-copies to an
    equal message of the same class.
    """

    id: str
    data: Any = None
    topic: str = attrs.field(default="", kw_only=True)
    type: str = attrs.field(default="", kw_only=True)
    time: datetime | None = attrs.field(default=None, kw_only=True, converter=_posix_seconds)
    meta: Mapping[str, str] = attrs.field(default=EMPTY_META, kw_only=True, eq=_MetaKey)
    attempt: int = attrs.field(default=1, kw_only=True)
    # estimate_size's value, when the copy was built with it (-1: measured on each call). Not
    # a part of the message: no __init__ argument, not compared, hashed, shown or pickled.
    # Set only while a copy is built (the stamper), never afterwards.
    _size: int = attrs.field(default=-1, init=False, eq=False, hash=False, repr=False)
    # The persistence store's sequence number of this copy (-1: not stored). Not a part of the
    # message either: the store names the copy it stored and a recovered message; a
    # redelivery is built with it, stamping (a publish: a new message) starts afresh.
    _seq: int = attrs.field(default=-1, init=False, eq=False, hash=False, repr=False)

    def __reduce__(self) -> tuple[Callable[..., Message], tuple[Any, ...]]:
        """Pickle (and ``copy``) the fields as they are; ``meta`` stays read-only if it was."""
        cls = type(self)
        state = {
            a.name: getattr(self, a.name) for a in cls.__attrs_attrs__ if a.name not in _UNPICKLED
        }
        state["time"] = _read_time(self)  # the POSIX seconds the slot holds
        meta = self.meta
        read_only = meta.__class__ is MappingProxyType
        if read_only:
            state["meta"] = dict(meta)  # a mappingproxy does not pickle; its items do
        return _rebuild, (cls, state, read_only)


M = TypeVar("M", bound=Message)
_UNPICKLED: Final = frozenset({"_size", "_seq"})
_TIME_SLOT: Final[MemberDescriptorType] = Message.__dict__["time"]
_read_time: Final[Callable[[Message], float | None]] = _TIME_SLOT.__get__
_write_time: Final[Callable[[Message, float | None], None]] = _TIME_SLOT.__set__


def _rebuild(cls: type[M], state: dict[str, Any], read_only: bool) -> M:
    """Unpickle a message: a new ``cls`` built with the fields it was pickled with."""
    message = cls.__new__(cls)
    if read_only:
        meta = state["meta"]
        state["meta"] = MappingProxyType(meta) if meta else EMPTY_META
    for name, value in state.items():
        object.__setattr__(message, name, value)
    object.__setattr__(message, "_size", -1)
    object.__setattr__(message, "_seq", -1)
    return message


def _published_time(message: Message) -> datetime | None:
    """``Message.time``: the aware UTC ``datetime`` of the POSIX seconds the slot holds.

    The slot always holds POSIX seconds (a float) or None: the broker stamps a copy with the
    clock's seconds (reading the clock as a ``datetime`` costs 4x more, on every publish), and
    a ``datetime`` given to ``__init__`` is turned into its seconds. A read makes the
    ``datetime`` (nothing is cached on the message; the last one made is reused for the same
    seconds, so a batch's messages, stamped with one instant, share it and the store formats
    its text once); equality, hashing, ``repr``, cattrs and ``attrs.evolve`` all see it.
    """
    global _last_time
    seconds = _read_time(message)
    if seconds is None:
        return None
    last, when = _last_time  # one read of an immutable pair: safe from any thread
    if seconds != last:
        when = datetime.fromtimestamp(seconds, UTC)
        _last_time = (seconds, when)
    return when


_last_time: tuple[float, datetime] = (0.0, datetime.fromtimestamp(0.0, UTC))


# The slot stays; reads go through the function above, writes (``__init__`` after its
# converter, the stamper's POSIX seconds from the clock, unpickling) straight to the slot.
setattr(  # noqa: B010 (a class attribute replaced after attrs built the class)
    Message,
    "time",
    property(_published_time, _write_time, _TIME_SLOT.__delete__, "When it was published."),
)
_TIME_PROPERTY: Final = Message.__dict__["time"]


def posix_time(message: Message) -> float | None:
    """``message.time`` as POSIX seconds (plugin API): what the message holds, no ``datetime``."""
    return _read_time(message)


@attrs.frozen(slots=True)
class PriorityMessage(Message):
    """A message with a priority: higher values are delivered first, FIFO within a level."""

    priority: int = attrs.field(default=Priority.NORMAL, kw_only=True)


@attrs.frozen(slots=True)
class TTLMessage(Message):
    """A message that must not be delivered after ``expires_at`` (a timezone-aware instant)."""

    expires_at: datetime = attrs.field(kw_only=True)


@attrs.frozen(slots=True)
class AckMessage(Message):
    """A message the consumer must acknowledge (``ack``) before ``ack_timeout`` seconds.

    An empty ``ack_id`` is generated by the broker and visible on the delivered message.
    ``ack_timeout=None`` means the configured ``default_ack_timeout``.
    """

    ack_id: str = attrs.field(default="", kw_only=True)
    ack_policy: AckPolicy = attrs.field(default=AckPolicy.REQUIRED, kw_only=True)
    ack_timeout: float | None = attrs.field(default=None, kw_only=True)


@attrs.frozen(slots=True)
class PriorityTTLMessage(Message):
    """A message with both a priority and an expiry."""

    priority: int = attrs.field(default=Priority.NORMAL, kw_only=True)
    expires_at: datetime = attrs.field(kw_only=True)


@attrs.frozen(slots=True)
class AckTTLMessage(Message):
    """An ack-required message with an expiry."""

    ack_id: str = attrs.field(default="", kw_only=True)
    ack_policy: AckPolicy = attrs.field(default=AckPolicy.REQUIRED, kw_only=True)
    ack_timeout: float | None = attrs.field(default=None, kw_only=True)
    expires_at: datetime = attrs.field(kw_only=True)


_MESSAGE_OVERHEAD: Final = 160  # the slotted object, its datetime and a buffer slot


_SCALAR_SIZES: Final[dict[type, int]] = {type(None): 32, bool: 32, int: 32, float: 32}
_SIZED_TYPES: Final = frozenset({str, bytes, bytearray, memoryview})
# isinstance() with a tuple: ``int | float`` would build a union object on every call.
_SCALAR_CLASSES: Final = (type(None), bool, int, float)
_SIZED_CLASSES: Final = (str, bytes, bytearray, memoryview)
_COLLECTIONS: Final = (list, tuple, set, frozenset)


def _payload_size(value: object, depth: int = 0) -> int:
    kind = type(value)
    scalar = _SCALAR_SIZES.get(kind)
    if scalar is not None:
        return scalar
    if kind in _SIZED_TYPES:
        return 49 + len(value)  # type: ignore[arg-type]
    if kind is not dict:  # subclasses of the common types (a dict goes straight on)
        if isinstance(value, _SCALAR_CLASSES):
            return 32
        if isinstance(value, _SIZED_CLASSES):
            return 49 + len(value)
    if depth < 3 and isinstance(value, dict):
        # Strings and scalars are measured in the loop (unrolled for the key and the value):
        # a flat payload costs one call.
        total = 64
        scalars = _SCALAR_SIZES.get
        for key, item in value.items():
            kind = type(key)
            if kind is str:
                total += 49 + len(key)
            else:
                scalar = scalars(kind)
                total += scalar if scalar is not None else _payload_size(key, depth + 1)
            kind = type(item)
            scalar = scalars(kind)
            if scalar is not None:
                total += scalar
            elif kind is str:
                total += 49 + len(item)
            else:
                total += _payload_size(item, depth + 1)
        return total
    if depth < 3 and isinstance(value, _COLLECTIONS):
        total = 56
        for part in value:
            kind = type(part)
            scalar = _SCALAR_SIZES.get(kind)
            if scalar is not None:
                total += scalar
            elif kind is str:
                total += 49 + len(part)
            else:
                total += _payload_size(part, depth + 1)
        return total
    return sys.getsizeof(value)


_ITEM_BYTES: Final = 64
"""What :func:`estimate_size` allows for each item of a container payload (a small key and
value), beyond the container itself: the items are counted, not walked."""


_CONTAINERS: Final = frozenset({dict, list, tuple, set, frozenset})


def _container_size(value: object) -> int:
    """O(1): 64 bytes for a container plus ``_ITEM_BYTES`` per item (no walk).

    Any other object: its ``sys.getsizeof``, plus the items if it has a length.
    """
    if type(value) in _CONTAINERS:
        return 64 + _ITEM_BYTES * len(value)  # type: ignore[arg-type]
    try:
        items = len(value)  # type: ignore[arg-type]
    except TypeError:
        items = 0
    return sys.getsizeof(value) + _ITEM_BYTES * items


def estimate_size(message: Message) -> int:
    """Estimate the bytes a message holds: the object, its id, payload and metadata, in O(1).

    A cheap, deterministic estimate (the same message always gives the same number), used
    for ``max_memory_usage``: a ``str``/``bytes`` payload counts its length, a number a fixed
    size, and any other payload (a dict, a list, an object) its own ``sys.getsizeof`` plus 64
    bytes per item (a dict, list, tuple or set: 64 bytes plus 64 per item) - the items are
    counted, not walked, so a deep payload costs no more to
    measure than a flat one (and is under-estimated: the limit is on what the broker can
    count cheaply, not the process's heap). A copy the broker stamps while a memory limit is
    enforced is built with its estimate (see :func:`stamper`) and keeps it: a buffered copy
    leaves with the size it entered with, even if its payload changed meanwhile. Nothing is
    written to the message.
    """
    size: int = message._size
    if size >= 0:
        return size
    data = message.data
    kind = type(data)
    payload = _SCALAR_SIZES.get(kind)  # the common payloads without a further call
    if payload is None:
        if kind in _SIZED_TYPES:
            payload = 49 + len(data)
        elif kind in _CONTAINERS:
            payload = 64 + _ITEM_BYTES * len(data)
        elif isinstance(data, _SCALAR_CLASSES):
            payload = 32
        elif isinstance(data, _SIZED_CLASSES):
            payload = 49 + len(data)
        else:
            payload = _container_size(data)
    size = _MESSAGE_OVERHEAD + len(message.id) + payload
    meta = message.meta
    if meta:
        # 49 + len for a str key or value; attrs does not check types, so anything is measured
        for key, value in meta.items():
            if key.__class__ is str and value.__class__ is str:  # the common case, no call
                size += 98 + len(key) + len(value)
            else:
                size += _payload_size(key) + _payload_size(value)
    return size


_SIZE_SLOT: Final[MemberDescriptorType] = Message.__dict__["_size"]
_SEQ_SLOT: Final[MemberDescriptorType] = Message.__dict__["_seq"]


def store_seq(message: Message) -> int:
    """The persistence store's sequence number of ``message``; -1 if it is not one (plugin API).

    A stored message keeps its number through every copy of it the broker makes for delivery
    (redeliveries included) and on a message recovered from the store; a publish stamps a new
    copy without one. The ``persistence`` plugin knows a stored message by it.
    """
    seq: int = message._seq
    return seq


def set_store_seq(message: Message, seq: int) -> None:
    """Name a copy the store just stored, before the broker buffers it (plugin API).

    The persistence store learns the numbers of the copies it stores when its commit ends:
    after the broker built them, before it buffers them. This is the one write to a message's
    slot after the copy is built (a redelivery is built with its number: :func:`redelivery`).
    """
    _SEQ_SLOT.__set__(message, seq)


def has_field(cls: type, name: str) -> bool:
    """Whether the attrs class ``cls`` (a message class) declares the field ``name``."""
    return attrs.has(cls) and any(f.name == name for f in attrs.fields(cls))


def needs_ack(message: Message) -> bool:
    """Whether ``message`` must be acknowledged (it has an ack policy other than ``NONE``)."""
    policy = getattr(message, "ack_policy", None)
    return policy is not None and policy != AckPolicy.NONE


def message_priority(message: Message) -> int:
    """Return a message's priority: its ``priority`` field, or ``NORMAL`` when it has none."""
    priority: int = getattr(message, "priority", Priority.NORMAL)
    return priority


_ABSENT: Final = object()
_MAPPINGS: Final = (dict, MappingProxyType)  # the common ones, without the ABC's isinstance


def _check_meta(message: Message, meta: object) -> None:
    """Refuse ``meta`` unless it maps ``str`` to ``str`` (the stamper's call when meta is given)."""
    if meta.__class__ not in _MAPPINGS and not isinstance(meta, Mapping):
        raise _refuse(message, f"meta must be a mapping of str to str, not {describe(meta)}")
    for key, value in meta.items():
        if key.__class__ is not str or value.__class__ is not str:
            raise _refuse(
                message, f"meta must map str to str, not {describe(key)}: {describe(value)}"
            )


def _refuse(message: Message, problem: str) -> InvalidMessageError:
    return InvalidMessageError.because(f"message {message.id!r}: {problem}")


def check_message(message: Message, attempt: object = None) -> None:
    """Refuse a message whose fields the broker reads hold what it cannot work with (plugin API).

    Raises :class:`~mqkit.InvalidMessageError` naming the message, the field and the value:
    ``attempt`` (``attempt`` when given: the one a copy is stamped with) must be an ``int`` of at
    least 1; ``meta`` a mapping of ``str`` to ``str`` (exactly ``str``: what a store and a wire
    protocol write); ``priority`` an ``int`` (an ``IntEnum`` such as :class:`Priority` is one);
    ``ack_timeout`` None or finite seconds, at least 0; ``ack_policy`` an :class:`AckPolicy`.
    A ``bool`` is no ``int`` for any of them. Every stamped copy is checked (see
    :func:`stamper`), so every publish path refuses such a message before any plugin sees it.
    """
    if attempt is None:
        attempt = message.attempt
    if not isinstance(attempt, int) or isinstance(attempt, bool):
        raise _refuse(message, f"attempt must be an int of at least 1, not {describe(attempt)}")
    if attempt < 1:
        raise _refuse(message, f"attempt must be an int of at least 1, not {attempt!r}")
    meta = message.meta
    if meta is not EMPTY_META:
        _check_meta(message, meta)
    priority = getattr(message, "priority", _ABSENT)
    if priority is not _ABSENT and (not isinstance(priority, int) or priority.__class__ is bool):
        raise _refuse(message, f"priority must be an int, not {describe(priority)}")
    timeout = getattr(message, "ack_timeout", None)
    if timeout is not None:
        seconds = as_finite(timeout)
        if seconds is None or seconds < 0:
            raise _refuse(
                message,
                "ack_timeout must be None (the default_ack_timeout) or finite seconds, at least "
                f"0, not {describe(timeout)}",
            )
    policy = getattr(message, "ack_policy", AckPolicy.NONE)
    if policy.__class__ is not AckPolicy:
        raise _refuse(message, f"ack_policy must be an AckPolicy, not {describe(policy)}")


def _fast_checks(names: list[str]) -> str:
    """The generated stamper's test: true when :func:`check_message` must look at the message.

    A few identity tests for the common case (an ``int`` attempt, an ``int`` or ``Priority``
    priority, no ``ack_timeout``, an ``AckPolicy``); ``meta`` is looked at only when a message
    has its own (not the shared empty default).
    """
    tests = ["attempt.__class__ is not int", "attempt < 1"]
    if "priority" in names:
        tests.append("(p := m.priority.__class__) is not _Priority and p is not int")
    if "ack_timeout" in names:
        tests.append("m.ack_timeout is not None")
    if "ack_policy" in names:
        tests.append("m.ack_policy.__class__ is not _AckPolicy")
    return " or ".join(tests)


class FullStamper(Protocol[M]):
    """``stamp.full(message, topic, time, attempt, sized, seq) -> copy`` (see :func:`stamper`)."""

    def __call__(
        self, message: M, topic: str, time: float | None, attempt: int, sized: bool, seq: int, /
    ) -> M: ...


class Stamper(Protocol[M]):
    """``stamp(message, topic, time, attempt) -> copy`` (see :func:`stamper`).

    ``time`` is POSIX seconds (what the broker stamps: see ``Message.time``). ``stamp.full``
    also takes ``sized`` and ``seq``.
    """

    full: FullStamper[M]

    def __call__(self, message: M, topic: str, time: float | None, attempt: int, /) -> M: ...


_stampers: dict[type[Message], Stamper[Any]] = {}


def _new_ack_prefix() -> str:
    """8 random base32 characters (40 bits): what sets this process's ack ids apart."""
    return base64.b32encode(os.urandom(5)).decode("ascii").lower()


class _AckIds:
    """Generated ack ids, ``"{message id}-{process prefix}-{n}"``: never repeated.

    The counter makes them unique within the process (every broker of it shares this one
    generator), the random prefix across processes: after a restart, ids stored by the
    previous process (replayed, or recovered with their messages) never meet a new one. A
    forked child draws its own prefix.
    """

    __slots__ = ("counter", "prefix")

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        """Draw a new prefix and restart the counter (at import, and in a forked child)."""
        self.prefix = _new_ack_prefix()
        self.counter = itertools.count(1)


_ack_ids: Final = _AckIds()
os.register_at_fork(after_in_child=_ack_ids.reseed)


def _next_ack_id(message: Message) -> str:
    ids = _ack_ids
    return f"{message.id}-{ids.prefix}-{next(ids.counter)}"


def _draft_class(cls: type[Message], names: list[str]) -> type | None:
    """A private, unfrozen subclass of ``cls`` that adds no slots; None if ``cls`` has none.

    A stamped copy is built as one of these, so that each field is a plain (specialised) slot
    store, and then becomes a ``cls`` (``__class__`` assignment: same layout). That is 2.6x
    fewer instructions than calling each slot descriptor's ``__set__`` on a ``cls``.
    """
    for name in names:
        found = getattr(cls, name, None)
        if not (isinstance(found, MemberDescriptorType) or found is _TIME_PROPERTY):
            return None
    namespace = {
        "time": _TIME_SLOT,  # the copy's stores go to the slot itself
        "__slots__": (),
        "__init__": object.__init__,
        "__setattr__": object.__setattr__,
        "__delattr__": object.__delattr__,
        "__module__": __name__,
    }
    try:
        draft = type(f"_Draft{cls.__name__}", (cls,), namespace)
        draft().__class__ = cls
    except TypeError:  # a class that refuses subclasses or reassignment: evolve instead
        return None
    return draft


def stamper(cls: type[M]) -> Stamper[M]:
    """Return the copy-and-stamp function for a message class (generated once per class).

    The copy has ``topic``, ``time`` (POSIX seconds) and ``attempt`` set; for classes with an
    ``ack_id`` field an empty ack id is replaced by a generated one that is never repeated, across
    restarts too. The copy is a new message: it has no store sequence number (:func:`store_seq`),
    even when ``message`` had one; it keeps the size estimate ``message`` was built with, if any.
    ``stamp.full(message, topic, time, attempt, sized, seq)`` builds the same copy with the store
    number ``seq`` (-1: none) and, with ``sized``, with its :func:`estimate_size` (the broker
    asks while a memory limit is enforced; the common publish path has no such test). A
    message whose fields :func:`check_message` refuses is not copied: ``InvalidMessageError``.
    Nothing is written to the copy once it is built.
    """
    try:
        return _stampers[cls]
    except KeyError:
        pass
    names = [f.name for f in attrs.fields(cls)]
    draft = _draft_class(cls, names)
    if draft is None:
        # Not a slotted class (a user's own subclass): fall back to attrs.evolve.
        def full(m: M, topic: str, time: float | None, attempt: int, sized: bool, seq: int) -> M:
            check_message(m, attempt)
            changes: dict[str, Any] = {"topic": topic, "time": time, "attempt": attempt}
            if "ack_id" in names and not getattr(m, "ack_id", ""):
                changes["ack_id"] = _next_ack_id(m)
            size = estimate_size(m) if sized else m._size
            n = attrs.evolve(m, **changes)
            # The private slots, while the copy is built (evolve leaves them at -1).
            _SIZE_SLOT.__set__(n, size)
            _SEQ_SLOT.__set__(n, seq)
            return n

        def evolve(m: M, topic: str, time: float | None, attempt: int) -> M:
            return full(m, topic, time, attempt, False, -1)

        evolve.full = full  # type: ignore[attr-defined]
        slow = cast("Stamper[M]", evolve)
        _stampers[cls] = slow
        return slow
    namespace: dict[str, Any] = {"_draft": draft, "_cls": cls, "_ack": _next_ack_id}
    namespace.update(
        _check=check_message,
        _meta=_check_meta,
        _EMPTY=EMPTY_META,
        _Priority=Priority,
        _AckPolicy=AckPolicy,
        _size=estimate_size,
    )
    lines = [
        f"    if {_fast_checks(names)}:",
        "        _check(m, attempt)",  # every field, meta too
        "    elif (meta := m.meta) is not _EMPTY:",
        "        _meta(m, meta)",
        "    n = _draft()",
    ]
    # Two functions of the same body: ``stamp`` (every publish: four arguments, no test more)
    # and ``full`` (a memory limit's size, a redelivery's store number).
    fns: list[Callable[..., Any]] = []
    for header, size, seq in (
        ("def stamp(m, topic, time, attempt):", "m._size", "-1"),
        ("def full(m, topic, time, attempt, sized, seq):", "_size(m) if sized else m._size", "seq"),
    ):
        stamped = {"topic": "topic", "time": "time", "attempt": "attempt", "_size": size}
        stamped["_seq"] = seq
        body = [header, *lines]
        for name in names:
            value = stamped.get(name, f"m.{name}")
            if name == "ack_id":
                value = "m.ack_id or _ack(m)"
            body.append(f"    n.{name} = {value}")
        body += ["    n.__class__ = _cls", "    return n"]
        what = f"{'full ' if size != 'm._size' else ''}stamper of {cls.__qualname__}"
        fns.append(generate(header[4 : header.index("(")], "\n".join(body) + "\n", namespace, what))
    fast, full = fns
    fast.full = full  # type: ignore[attr-defined]
    stamp = cast("Stamper[M]", fast)
    _stampers[cls] = stamp
    return stamp


def redelivery(message: M) -> M:
    """A copy of a delivered ``message`` to deliver again, with ``attempt`` raised by one.

    Everything else is kept, the store sequence number (:func:`store_seq`) included: it is the
    same message (plugin API; the ``ack`` plugin's redeliveries).
    """
    stamp = stamper(type(message)).full
    return stamp(
        message, message.topic, _read_time(message), message.attempt + 1, False, message._seq
    )
