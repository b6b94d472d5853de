"""Job events for server-sent events: a per-job history (for ``Last-Event-ID``) and live subscribers.

Events are published from any thread (the scheduler's, a request handler's) and delivered to subscribers on
their asyncio loop with ``call_soon_threadsafe``, so delivery latency is one loop iteration. Event ids are
``"<boot>.<n>"``: an id from an earlier server process never matches, and the client gets a fresh snapshot.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

HISTORY = 128


@dataclass(frozen=True)
class Event:
    id: str
    type: str  # "job" (full job, on every state change), "progress", "preview"
    data: dict[str, Any]


@dataclass(eq=False)
class Subscription:
    job_id: str
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)

    def push(self, event: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the loop is closed: the server is stopping
            pass


class EventBus:
    def __init__(self):
        self._lock = threading.Lock()
        self._boot = format(int(time.time() * 1000) % 10**9, "d")
        self._counter = itertools.count(1)
        self._history: dict[str, deque[Event]] = {}
        self._subs: dict[str, set[Subscription]] = {}

    def publish(self, job_id: str, type_: str, data: dict[str, Any]) -> Event:
        with self._lock:
            event = Event(f"{self._boot}.{next(self._counter)}", type_, data)
            self._history.setdefault(job_id, deque(maxlen=HISTORY)).append(event)
            for sub in self._subs.get(job_id, ()):
                sub.push(event)
            return event

    def last_id(self, job_id: str) -> str | None:
        with self._lock:
            hist = self._history.get(job_id)
            return hist[-1].id if hist else None

    def subscribe(self, job_id: str, last_event_id: str | None = None) -> tuple[Subscription, list[Event] | None]:
        """Register a subscriber on the running loop. Returns it and the events after ``last_event_id`` when
        the history still holds that id (None otherwise: the caller sends a snapshot instead)."""
        sub = Subscription(job_id, asyncio.get_running_loop())
        with self._lock:
            self._subs.setdefault(job_id, set()).add(sub)
            backlog = None
            if last_event_id:
                hist = list(self._history.get(job_id, ()))
                ids = [e.id for e in hist]
                if last_event_id in ids:
                    backlog = hist[ids.index(last_event_id) + 1:]
        return sub, backlog

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            subs = self._subs.get(sub.job_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[sub.job_id]

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._history.pop(job_id, None)
