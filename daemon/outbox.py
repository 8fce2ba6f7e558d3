"""The replies waiting for one TCP connection, bounded, testable without sockets.

Any thread (the worker, the event loop) ``put``s framed replies; the event loop writes them while the
transport takes them (``pause``/``resume`` follow asyncio's flow control). A peer that stops reading
while more than ``limit`` bytes wait overflows the box: it is emptied, refuses everything after, and
the connection is dropped. ``close_when_flushed`` closes the transport once what waits has gone out.

States: ``open``; ``closing`` (no more input is read; replies still go out, then the transport
closes); ``closed`` (we closed the transport); ``gone`` (the connection was lost or overflowed:
nothing more is sent).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable


class Outbox:
    def __init__(self, limit: int, write: Callable[[bytes], None], close: Callable[[], None],
                 schedule: Callable[[Callable[[], None]], None]):
        """``write``/``close``: the transport's (event loop only); ``schedule(fn)``: run ``fn`` on the loop."""
        self.limit, self._write, self._close, self._schedule = limit, write, close, schedule
        self._lock = threading.Lock()
        self._items: deque[bytes] = deque()
        self.bytes = 0                 # waiting, not yet handed to the transport
        self.state = "open"
        self.paused = False
        self._flush_scheduled = False

    @property
    def accepting(self) -> bool:
        """Whether input from the peer should still be read."""
        return self.state == "open"

    def put(self, data: bytes) -> str:
        """Queue ``data`` (any thread): ``queued``; ``refused`` when the box is closed or gone; ``overflow``
        once, for the reply that found the peer not reading and the box over its limit (the box is
        ``gone`` after it; the caller drops the connection)."""
        with self._lock:
            if self.state in ("closed", "gone"):
                return "refused"
            if self.paused and self.bytes > self.limit:
                self.state = "gone"
                self._items.clear()
                self.bytes = 0
                return "overflow"
            self._items.append(data)
            self.bytes += len(data)
            schedule, self._flush_scheduled = not self._flush_scheduled, True
        if schedule:
            self._schedule(self.flush)
        return "queued"

    def flush(self) -> None:
        """Write what waits while the transport takes it; close it if asked and nothing waits (loop)."""
        with self._lock:
            self._flush_scheduled = False
        while not self.paused:
            with self._lock:
                if not self._items or self.state in ("closed", "gone"):
                    break
                data = self._items.popleft()
                self.bytes -= len(data)
            self._write(data)
        with self._lock:
            close = self.state == "closing" and not self._items
            if close:
                self.state = "closed"
        if close:
            self._close()

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        self.flush()

    def close_when_flushed(self) -> None:
        with self._lock:
            if self.state == "open":
                self.state = "closing"
        self._schedule(self.flush)

    def lost(self) -> None:
        """The connection is gone (loop): forget what waits."""
        with self._lock:
            self.state = "gone"
            self._items.clear()
            self.bytes = 0
