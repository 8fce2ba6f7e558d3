"""OSC transports: UDP datagrams and TCP streams on one port. Transports never see meaning.

TCP connections are framed by :class:`~stemd.framing.StreamDecoder` (OSC 1.0 length prefix or OSC 1.1
SLIP, detected from the first byte) and answered in the framing they speak. Every connection has a
bounded send queue (:class:`~stemd.daemon.outbox.Outbox`): at its limit (or all queues' together at
theirs) the worker waits between bars while the client reads (``wait_for_room``), and a client that
takes nothing for a while is dropped and its requests cancelled. The daemon goes on. Packets become
:class:`~stemd.osc.Message` here and go to :func:`stemd.daemon.dispatch.dispatch`.

UDP messages may end with ``token <token>`` and ``reply_port <port>``: the token when the daemon requires
one, the reply port to send replies to the sender's host at that port instead of the sender's port
(so ``oscsend`` can ask and ``oscdump`` can listen).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
import socket
import time
from collections import OrderedDict
from typing import Any, Optional

from stemd.daemon.dispatch import dispatch
from stemd.daemon.outbox import COALESCE, Outbox, Pool
from stemd.daemon.service import Service
from stemd.daemon.takeio import LITTER
from stemd.daemon.worker import Worker
from stemd.framing import FramingError, StreamDecoder
from stemd.osc import Message, OSCDecodeError, decode, encode_message, messages_in
from stemd.midi.session import LEARNED_ADDRESS, LEARNING_ADDRESS
from stemd.protocol import (ACCEPTED, BYE, CANCELLED, CHUNK, DONE, ERROR, HELLO, MAX_CONTINUATION_BYTES, PONG,
                            PROGRESS, QUEUED, SIDECAR, STATUS_REPLY, TAKE, ProtocolError)

log = logging.getLogger("stemd.daemon")

MAX_TCP_PACKET = MAX_CONTINUATION_BYTES + 64 * 1024
MAX_DATAGRAM = 65507
MAX_ERROR_TEXT = 1000                 # characters of an error's message
ERROR_RATE, ERROR_BURST = 20.0, 40.0  # error replies per second per source host, and at once
GUESS_RATE, GUESS_BURST = 0.5, 5.0    # wrong tokens per second per host, and at once
MAX_UNAUTHED_PACKET = 64 * 1024       # the largest packet before a connection has shown its token
HELLO_TIMEOUT = 5.0                   # seconds a new connection has to say something (and its token)
MAX_PENDING = 256                     # connections at once that have not said anything yet
SWEEP_SECONDS = 2.0
REPLY_FACTOR, REPLY_FLOOR = 4, 1024   # a packet's immediate replies: at most 4x its size on the wire (the first 1 KiB)
TCP_PACKET_ERRORS = 16                # errors one TCP packet may draw (a bundle of bad messages), within 4x its size
#: addresses stemd sends (replies): a message to one of them is never answered, so two daemons, or a
#: daemon and its own reply port, cannot talk to each other forever
REPLY_ADDRESSES = frozenset({PONG, ACCEPTED, QUEUED, PROGRESS, CHUNK, SIDECAR, TAKE, DONE, ERROR, STATUS_REPLY,
                             CANCELLED, BYE, LEARNING_ADDRESS, LEARNED_ADDRESS})
TRANSPORT_HIGH_WATER = 1024 * 1024  # what asyncio may buffer before it asks us to pause
ENVELOPE_KEYS = ("token", "reply_port")
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024
CLOSE_GRACE = 5.0  # seconds a closing connection gets to take its last replies
REFUSE_GRACE, MAX_REFUSALS = 0.3, 8  # an unauthorized connection: answered this long, this often, then closed  # the kernel caps it at net.core.rmem_max
UDP_HEADERS = {4: 28, 6: 48}          # an IPv4 / IPv6 + UDP header: what a datagram costs on the wire besides its bytes
IDLE_SECONDS = 5.0                    # a client that took none of its waiting replies this long is not reading
WAIT_STEP = 0.02                      # how often a worker waiting for a client's room looks again
REFUSAL_PERIOD = 10.0                 # refused messages are logged once per host and period, with a count


class ErrorLimiter:
    """Error replies per source host: a token bucket (``rate`` per second, ``burst`` at once), for at most
    ``hosts`` hosts (the least recently heard are forgotten)."""

    def __init__(self, rate: float = ERROR_RATE, burst: float = ERROR_BURST, hosts: int = 4096,
                 clock=time.monotonic):
        self.rate, self.burst, self.hosts, self.clock = rate, burst, hosts, clock
        self._buckets: OrderedDict[str, list] = OrderedDict()

    def allow(self, host: str) -> bool:
        now = self.clock()
        bucket = self._buckets.pop(host, None) or [self.burst, now]
        bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        self._buckets[host] = bucket
        while len(self._buckets) > self.hosts:
            self._buckets.popitem(last=False)
        if bucket[0] < 1:
            return False
        bucket[0] -= 1
        return True


class RefusalLog:
    """Messages refused for want of a valid token, logged once per host and period: the first refusal
    of a period is one line, the others are counted and summed up in one line when the period is over
    (``flush``, from the server's sweep). At most ``hosts`` hosts are remembered."""

    def __init__(self, period: float = REFUSAL_PERIOD, hosts: int = 4096, clock=time.monotonic):
        self.period, self.hosts, self.clock = period, hosts, clock
        #: host -> [period start, {reason: refusals not logged}, reasons logged this period]
        self._open: OrderedDict[str, list] = OrderedDict()

    def refused(self, host: str, why: str) -> None:
        """One refusal: logged when it is the first of its kind from ``host`` this period, else counted."""
        now = self.clock()
        entry = self._open.get(host)
        if entry is not None and now - entry[0] >= self.period:
            self._summary(host, entry)
            entry = None
        if entry is None:
            entry = self._open[host] = [now, {}, set()]
            while len(self._open) > self.hosts:
                self._summary(*self._open.popitem(last=False))
        if why not in entry[2]:
            entry[2].add(why)
            log.warning("turning away %s: %s (more of these from %s are counted, and logged every %g s)",
                        host, why, host, self.period)
            return
        entry[1][why] = entry[1].get(why, 0) + 1

    def flush(self) -> None:
        now = self.clock()
        for host, entry in list(self._open.items()):
            if now - entry[0] >= self.period:
                self._summary(host, entry)

    def _summary(self, host: str, entry: list) -> None:
        self._open.pop(host, None)
        if entry[1]:
            what = ", ".join(f"{n} {why}" for why, n in sorted(entry[1].items()))
            log.warning("refused %d more messages from %s in %.0f s (%s)", sum(entry[1].values()), host,
                        self.clock() - entry[0], what)


class ReplyBudget:
    """What one packet may draw back at once: ``max_errors`` errors, and replies of at most ``factor``
    times its size on the wire (``overhead``: the header bytes each datagram costs besides its own,
    counted on both sides), except that its first reply may be up to ``floor`` bytes (a 16-byte
    ``/stemd/models`` gets its answer). Replies after its dispatch (a take's progress and files) are
    not counted: they answer work the request was accepted for."""

    def __init__(self, request_bytes: int, factor: int = REPLY_FACTOR, floor: int = REPLY_FLOOR,
                 max_errors: int = 1, overhead: int = 0):
        self.overhead, self.floor = overhead, floor
        self.limit = factor * (request_bytes + overhead)
        self.bytes = 0
        self.errors = 0
        self.max_errors = max_errors
        self.open = True
        self.cut = 0              # replies (not errors) left unsent

    def allow(self, data: bytes, is_error: bool) -> bool:
        if not self.open:
            return True
        cost = len(data) + self.overhead
        within = self.bytes + cost <= self.limit
        first = self.bytes == 0 and cost <= self.floor
        if (is_error and self.errors >= self.max_errors) or not (within or first):
            self.cut += not is_error
            return False
        self.bytes += cost
        self.errors += is_error
        return True


class UdpClient:
    """A UDP sender (or the ``reply_port`` it named). Requests from one host share one scope."""

    stream = False

    def __init__(self, server: "Server", addr: tuple, budget: Optional[ReplyBudget] = None):
        self.server, self.addr, self.budget = server, addr, budget
        self.key = ("udp", addr[0])
        self.name = f"udp:{addr[0]}:{addr[1]}"

    def send(self, address: str, *args: Any) -> None:
        if address == ERROR and len(args) >= 3:   # an error's text must fit a datagram
            args = (*args[:2], str(args[2])[:MAX_ERROR_TEXT], *args[3:])
        data = encode_message(address, *args)
        if len(data) > MAX_DATAGRAM:
            log.warning("reply %s to %s is %d bytes: too large for UDP, not sent", address, self.name, len(data))
            return
        is_error = address == ERROR
        if self.budget is not None and not self.budget.allow(data, is_error):
            return
        if is_error and not self.server.errors.allow(self.addr[0]):
            return
        self.server.call_on_loop(self.server.sendto, data, self.addr)


class UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: "Server"):
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.server.handle_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable from a vanished client
        log.debug("UDP error: %s", exc)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if exc is not None:
            log.error("UDP socket lost: %r", exc)


