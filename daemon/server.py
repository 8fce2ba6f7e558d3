"""OSC transports: UDP datagrams and TCP streams on one port. Transports never see meaning.

TCP connections are framed by :class:`~stemd.framing.StreamDecoder` (OSC 1.0 length prefix or OSC 1.1
SLIP, detected from the first byte) and answered in the framing they speak. Every connection has a
bounded send queue: the worker hands replies over without ever waiting, and a client whose queue grows
past ``max_client_buffer`` while its socket is full (it stopped reading) is dropped and its requests
cancelled. The daemon goes
on. Packets become :class:`~stemd.osc.Message` here and go to :func:`stemd.daemon.dispatch.dispatch`.

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
from stemd.daemon.outbox import Outbox, Pool
from stemd.daemon.service import Service
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
REPLY_FACTOR, REPLY_FLOOR = 4, 1024   # a datagram's immediate replies: at most 4x its size (1 KiB at least)
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


class ErrorLimiter:
    """Error replies per source host: a token bucket (``rate`` per second, ``burst`` at once), for at most
    ``hosts`` hosts (the least recently heard are forgotten)."""

    def __init__(self, rate: float = ERROR_RATE, burst: float = ERROR_BURST, hosts: int = 4096,
                 clock=time.monotonic):
        self.rate, self.burst, self.hosts, self.clock = rate, burst, hosts, clock
        self._buckets: OrderedDict[str, list] = OrderedDict()

    def refund(self, host: str) -> None:
        bucket = self._buckets.get(host)
        if bucket is not None:
            bucket[0] = min(self.burst, bucket[0] + 1)

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


class ReplyBudget:
    """What one datagram may draw back at once: one error, and replies of at most ``factor`` times its
    size (at least ``floor`` bytes). Replies after its dispatch (a take's progress and files) are not
    counted: they answer work the request was accepted for."""

    def __init__(self, request_bytes: int, factor: int = REPLY_FACTOR, floor: int = REPLY_FLOOR,
                 max_errors: int = 1):
        self.limit = max(floor, factor * request_bytes)
        self.bytes = 0
        self.errors = 0
        self.max_errors = max_errors
        self.open = True

    def allow(self, data: bytes, is_error: bool) -> bool:
        if not self.open:
            return True
        if (is_error and self.errors >= self.max_errors) or self.bytes + len(data) > self.limit:
            return False
        self.bytes += len(data)
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
                             lambda fn: server.call_on_loop(fn), server.pool)
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
        return True

    def data_received(self, data: bytes) -> None:
        if not self.outbox.accepting:
            return
        first = self.decoder.framing is None
        try:
            packets = self.decoder.feed(data)
        except FramingError as e:
            self.send(ERROR, "", e.code, f"{e}; closing the connection (its framing is lost)")
            self.close()
            return
        if first:
            log.info("client %s connected (%s framing)", self.name, self.decoder.framing)
        for packet in packets:
            if not self.outbox.accepting:
                return
            self.budget = ReplyBudget(len(packet), max_errors=TCP_PACKET_ERRORS)
            try:
                self.server.handle_packet(self, packet)
            finally:
                self.budget = None
            self.outbox.flush()       # this packet's replies meet the transport's flow control now

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.outbox.lost()
        self.decoder.release()
        self.server.pending.discard(self)
        self.server.service.clients.discard(self)
        self.server.service.drop_client(self, self.drop_reason or "disconnect")
        log.info("client %s left%s", self.name, f" ({self.drop_reason})" if self.drop_reason else "")

    def pause_writing(self) -> None:
        self.outbox.pause()

    def resume_writing(self) -> None:
        self.outbox.resume()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close_transport(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()  # asyncio sends what it still buffers, then closes

    # --- sending (any thread) -----------------------------------------------------------------
    def send(self, address: str, *args: Any) -> None:
        data = self.decoder.frame(encode_message(address, *args))
        if address == ERROR and self.budget is not None and not self.budget.allow(data, True):
            return
        if self.outbox.put(data) == "overflow":
            self.server.call_on_loop(self._drop, f"too slow: over {self.outbox.limit} bytes of replies waiting")

    def _drop(self, reason: str) -> None:
        self.drop_reason = reason
        log.warning("dropping client %s: %s", self.name, reason)
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
                if message.address == HELLO and len(message.args) == 1 and not client.refusals \
                        and self._guess_ok(client.host, message.args[0]):
                    client.authed = True  # and /stemd/hello answers with /stemd/pong
                else:
                    client.refuse()
                    continue
            if not client.admit():
                return
            dispatch(self.service, client, message)

    def _guess_ok(self, host: str, token: Any) -> bool:
        """A token from ``host``: wrong guesses are throttled (a host that guessed wrong too often is
        refused without a check for a while)."""
        if not self.guesses.allow(host):
            log.warning("refusing a token from %s: too many wrong tokens lately", host)
            return False
        if self._token_ok(token):
            self.guesses.refund(host)
            return True
        return False

    def handle_datagram(self, data: bytes, addr: tuple) -> None:
        """One datagram: never answered when it comes from this daemon's own address or is a reply; at
        most one error back (rate-limited per host) and replies of a few times its size; on a token
        daemon nothing but ``unauthorized`` before a valid token."""
        if self.is_self(addr):
            return
        budget = ReplyBudget(len(data))
        token = self.service.settings.token
        try:
            packet = decode(data)
        except OSCDecodeError as e:
            if token:
                self._unauthorized(UdpClient(self, addr, budget))
            else:
                UdpClient(self, addr, budget).send(ERROR, "", "bad_packet", str(e))
            return
        try:
            for message in messages_in(packet):
                if message.address in REPLY_ADDRESSES:
                    continue           # a reply (ours, or another stemd's): answering it could loop
                args, envelope = split_envelope(message.args)
                if token and not self._guess_ok(addr[0], envelope.get("token")):
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
        """Every few seconds: drop clients that have taken none of their waiting replies for a while."""
        for client in list(self.service.clients):
            stall = self.service.settings.stall_seconds
            if client.outbox.stalled(stall):
                client._drop(f"too slow: took none of its {client.outbox.bytes} waiting bytes for {stall:g} s")
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_later(SWEEP_SECONDS, self._sweep)

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
        self.workers = [Worker(self.service, device) for device in self.service.pool.devices]
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
