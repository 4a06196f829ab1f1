"""Routing: which subscriptions a publish to a topic reaches.

The broker keeps two subscription tables, each from a key to its subscriptions: exact topics
(``orders``) and patterns (a glob such as ``orders.*``, or a plugin's own matcher such as the
MQTT gateway's ``a/+/c``). A publish does not search them: it looks its raw topic string up in
the route cache, whose :class:`Route` holds the validated topic and every subscription it
reaches (exact ones first). A route is computed on the first publish to its topic and the
cache is emptied whenever a subscription comes or goes, so a publish costs one dict lookup
and never matches a pattern.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from mqkit.core.errors import LimitExceededError
from mqkit.core.topics import normalize_topic

if TYPE_CHECKING:
    from mqkit.core.subscription import Subscription

__all__ = ["Route", "Routing"]

ROUTE_CACHE_MAX: Final = 4096
"""Routes the cache keeps; a cache that is full is emptied (topics are few, typically)."""


class Route:
    """A valid topic and the subscriptions (exact, then pattern) a publish to it reaches.

    ``ranked``: every subscription of the route has its plugin-supplied buffer (or none is
    supplied): routing a message that wants one needs no look. ``published`` counts the
    messages routed here, when a plugin asked for topic counts (``count_published``).
    """

    __slots__ = ("published", "puts", "ranked", "subs", "topic")

    def __init__(
        self,
        topic: str,
        subs: tuple[Subscription, ...],
        published: itertools.count[int] | None,
        ranked: bool,
    ) -> None:
        self.topic = topic
        self.subs = subs
        self.puts = tuple(sub._put for sub in subs)
        """Each subscription's ``_put``, bound once: the publish loop calls them directly."""
        self.published = published
        self.ranked = ranked


class Routing:
    """The broker's subscription tables and its route cache, under the broker's lock.

    ``check_open`` raises ``BrokerClosedError`` once the broker is closed: no route is
    computed and no subscription entered after that.
    """

    def __init__(self, lock: threading.RLock, check_open: Callable[[], None]) -> None:
        self._lock = lock
        self._check_open = check_open
        self._ids = itertools.count(1)
        self.exact: dict[str, list[Subscription]] = {}
        """Exact topic -> its subscriptions."""
        self.patterns: dict[str, tuple[Callable[[str], bool], list[Subscription]]] = {}
        """Pattern key -> (its matcher, its subscriptions)."""
        self.routes: dict[str, Route] = {}
        """The route cache, raw topic -> :class:`Route`. The publish path reads it directly:
        it is emptied in place, never replaced."""
        self._published: dict[str, itertools.count[int]] | None = None

    def route(self, topic: str) -> Route:
        """Return the route for a raw topic, computing (and caching) it; validates the topic."""
        self._check_open()
        stripped = normalize_topic(topic)
        with self._lock:
            self._check_open()
            route = self.routes.get(topic)
            if route is not None:
                return route
            subs = list(self.exact.get(stripped, ()))
            for matches, psubs in self.patterns.values():
                if matches(stripped):
                    subs.extend(psubs)
            counts = self._published
            counter = None
            if counts is not None:
                counter = counts.get(stripped)
                if counter is None:
                    counter = counts[stripped] = itertools.count()
            route = Route(stripped, tuple(subs), counter, all(s._ranked for s in subs))
            if len(self.routes) >= ROUTE_CACHE_MAX:
                self.routes.clear()
            self.routes[topic] = route
            return route

    def add(
        self,
        key: str,
        matches: Callable[[str], bool] | None,
        make: Callable[[int], Subscription],
        max_topics: int,
        max_subscribers: int,
    ) -> Subscription:
        """Enter ``make(id)`` under ``key`` (a pattern when it has ``matches``); return it.

        ``make`` runs under the lock, after the limits are checked (``LimitExceededError``;
        0 means no limit): a subscription that is refused is never made.
        """
        with self._lock:
            self._check_open()
            table: dict[str, Any] = self.patterns if matches is not None else self.exact
            existing = table.get(key)
            in_use = len(self.exact) + len(self.patterns)
            if existing is None and max_topics and in_use >= max_topics:
                raise LimitExceededError.because(
                    f"max_topics ({max_topics}) reached; cannot subscribe to {key!r}"
                )
            subs: list[Subscription] = (
                [] if existing is None else (existing[1] if matches is not None else existing)
            )
            if max_subscribers and len(subs) >= max_subscribers:
                raise LimitExceededError.because(
                    f"max_subscribers ({max_subscribers}) reached for {key!r}"
                )
            sub = make(next(self._ids))
            subs.append(sub)
            if existing is None:
                table[key] = (matches, subs) if matches is not None else subs
            self.routes.clear()
            return sub

    def remove(self, sub: Subscription) -> None:
        """Take ``sub`` out of its table (nothing happens if it is not there)."""
        with self._lock:
            if sub.is_pattern:
                entry = self.patterns.get(sub.topic)
                subs = entry[1] if entry is not None else None
                table: dict[str, Any] = self.patterns
            else:
                subs = self.exact.get(sub.topic)
                table = self.exact
            if subs is not None and sub in subs:
                subs.remove(sub)
                if not subs:
                    del table[sub.topic]
                self.routes.clear()

    def subscriptions(self) -> list[Subscription]:
        """Every subscription of both tables (exact ones first)."""
        with self._lock:
            found = [s for subs in self.exact.values() for s in subs]
            found += [s for _, subs in self.patterns.values() for s in subs]
            return found

    def sizes(self) -> tuple[int, int]:
        """How many keys (exact and pattern) and how many subscriptions the tables hold."""
        with self._lock:
            subs = sum(len(s) for s in self.exact.values())
            subs += sum(len(s) for _, s in self.patterns.values())
            return len(self.exact) + len(self.patterns), subs

    def clear(self) -> list[Subscription]:
        """Empty both tables and the cache; return the subscriptions they held."""
        with self._lock:
            subs = self.subscriptions()
            self.exact.clear()
            self.patterns.clear()
            self.routes.clear()
            return subs

    def count_published(self) -> None:
        """Count the messages routed to each topic from now on (idempotent)."""
        with self._lock:
            if self._published is None:
                self._published = {}
                self.routes.clear()

    def published_counts(self) -> dict[str, int]:
        """Messages routed to each topic since :meth:`count_published`."""
        with self._lock:
            counts = dict(self._published or {})
        # itertools.count is the lock-free counter; its repr is its next value: count(N).
        return {topic: int(repr(counter)[6:-1]) for topic, counter in counts.items()}