class TcpClient(asyncio.Protocol):
    stream = True

    def __init__(self, server: "Server"):
        self.server = server
        self.authed = not server.service.settings.token
        # before its token a connection may send only small packets (its buffer stays small)
        self.decoder = StreamDecoder(MAX_TCP_PACKET if self.authed else MAX_UNAUTHED_PACKET)
        self.key: tuple = ("tcp", id(self))
        self.host, self.name = "?", "tcp:?"
        self.transport: Optional[asyncio.Transport] = None
        self.outbox = Outbox(server.service.settings.max_client_buffer, self._write, self._close_transport,
                             lambda fn: server.call_on_loop(fn), server.pool, buffered=self._transport_holds)
        self.reading = True       # False while its replies are over its limit: its input waits
        self.refusals = 0
        self.drop_reason = ""
        self.budget: Optional[ReplyBudget] = None   # the errors a packet may draw, while it is read
        self.admitted = False     # counted in --max-clients: once it has spoken (and shown its token)

    # --- asyncio callbacks (event loop thread) ------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername") or ("?", 0)
        self.host, self.name = str(peer[0]), f"tcp:{peer[0]}:{peer[1]}"
        transport.set_write_buffer_limits(high=TRANSPORT_HIGH_WATER)  # type: ignore[attr-defined]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        service, server = self.server.service, self.server
        if service.stopping:
            self.send(ERROR, "", "shutting_down", "the daemon is stopping")
            self.close()
        elif len(server.pending) >= MAX_PENDING:
            log.warning("refusing %s: %d connections have not said anything yet", self.name, len(server.pending))
            self._drop("too many silent connections")
        else:
            server.pending.add(self)
            server.loop.call_later(HELLO_TIMEOUT, self._silent_check)  # type: ignore[union-attr]

    def _silent_check(self) -> None:
        if not self.admitted and self.outbox.state == "open":
            what = "its token" if self.server.service.settings.token else "anything"
            self._drop(f"did not send {what} within {HELLO_TIMEOUT:g} s")

    def admit(self) -> bool:
        """The connection has spoken (and authenticated): count it against --max-clients."""
        if self.admitted:
            return True
        service = self.server.service
        self.server.pending.discard(self)
        if len(service.clients) >= service.settings.max_clients:
            log.warning("refusing %s: %d clients connected", self.name, len(service.clients))
            self.send(ERROR, "", "busy", f"the daemon serves at most {service.settings.max_clients} TCP clients")
            self.close()
            return False
        self.admitted = True
        self.decoder.limit(MAX_TCP_PACKET)
        service.clients.add(self)
        log.info("client %s connected (%s framing)", self.name, self.decoder.framing)
        return True

    def data_received(self, data: bytes) -> None:
        if not self.outbox.accepting:
            return
        try:
            packets = self.decoder.feed(data)
        except FramingError as e:
            self.send(ERROR, "", e.code, f"{e}; closing the connection (its framing is lost)")
            self.close()
            return
        for packet in packets:
            if not self.outbox.accepting:
                break
            budget = self.budget = ReplyBudget(len(packet), max_errors=TCP_PACKET_ERRORS)
            try:
                self.server.handle_packet(self, packet)
                if budget.cut:        # (within the budget too, when it has room for it)
                    self.send(ERROR, "", "too_large", f"{budget.cut} replies to this packet were not sent: a "
                              f"packet draws replies of at most {REPLY_FACTOR}x its size")
            finally:
                self.budget = None
            if self.outbox.bytes > COALESCE:
                self.outbox.flush()   # a large packet's replies meet the transport's flow control now
        self.outbox.flush()           # the rest together: few writes, few segments
        if self.outbox.waiting() > self.outbox.limit and self.transport is not None and self.reading:
            self.reading = False      # its replies are over its limit: read no more requests until they go
            self.transport.pause_reading()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.outbox.lost()
        self.decoder.release()
        self.server.pending.discard(self)
        self.server.service.clients.discard(self)
        self.server.service.drop_client(self, self.drop_reason or "disconnect")
        if self.admitted:
            log.info("client %s left%s", self.name, f" ({self.drop_reason})" if self.drop_reason else "")

    def pause_writing(self) -> None:
        self.outbox.pause()

    def resume_writing(self) -> None:
        self.outbox.resume()
        self.read_again()

    def read_again(self) -> None:
        """Its replies are under its limit again: read its requests (loop)."""
        if not self.reading and self.outbox.waiting() <= self.outbox.limit and self.transport is not None \
                and not self.transport.is_closing():
            self.reading = True
            self.transport.resume_reading()

    def _transport_holds(self) -> int:
        transport = self.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close_transport(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()  # asyncio sends what it still buffers, then closes

    # --- sending (any thread) -----------------------------------------------------------------
    def send(self, address: str, *args: Any) -> None:
        data = self.decoder.frame(encode_message(address, *args))
        budget = self.budget
        if budget is not None and not budget.allow(data, address == ERROR):
            return
        self.outbox.put(data)

    def wait_for_room(self, need: int, should_stop) -> None:
        """The worker, before a bar of ``need`` bytes for this client: wait while its waiting replies are
        at its limit, or all clients' together at the total limit (backpressure: a client that reads
        slowly is waited for, never dropped). A client that took none of its replies for IDLE_SECONDS is
        dropped when a limit is in the way (the total limit drops the idle client holding the most, this
        one or another); the wait ends when ``should_stop()`` (a cancel, a preemption) and lasts at most
        until the client has taken nothing for --stall-seconds."""
        settings = self.server.service.settings
        idle_limit = min(IDLE_SECONDS, settings.stall_seconds)
        box = self.outbox
        while not should_stop():
            hit = box.over(need)
            if not hit:
                return
            idle = box.idle()
            if hit == "client" and idle >= idle_limit:
                return self.drop_soon(f"too slow: {box.waiting()} bytes of replies waiting, at its limit "
                                      f"(--max-client-buffer-mb {box.limit / 2 ** 20:g}), and it took none of "
                                      f"them for {idle:.1f} s")
            if hit == "total" and self.server.drop_idle(idle_limit):
                continue
            if idle >= settings.stall_seconds:
                return self.drop_soon(f"too slow: took none of its {box.waiting()} waiting bytes for "
                                      f"{idle:.1f} s (--stall-seconds {settings.stall_seconds:g})")
            time.sleep(WAIT_STEP)

    def drop_soon(self, reason: str) -> None:
        """Drop this client (any thread): nothing more is queued for it from now; the loop cuts it."""
        self.outbox.lost()
        self.server.call_on_loop(self._drop, reason)

    def _drop(self, reason: str) -> None:
        if self.drop_reason:
            return                    # dropped already
        self.drop_reason = reason
        if self.admitted:
            log.warning("dropping client %s: %s", self.name, reason)
        else:
            self.server.refusals.refused(self.host, f"connection dropped: {reason}")
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """Close once what is queued has gone out (a client that does not read gets 5 s, then is cut)."""
        self.outbox.close_when_flushed()
        self.server.call_on_loop(lambda: self.server.loop.call_later(CLOSE_GRACE, self._abort_if_open))

    def refuse(self) -> None:
        """No (or a wrong) token: every message gets ``unauthorized`` (a client may have sent several before
        reading), and the connection closes shortly after the first."""
        self.refusals += 1
        if self.refusals <= MAX_REFUSALS:
            self.send(ERROR, "", "unauthorized", "this daemon requires a token: send /stemd/hello <token> first; "
                      "closing")
        if self.refusals == 1:
            self.server.loop.call_later(REFUSE_GRACE, self.close)  # type: ignore[union-attr]

    def _abort_if_open(self) -> None:
        if self.transport is not None and self.outbox.state != "gone":
            self._drop("did not read its last replies")


def split_envelope(args: tuple) -> tuple[tuple, dict]:
    """Trailing ``token <s>`` / ``reply_port <i>`` pairs of a UDP message, removed from its arguments."""
    envelope: dict = {}
    args = tuple(args)
    while len(args) >= 3 and args[-2] in ENVELOPE_KEYS and args[-2] not in envelope:
        envelope[args[-2]] = args[-1]
        args = args[:-2]
    if len(args) == 2 and args[0] in ENVELOPE_KEYS and args[0] not in envelope:  # /stemd/ping token X
        envelope[args[0]] = args[1]
        args = ()
    return args, envelope


class Server:
    def __init__(self, service: Service):
        self.service = service
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.udp: Optional[asyncio.DatagramTransport] = None
        self.tcp: Optional[asyncio.base_events.Server] = None
        self.workers: list[Worker] = []
        self.port = 0
        self.errors = ErrorLimiter()
        self.guesses = ErrorLimiter(rate=GUESS_RATE, burst=GUESS_BURST)   # wrong tokens per host
        self.refusals = RefusalLog()
        self.pending: set = set()        # TCP connections that have not spoken (or shown their token) yet
        self.pool = Pool(service.settings.max_total_buffer)
        self._own_hosts: set = set()

    def call_on_loop(self, fn, *args) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)  # type: ignore[union-attr]
        except RuntimeError:  # the loop is closed: we are gone
            pass

    def sendto(self, data: bytes, addr: tuple) -> None:
        if self.udp is not None and not self.udp.is_closing():
            self.udp.sendto(data, addr)

    # --- incoming -----------------------------------------------------------------------------
    def handle_packet(self, client: TcpClient, data: bytes) -> None:
        try:
            packet = decode(data)
        except OSCDecodeError as e:
            if client.authed:
                client.send(ERROR, "", "bad_packet", str(e))
            else:
                client.refuse()
            return
        for message in messages_in(packet):
            if message.address in REPLY_ADDRESSES:
                continue              # a reply sent back to us: answering it could loop
            if not client.authed:
                token = message.args[0] if message.address == HELLO and len(message.args) == 1 \
                    and not client.refusals else None
                verdict = self._check_token(client.host, token)
                if verdict == "ok":
                    client.authed = True  # and /stemd/hello answers with /stemd/pong
                elif verdict == "throttled":
                    client._drop("too many wrong tokens from its host lately")
                    return
                else:
                    client.refuse()
                    continue
            if not client.admit():
                return
            dispatch(self.service, client, message)

    def _check_token(self, host: str, token: Any) -> str:
        """A message from ``host`` on a token daemon, with ``token`` (None: it has none): ``ok``, ``none``
        (no token: not a guess, it counts against nothing), ``wrong`` or ``throttled`` (a wrong token from
        a host that guessed wrong too often lately: it gets no answer). A right token is always checked
        and accepted, whatever others on its host sent. Refusals are logged once per host and period."""
        if token is None:
            self.refusals.refused(host, "no token")
            return "none"
        if self._token_ok(token):
            return "ok"
        if not self.guesses.allow(host):
            self.refusals.refused(host, "too many wrong tokens")
            return "throttled"
        self.refusals.refused(host, "wrong token")
        return "wrong"

    def handle_datagram(self, data: bytes, addr: tuple) -> None:
        """One datagram: never answered when it comes from this daemon's own address or is a reply; at
        most one error back (rate-limited per host) and replies of a few times its size; on a token
        daemon nothing but ``unauthorized`` before a valid token."""
        if self.is_self(addr):
            return
        budget = ReplyBudget(len(data), overhead=UDP_HEADERS[6 if ":" in addr[0] else 4])
        token = self.service.settings.token
        try:
            packet = decode(data)
        except OSCDecodeError as e:
            if token:
                self.refusals.refused(addr[0], "no token (not an OSC packet)")
                self._unauthorized(UdpClient(self, addr, budget))
            else:
                UdpClient(self, addr, budget).send(ERROR, "", "bad_packet", str(e))
            return
        try:
            for message in messages_in(packet):
                if message.address in REPLY_ADDRESSES:
                    continue           # a reply (ours, or another stemd's): answering it could loop
                args, envelope = split_envelope(message.args)
                if token:
                    verdict = self._check_token(addr[0], envelope.get("token"))
                    if verdict != "ok":
                        if verdict != "throttled":
                            self._unauthorized(UdpClient(self, addr, budget))
                        continue
                reply_to = addr
                port = envelope.get("reply_port")
                if port is not None:
                    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                        UdpClient(self, addr, budget).send(ERROR, "", "out_of_range",
                                                           "reply_port must be an integer 1..65535")
                        continue
                    reply_to = (addr[0], port)
                    if self.is_self(reply_to):
                        continue       # pointed at the daemon itself: it would answer itself forever
                dispatch(self.service, UdpClient(self, reply_to, budget),
                         Message(message.address, *args, tags=message.tags))
        finally:
            budget.open = False

    def _sweep(self) -> None:
        """Every few seconds: drop clients that have taken none of their waiting replies for
        --stall-seconds, and idle ones while all clients' replies are over the total limit; read again
        from clients whose replies went under their limit; sum up refused messages; remove what takes
        left on a full disk."""
        stall = self.service.settings.stall_seconds
        for client in list(self.service.clients):
            if client.outbox.stalled(stall):
                client._drop(f"too slow: took none of its {client.outbox.waiting()} waiting bytes for "
                             f"{client.outbox.idle():.1f} s (--stall-seconds {stall:g})")
            else:
                client.read_again()
        while self.pool.bytes > self.pool.limit and self.drop_idle(min(IDLE_SECONDS, stall)):
            pass
        self.refusals.flush()
        LITTER.sweep()                # files a take could not remove on a full disk, once the disk allows
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_later(SWEEP_SECONDS, self._sweep)

    def drop_idle(self, idle_seconds: float) -> bool:
        """All clients' waiting replies are at the total limit: drop the client that holds the most of
        them among those that took none for ``idle_seconds`` (any thread). False: every client holding
        replies is reading (the worker waits for them)."""
        idle = [(c.outbox.bytes, c) for c in list(self.service.clients)
                if c.outbox.bytes and c.outbox.state == "open" and c.outbox.idle() >= idle_seconds]
        if not idle:
            return False
        held, client = max(idle, key=lambda pair: pair[0])
        reason = (f"not reading: took none of its {client.outbox.waiting()} waiting bytes for "
                  f"{client.outbox.idle():.1f} s while all clients' waiting replies reached the total limit "
                  f"(--max-total-buffer-mb {self.pool.limit / 2 ** 20:g})")
        client.drop_soon(reason)
        return True

    def _unauthorized(self, client: UdpClient) -> None:
        client.send(ERROR, "", "unauthorized", "this daemon requires a token: end UDP messages with 'token <token>'")

    def is_self(self, addr: tuple) -> bool:
        """``addr`` is this daemon's own UDP address (its port on a local address)."""
        if addr[1] != self.port:
            return False
        return addr[0] in self._own_hosts or loopback(addr[0]) or addr[0] in _local_addresses()

    def _token_ok(self, token: Any) -> bool:
        expected = self.service.settings.token
        if not isinstance(token, str):
            return False
        try:
            given = token.encode()
        except UnicodeEncodeError:      # a lone surrogate (an OSC 'c' or 'S' argument): not any token
            return False
        return hmac.compare_digest(given, expected.encode())

    # --- life cycle ---------------------------------------------------------------------------
    async def start(self, host: str, port: int) -> None:
        self.loop = asyncio.get_running_loop()
        for _attempt in range(20):
            self.tcp = await self.loop.create_server(lambda: TcpClient(self), host, port, reuse_address=True)
            actual = self.tcp.sockets[0].getsockname()[1]
            try:
                self.udp, _ = await self.loop.create_datagram_endpoint(lambda: UdpProtocol(self),
                                                                       local_addr=(host, actual))
                sock = self.udp.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)  # bursts of requests
                break
            except OSError:
                self.tcp.close()
                if port:  # a fixed port that UDP cannot have: say so
                    raise
        self.port = actual
        self._own_hosts = {host, "0.0.0.0", "::"}
        self.service.call_on_loop = self.call_on_loop
        self.loop.call_later(SWEEP_SECONDS, self._sweep)
        make = self.service.make_workers
        self.workers = make() if make else [Worker(self.service, device) for device in self.service.pool.devices]
        for worker in self.workers:
            worker.start()

    async def run_until_signal(self) -> None:
        stop = asyncio.Event()
        signals = [0]

        def on_signal(signum: int) -> None:
            signals[0] += 1
            if signals[0] == 1:
                log.info("%s: stopping (%s in-flight work)", signal.Signals(signum).name,
                         "finishing" if self.service.settings.on_shutdown == "finish" else "cancelling")
                stop.set()
            else:
                log.info("second signal: cancelling everything now")
                self.service.cancel_all()

        for sig in (signal.SIGINT, signal.SIGTERM):
            self.loop.add_signal_handler(sig, on_signal, sig)  # type: ignore[union-attr]
        await stop.wait()
        await self.shutdown()

    async def shutdown(self) -> None:
        service = self.service
        service.stopping = True
        if self.tcp is not None:
            self.tcp.close()                  # no new connections
        service.scheduler.close()             # no new work: generate answers shutting_down
        if service.settings.on_shutdown != "finish":
            self.service.cancel_all()
        while any(worker.is_alive() for worker in self.workers):
            await asyncio.sleep(0.05)
        await asyncio.sleep(0)  # let the worker's last replies reach the queues
        for client in list(service.clients):
            client.send(BYE, "the daemon is stopping")
            client.close()
        for _ in range(100):  # up to 2 s for the last bytes to leave
            if not service.clients:
                break
            await asyncio.sleep(0.02)
        if self.udp is not None:
            self.udp.close()
        log.info("stopped")


def _local_addresses() -> set:
    """This machine's own addresses (by its host name), looked up once."""
    global _LOCAL
    if _LOCAL is None:
        try:
            _LOCAL = set(socket.gethostbyname_ex(socket.gethostname())[2])
        except OSError:
            _LOCAL = set()
    return _LOCAL


_LOCAL: Optional[set] = None


def loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


__all__ = ["Server", "TcpClient", "UdpClient", "split_envelope", "loopback", "ProtocolError"]
