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
from typing import Any, Optional

from stemd.daemon.dispatch import dispatch
from stemd.daemon.outbox import Outbox
from stemd.daemon.service import Service
from stemd.daemon.worker import Worker
from stemd.framing import FramingError, StreamDecoder
from stemd.osc import Message, OSCDecodeError, decode, encode_message, messages_in
from stemd.protocol import BYE, ERROR, HELLO, MAX_CONTINUATION_BYTES, ProtocolError

log = logging.getLogger("stemd.daemon")

MAX_TCP_PACKET = MAX_CONTINUATION_BYTES + 64 * 1024
MAX_DATAGRAM = 65507
TRANSPORT_HIGH_WATER = 1024 * 1024  # what asyncio may buffer before it asks us to pause
ENVELOPE_KEYS = ("token", "reply_port")
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024
CLOSE_GRACE = 5.0  # seconds a closing connection gets to take its last replies
REFUSE_GRACE, MAX_REFUSALS = 0.3, 8  # an unauthorized connection: answered this long, this often, then closed  # the kernel caps it at net.core.rmem_max


class UdpClient:
    """A UDP sender (or the ``reply_port`` it named). Requests from one host share one scope."""

    stream = False

    def __init__(self, server: "Server", addr: tuple):
        self.server, self.addr = server, addr
        self.key = ("udp", addr[0])
        self.name = f"udp:{addr[0]}:{addr[1]}"

    def send(self, address: str, *args: Any) -> None:
        data = encode_message(address, *args)
        if len(data) > MAX_DATAGRAM:
            log.warning("reply %s to %s is %d bytes: too large for UDP, not sent", address, self.name, len(data))
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
        self.decoder = StreamDecoder(MAX_TCP_PACKET)
        self.authed = not server.service.settings.token
        self.key: tuple = ("tcp", id(self))
        self.name = "tcp:?"
        self.transport: Optional[asyncio.Transport] = None
        self.outbox = Outbox(server.service.settings.max_client_buffer, self._write, self._close_transport,
                             lambda fn: server.call_on_loop(fn))
        self.refusals = 0
        self.drop_reason = ""

    # --- asyncio callbacks (event loop thread) ------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername") or ("?", 0)
        self.name = f"tcp:{peer[0]}:{peer[1]}"
        transport.set_write_buffer_limits(high=TRANSPORT_HIGH_WATER)  # type: ignore[attr-defined]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        service = self.server.service
        if service.stopping:
            self.send(ERROR, "", "shutting_down", "the daemon is stopping")
            self.close()
        elif len(service.clients) >= service.settings.max_clients:
            log.warning("refusing %s: %d clients connected", self.name, len(service.clients))
            self.send(ERROR, "", "busy", f"the daemon serves at most {service.settings.max_clients} TCP clients")
            self.close()
        else:
            service.clients.add(self)

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
            self.server.handle_packet(self, packet)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.outbox.lost()
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
        if self.outbox.put(self.decoder.frame(encode_message(address, *args))) == "overflow":
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
        self.worker: Optional[Worker] = None
        self.port = 0

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
            client.send(ERROR, "", "bad_packet", str(e))
            return
        for message in messages_in(packet):
            if not client.authed:
                if message.address == HELLO and len(message.args) == 1 and self._token_ok(message.args[0]) \
                        and not client.refusals:
                    client.authed = True  # and /stemd/hello answers with /stemd/pong
                else:
                    client.refuse()
                    continue
            dispatch(self.service, client, message)

    def handle_datagram(self, data: bytes, addr: tuple) -> None:
        try:
            packet = decode(data)
        except OSCDecodeError as e:
            UdpClient(self, addr).send(ERROR, "", "bad_packet", str(e))
            return
        for message in messages_in(packet):
            args, envelope = split_envelope(message.args)
            reply_to = addr
            port = envelope.get("reply_port")
            if port is not None:
                if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                    UdpClient(self, addr).send(ERROR, "", "out_of_range", "reply_port must be an integer 1..65535")
                    continue
                reply_to = (addr[0], port)
            client = UdpClient(self, reply_to)
            if self.service.settings.token and not self._token_ok(envelope.get("token")):
                client.send(ERROR, "", "unauthorized", "this daemon requires a token: end UDP messages with "
                            "'token <token>'")
                continue
            dispatch(self.service, client, Message(message.address, *args, tags=message.tags))

    def _token_ok(self, token: Any) -> bool:
        expected = self.service.settings.token
        return isinstance(token, str) and hmac.compare_digest(token.encode(), expected.encode())

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
        self.service.call_on_loop = self.call_on_loop
        self.worker = Worker(self.service)
        self.worker.start()

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
        if self.worker is not None:
            while self.worker.is_alive():
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


def loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


__all__ = ["Server", "TcpClient", "UdpClient", "split_envelope", "loopback", "ProtocolError"]
