"""The replies waiting for one TCP connection, bounded, testable without sockets.

Any thread (the worker, the event loop) ``put``s framed replies; the event loop writes them while the
transport takes them (``pause``/``resume`` follow asyncio's flow control), small ones joined into one
write, so a bundle's replies leave in as few TCP segments as the bundle came in. ``put`` never
refuses an open box: what bounds it is the producer. The worker asks ``over(need)`` before each bar's
chunks and waits while this box (its waiting bytes, here and in the transport's buffer) is at its
``limit`` or all boxes together (their ``Pool``) are at theirs; the event loop stops reading a
connection whose box is over its limit. ``idle`` says how long the peer has taken none of what waits
for it (the bytes it took are counted from what was handed to the transport less what the transport
still holds): the server drops a peer idle for ``--stall-seconds``, and, to make room under the total
limit, peers idle for a few seconds. ``close_when_flushed`` closes the transport once what waits has
gone out.

States: ``open``; ``closing`` (no more input is read; replies still go out, then the transport
closes); ``closed`` (we closed the transport); ``gone`` (the connection was lost or dropped: nothing
more is sent).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Optional

COALESCE = 64 * 1024      # replies smaller than this are joined into writes of up to this many bytes


class Pool:
    """The bytes queued in every client's outbox together (not yet handed to a transport), and the most
    they may be before the worker waits (``Outbox.over``)."""

    def __init__(self, limit: int):
        self.limit, self.bytes = limit, 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.bytes += n

    def give(self, n: int) -> None:
        with self._lock:
            self.bytes -= n


class Outbox:
    def __init__(self, limit: int, write: Callable[[bytes], None], close: Callable[[], None],
                 schedule: Callable[[Callable[[], None]], None], pool: Optional[Pool] = None,
                 clock: Callable[[], float] = time.monotonic, buffered: Callable[[], int] = lambda: 0):
        """``write``/``close``: the transport's (event loop only); ``schedule(fn)``: run ``fn`` on the loop;
        ``buffered()``: what the transport still holds of what it was given (any thread)."""
        self.limit, self._write, self._close, self._schedule = limit, write, close, schedule
        self.pool, self.clock, self._buffered = pool or Pool(1 << 62), clock, buffered
        self.paused_at: Optional[float] = None
        self._lock = threading.Lock()
        self._items: deque[bytes] = deque()
        self.bytes = 0                 # waiting, not yet handed to the transport
        self.sent = 0                  # handed to the transport, ever
        self._taken = 0                # what the peer had taken when last looked
        self.progress_at = clock()     # when the peer was last seen taking bytes (or nothing waited)
        self.state = "open"
        self.paused = False
        self._flush_scheduled = False

    @property
    def accepting(self) -> bool:
        """Whether input from the peer should still be read."""
        return self.state == "open"

    def put(self, data: bytes) -> str:
        """Queue ``data`` (any thread): ``queued``, or ``refused`` when the box is closed or gone."""
        with self._lock:
            if self.state in ("closed", "gone"):
                return "refused"
            self.pool.add(len(data))
            self._items.append(data)
            self.bytes += len(data)
            schedule, self._flush_scheduled = not self._flush_scheduled, True
        if schedule:
            self._schedule(self.flush)
        return "queued"

    def flush(self) -> None:
        """Write what waits while the transport takes it, small replies joined; close it if asked and
        nothing waits (loop)."""
        with self._lock:
            self._flush_scheduled = False
        while not self.paused:
            with self._lock:
                if not self._items or self.state in ("closed", "gone"):
                    break
                batch = [self._items.popleft()]
                size = len(batch[0])
                while self._items and size + len(self._items[0]) <= COALESCE:
                    batch.append(self._items.popleft())
                    size += len(batch[-1])
                self.bytes -= size
                self.sent += size
                self.pool.give(size)
            self._write(batch[0] if len(batch) == 1 else b"".join(batch))
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

    def waiting(self) -> int:
        """Bytes waiting for the peer: queued here and held by the transport."""
        return self.bytes + self._transport_holds()

    def _transport_holds(self) -> int:
        try:
            return int(self._buffered())
        except Exception:          # a transport closing under us holds nothing that will be sent
            return 0

    def idle(self) -> float:
        """Seconds the peer has taken none of the bytes waiting for it (0 while nothing waits)."""
        now = self.clock()
        with self._lock:
            held = self._transport_holds()
            taken = self.sent - held
            if taken > self._taken or (self.bytes + held == 0):
                self._taken, self.progress_at = max(taken, self._taken), now
            return now - self.progress_at

    def stalled(self, seconds: float) -> bool:
        """The peer has not taken a byte for ``seconds`` while replies wait for it."""
        return self.state in ("open", "closing") and self.idle() > seconds

    def over(self, need: int) -> str:
        """Which limit adding ``need`` bytes would pass: ``client`` (this box's: it already holds some
        and would pass ``limit``), ``total`` (every box's: ``pool``), or ``""`` (room, or the box is
        closed or gone: nothing will wait)."""
        if self.state not in ("open", "closing"):
            return ""
        waiting = self.waiting()
        if waiting and waiting + need > self.limit:
            return "client"
        if self.pool.bytes and self.pool.bytes + need > self.pool.limit:
            return "total"
        return ""

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
        """The connection is gone or being dropped (any thread): forget what waits."""
        with self._lock:
            self.state = "gone"
            self._empty()
