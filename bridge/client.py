"""The bridge's TCP connection to the daemon: send requests, receive replies, reassemble chunks.

One :class:`DaemonClient` per daemon. A background reader thread frames the stream (OSC 1.0 length
prefix, or SLIP if the daemon answers that way), decodes each packet with ``stemd.osc`` and hands it to
the :class:`PendingTake` it belongs to. A request collects its chunks per variation and bar, and each
variation's sidecar (``/stemd/sidecar``); when the daemon says ``/stemd/done`` it can give back each
variation's audio, bars in order, checked complete.
Nothing here knows about DAWs or files.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from stemd import osc, protocol
from stemd.errors import StemdError
from stemd.framing import FramingError, StreamDecoder, frame_length_prefixed
from stemd.protocol import Chunk, GenerateRequest, ProtocolError

CONNECT_TIMEOUT_S = 5.0


class DaemonError(StemdError):
    """The daemon is unreachable, refused us, or went away."""

    code = "internal"


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9130`` for IPv6); a bare host gets the default port."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(protocol.DEFAULT_PORT)
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise DaemonError(f"--daemon must be HOST:PORT, got {text!r}", "bad_arguments")
    return host, int(port)


@dataclass
class Event:
    """One reply about one request: ``kind`` is the address without ``/stemd/`` (chunk, done, error...)."""

    kind: str
    request_id: str
    args: tuple
    chunk: Optional[Chunk] = None
    handle: Optional["PendingTake"] = None  # the request it belongs to (set before listeners see it)


class PendingTake:
    """A take asked for and not yet finished: its request in flight, its chunks, its end, its error."""

    def __init__(self, request: GenerateRequest, on_event: Optional[Callable[[Event], None]] = None):
        self.request = request
        self.on_event = on_event
        self.chunks: dict[int, dict[int, Chunk]] = {}
        self.sidecars: dict[int, str] = {}      # variation -> the daemon's /stemd/sidecar text
        self.finished = threading.Event()
        self.error: Optional[ProtocolError] = None

    @property
    def id(self) -> str:
        return self.request.request_id

    def _handle(self, event: Event) -> None:
        event.handle = self
        if event.kind == "chunk":
            c = event.chunk
            self.chunks.setdefault(c.variation, {})[c.bar_index] = c
        elif event.kind == "sidecar":
            variation, text = event.args[1:3]
            self.sidecars[variation] = text
        elif event.kind == "error":
            code = event.args[1] if len(event.args) > 1 and event.args[1] in protocol.ERROR_CODES else "internal"
            message = str(event.args[2]) if len(event.args) > 2 else "the daemon reported an error"
            self.error = ProtocolError(code, message, self.id)
        if self.on_event is not None:
            self.on_event(event)
        if event.kind in ("done", "error", "cancelled"):
            self.finished.set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self.finished.wait(timeout)

    def bars_received(self, variation: int = 0) -> int:
        return len(self.chunks.get(variation, {}))

    def audio(self, variation: int = 0) -> tuple[np.ndarray, int, int]:
        """``(audio (channels, n), sample_rate, start_sample)`` of a finished variation, bars in order."""
        bars = self.chunks.get(variation, {})
        expected = self.request.bars
        missing = [b for b in range(expected) if b not in bars]
        if missing:
            raise DaemonError(f"take {self.id} variation {variation + 1}: bars {missing} never arrived")
        ordered = [bars[b] for b in range(expected)]
        rate, channels = ordered[0].sample_rate, ordered[0].channels
        for a, b in zip(ordered, ordered[1:]):
            if b.start_sample != a.start_sample + a.audio.shape[1]:
                raise DaemonError(f"take {self.id}: bar {b.bar_index} starts at sample {b.start_sample}, "
                                  f"not where bar {a.bar_index} ends ({a.start_sample + a.audio.shape[1]})")
        if any(c.sample_rate != rate or c.channels != channels for c in ordered):
            raise DaemonError(f"take {self.id}: chunks disagree on rate or channels")
        return np.concatenate([c.audio for c in ordered], axis=1), rate, ordered[0].start_sample

    @property
    def variations(self) -> list[int]:
        return sorted(self.chunks)


class DaemonClient:
    """A TCP connection to ``stemd serve``."""

    def __init__(self, host: str, port: int, token: Optional[str] = None, timeout: float = CONNECT_TIMEOUT_S):
        self.host, self.port, self.token, self.timeout = host, port, token, timeout
        self._sock: Optional[socket.socket] = None
        self._send_lock = threading.Lock()
        self._requests: dict[str, PendingTake] = {}
        self._replies: dict[str, list] = {}  # address -> waiters for untargeted replies (pong, status)
        self._replies_lock = threading.Lock()
        self._reader: Optional[threading.Thread] = None
        self.closed = threading.Event()
        self.close_reason = ""
        self.status: dict = {}
        self.on_unrouted: Optional[Callable[[osc.Message], None]] = None

    # --- connection --------------------------------------------------------------------------
    def connect(self) -> "DaemonClient":
        where = f"{self.host}:{self.port}"
        try:
            self._sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as e:
            raise DaemonError(f"cannot reach the daemon at {where}: {e.strerror or e} "
                              f"(is 'stemd serve' running there?)") from None
        self._sock.settimeout(None)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reader = threading.Thread(target=self._read_loop, name="stemd-bridge-reader", daemon=True)
        self._reader.start()
        if self.token:
            self.send(protocol.HELLO, self.token)
        reply = self.ask(protocol.PING, (), protocol.PONG, self.timeout)
        if reply is None:
            self.close()
            raise DaemonError(f"{where} accepted a TCP connection but did not answer /stemd/ping within "
                              f"{self.timeout:g} s: is it a stemd daemon?")
        if reply.address == protocol.ERROR:
            self.close()
            raise DaemonError(f"the daemon at {where} refused us: {_error_text(reply.args)}")
        status = self.ask(protocol.STATUS, (), protocol.STATUS_REPLY, self.timeout)
        if status is not None and status.address == protocol.STATUS_REPLY:
            self.status = _status(status.args)
        return self

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=2)

    def __enter__(self) -> "DaemonClient":
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def model(self) -> str:
        return str(self.status.get("model", "unknown"))

    # --- sending -----------------------------------------------------------------------------
    def send(self, address: str, *args) -> None:
        if self._sock is None or self.closed.is_set():
            raise DaemonError(f"not connected to the daemon ({self.close_reason or 'connection closed'})")
        packet = frame_length_prefixed(osc.encode_message(address, *args))
        try:
            with self._send_lock:
                self._sock.sendall(packet)
        except OSError as e:
            raise DaemonError(f"lost the daemon at {self.host}:{self.port}: {e}") from None

    def ask(self, address: str, args: tuple, reply_address: str, timeout: float) -> Optional[osc.Message]:
        """Send and wait for the next ``reply_address`` (or an untargeted error) message."""
        box: list = []
        got = threading.Event()
        waiter = (box, got)
        with self._replies_lock:
            for a in (reply_address, protocol.ERROR):
                self._replies.setdefault(a, []).append(waiter)
        try:
            self.send(address, *args)
            got.wait(timeout)
        finally:
            with self._replies_lock:
                for a in (reply_address, protocol.ERROR):
                    if waiter in self._replies.get(a, []):
                        self._replies[a].remove(waiter)
        return box[0] if box else None

    def submit(self, request: GenerateRequest, on_event: Optional[Callable[[Event], None]] = None) -> PendingTake:
        handle = PendingTake(request, on_event)
        self._requests[request.request_id] = handle
        try:
            self.send(protocol.GENERATE, *request.to_args())
        except DaemonError:
            del self._requests[request.request_id]
            raise
        return handle

    def cancel(self, request_id: str) -> None:
        self.send(protocol.CANCEL, request_id)

    # --- receiving ---------------------------------------------------------------------------
    def _read_loop(self) -> None:
        decoder = StreamDecoder()
        reason = "the daemon closed the connection"
        try:
            while True:
                data = self._sock.recv(1 << 16)
                if not data:
                    break
                for packet in decoder.feed(data):
                    try:
                        decoded = osc.decode(packet)
                    except osc.OSCDecodeError:
                        continue  # a bad packet from the daemon costs us nothing
                    for message in osc.messages_in(decoded):
                        self._dispatch(message)
        except FramingError as e:
            reason = f"the daemon's stream cannot be framed: {e}"
        except OSError as e:
            reason = f"connection to the daemon lost: {e}"
        self.close_reason = reason
        self.closed.set()
        for handle in list(self._requests.values()):
            if not handle.finished.is_set():
                handle._handle(Event("error", handle.id, (handle.id, "internal", reason)))

    def _dispatch(self, message: osc.Message) -> None:
        address, args = message.address, message.args
        if address == protocol.BYE:
            self.close_reason = "the daemon is shutting down"
        request_id = args[0] if args and isinstance(args[0], str) else ""
        handle = self._requests.get(request_id)
        if handle is not None and address.startswith("/stemd/"):
            kind = address[len("/stemd/"):]
            chunk = None
            if address == protocol.CHUNK:
                try:
                    chunk = Chunk.from_args(args)
                except (ProtocolError, ValueError):
                    return
            elif address == protocol.SIDECAR and not _is_sidecar(args):
                return      # not the documented shape: the take's sidecar counts as never arrived
            handle._handle(Event(kind, request_id, args, chunk))
            if handle.finished.is_set():
                self._requests.pop(request_id, None)
            return
        with self._replies_lock:
            waiters = list(self._replies.get(address, ()))
        if waiters:
            box, got = waiters[0]
            box.append(message)
            got.set()
            return
        if self.on_unrouted is not None:
            self.on_unrouted(message)


def _is_sidecar(args: tuple) -> bool:
    """``<id:s> <variation:i> <json:s>``, the JSON at most ``MAX_SIDECAR_BYTES`` (docs/protocol.md)."""
    return (len(args) == 3 and isinstance(args[1], int) and not isinstance(args[1], bool) and 0 <= args[1]
            and isinstance(args[2], str) and len(args[2].encode("utf-8", "replace")) <= protocol.MAX_SIDECAR_BYTES)


def _status(args: tuple) -> dict:
    """``/stemd/status/reply "*" <state> <queued> <running> <clients> <model>`` (docs/protocol.md)."""
    names = ("id", "state", "queued", "running", "clients", "model")
    return dict(zip(names, args)) if args and args[0] == "*" else {}


def _error_text(args: tuple) -> str:
    strings = [a for a in args if isinstance(a, str)]
    return ": ".join(strings[-2:]) if strings else "an error"
