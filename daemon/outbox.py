"""The replies waiting for one TCP connection, bounded, testable without sockets.

Any thread (the worker, the event loop) ``put``s framed replies; the event loop writes them while the
transport takes them (``pause``/``resume`` follow asyncio's flow control; the server also flushes
after every packet, so a packet's own replies reach the transport and its flow control at once). A
peer that is not reading while more than ``limit`` bytes wait for it overflows the box: it is
emptied, refuses everything after, and the connection is dropped. All boxes share a ``Pool``: when
every client's waiting replies together pass its limit, a non-reading peer that asks for more
overflows. ``stalled`` says a
peer has not read for a while (the server drops it). ``close_when_flushed`` closes the transport once
what waits has gone out.

States: ``open``; ``closing`` (no more input is read; replies still go out, then the transport
closes); ``closed`` (we closed the transport); ``gone`` (the connection was lost or overflowed:
nothing more is sent).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Optional


class Pool:
    """The bytes waiting in every client's outbox together, and the most they may be."""

    def __init__(self, limit: int):
        self.limit, self.bytes = limit, 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.bytes + n > self.limit:
                return False
            self.bytes += n
            return True

    def add(self, n: int) -> None:
        with self._lock:
            self.bytes += n

    def give(self, n: int) -> None:
        with self._lock:
            self.bytes -= n


class Outbox:
    def __init__(self, limit: int, write: Callable[[bytes], None], close: Callable[[], None],
                 schedule: Callable[[Callable[[], None]], None], pool: Optional[Pool] = None,
                 clock: Callable[[], float] = time.monotonic):
        """``write``/``close``: the transport's (event loop only); ``schedule(fn)``: run ``fn`` on the loop."""
        self.limit, self._write, self._close, self._schedule = limit, write, close, schedule
        self.pool, self.clock = pool or Pool(1 << 62), clock
        self.paused_at: Optional[float] = None
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
            # a peer that is not reading (the transport paused) and has replies waiting: over its own
            # limit, or over what all peers together may hold, it overflows
            if self.paused and self.bytes and (self.bytes > self.limit
                                               or not self.pool.take(len(data))):
                self._empty()
                self.state = "gone"
                return "overflow"
            if not (self.paused and self.bytes):
                self.pool.add(len(data))
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
                self.pool.give(len(data))
            self._write(data)
        with self._lock:
            close = self.state == "closing" and not self._items
            if close:
                self.state = "closed"
        if close:
            self._close()

    def pause(self) -> None:
        self.paused = True
        self.paused_at = self.clock()

    def resume(self) -> None:
        self.paused, self.paused_at = False, None
        self.flush()

    def stalled(self, seconds: float) -> bool:
        """The peer has not taken a byte for ``seconds`` while replies wait for it."""
        return self.paused_at is not None and self.bytes > 0 and self.clock() - self.paused_at > seconds

    def _empty(self) -> None:   # (under the lock)
        self.pool.give(self.bytes)
        self._items.clear()
        self.bytes = 0

    def close_when_flushed(self) -> None:
        with self._lock:
            if self.state == "open":
                self.state = "closing"
        self._schedule(self.flush)

    def lost(self) -> None:
        """The connection is gone (loop): forget what waits."""
        with self._lock:
            self.state = "gone"
            self._empty()
