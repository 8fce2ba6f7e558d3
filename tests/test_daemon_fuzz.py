"""Fuzz a real `stemd serve` with thousands of random and malformed datagrams and TCP byte streams;
afterwards it still answers ping and completes a take."""

import random
import socket
import struct

from daemon_fixtures import TcpClient
from stemd import osc
from stemd.framing import frame_length_prefixed, frame_slip

ADDRESSES = ["/stemd/generate", "/stemd/cancel", "/stemd/status", "/stemd/ping", "/stemd/hello", "/stemd/x", "/"]
KEYS = ["prompt", "bars", "bpm", "meter", "start_bar", "sample_rate", "channels", "variations", "seed",
        "temperature", "top_k", "top_p", "guidance", "priority", "continuation", "continuation_rate",
        "continuation_path", "reply_port", "token", "loop", "key", "nope"]
VALUES = [0, 1, -1, 7, 2 ** 31 - 1, -(2 ** 31), 2 ** 40, 1e6, float("nan"), float("inf"), -0.0, "", "4/4", "0/0",
          "x" * 3000, "../../etc/passwd", "live", "offline", b"", b"\0" * 7, b"\0" * 64, True, False, None, [1, "a"]]


def random_message(rng: random.Random) -> bytes:
    args: list = [rng.choice(["f1", "", "bad id", "a" * 200, 5])]
    for _ in range(rng.randrange(0, 6)):
        args += [rng.choice(KEYS), rng.choice(VALUES)]
    if rng.random() < 0.3:
        args = args[:-1]
    return osc.encode_message(rng.choice(ADDRESSES), *args)


def mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        what = rng.random()
        if what < 0.4 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif what < 0.6:
            del data[rng.randrange(len(data) + 1):]
        elif what < 0.8:
            at = rng.randrange(len(data) + 1)
            data[at:at] = rng.randbytes(rng.randrange(1, 9))
        else:
            data += struct.pack(">i", rng.choice([2 ** 31 - 1, -1, 0, 65536]))
    return bytes(data)


def fuzz_packets(rng: random.Random, n: int):
    for _ in range(n):
        kind = rng.random()
        if kind < 0.3:
            yield rng.randbytes(rng.randrange(0, 300))
        elif kind < 0.6:
            yield mutate(rng, random_message(rng))
        elif kind < 0.7:
            yield b"#bundle\0" + rng.randbytes(8) + mutate(rng, struct.pack(">i", 16) + random_message(rng))
        else:
            yield random_message(rng)


def test_fuzzed_datagrams_and_streams_leave_the_daemon_serving(start_daemon):
    daemon = start_daemon("--queue-size", "4")
    rng = random.Random(20261121)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for i, packet in enumerate(fuzz_packets(rng, 4000)):
            udp.sendto(packet[:65000], ("127.0.0.1", daemon.port))
            if i % 250 == 249:  # keep pace with the daemon so the kernel does not drop the fuzz unread
                assert daemon.ping_udp().address == "/stemd/pong"
    for i in range(300):
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=5) as s:
            style = i % 4
            if style == 0:
                stream = rng.randbytes(rng.randrange(1, 2000))
            elif style == 1:
                stream = b"".join(frame_length_prefixed(p) for p in fuzz_packets(rng, 20))
            elif style == 2:
                stream = b"".join(frame_slip(p) for p in fuzz_packets(rng, 20))
            else:  # framing that lies about sizes: 2 GB headers, truncated SLIP, stray escapes
                stream = rng.choice([struct.pack(">I", 2 ** 31), b"\xc0\xdb\x00", struct.pack(">I", 100) + b"/ab"])
                stream += rng.randbytes(rng.randrange(0, 100))
            try:
                s.sendall(stream)
            except OSError:
                pass  # the daemon may close a connection whose framing is lost while we write
    # it still serves: ping over UDP, and a whole take over TCP
    assert daemon.ping_udp().address == "/stemd/pong"
    client = TcpClient(daemon.port)
    client.send("/stemd/generate", "after-fuzz", "bars", 2)
    messages = client.until("/stemd/done", "after-fuzz", timeout=60)
    assert [m.args[2] for m in messages if m.address == "/stemd/chunk"] == [0, 1]
    assert "Traceback" not in daemon.log, daemon.log[daemon.log.index("Traceback") - 300:][:3000]
    assert daemon.proc.poll() is None


# --- in process: many more cases than a socket allows, with the replies checked ---------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from stemd.daemon.server import Server  # noqa: E402
from stemd.daemon.service import Service, Settings  # noqa: E402
from stemd.models.click import ClickEngine  # noqa: E402
from stemd.models.pool import ModelPool  # noqa: E402
from stemd.protocol import ERROR_CODES  # noqa: E402

osc_values = st.one_of(st.integers(-2 ** 63, 2 ** 63 - 1), st.floats(width=32), st.floats(),
                       st.text(max_size=300).filter(lambda s: "\0" not in s), st.binary(max_size=64),
                       st.booleans(), st.none(), st.sampled_from(KEYS + ["4/4", "live", "offline", "275/2"]))


class Replies:
    """A Server with no sockets: what it would send over UDP is collected."""

    def __init__(self, out):
        self.server = Server(Service(ModelPool.of(ClickEngine()), Settings(out=out, queue_size=2)))
        self.sent: list = []
        self.server.call_on_loop = lambda fn, *args: self.sent.append(args[0]) if fn == self.server.sendto else None

    def ask(self, packet: bytes) -> list:
        self.sent.clear()
        self.server.handle_datagram(packet, ("127.0.0.1", 9))
        return [osc.decode(p) for p in self.sent]


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(address=st.sampled_from(ADDRESSES), args=st.lists(osc_values, max_size=12), mangle=st.integers(0, 3),
       seed=st.integers(0, 2 ** 32))
def test_every_reply_to_any_message_is_a_known_reply_never_internal(tmp_path, address, args, mangle, seed):
    replies = Replies(tmp_path)
    packet = osc.encode_message(address, *args)
    if mangle:
        packet = mutate(random.Random(seed), packet)
    answers = replies.ask(packet)
    assert answers, "every message is answered"
    for reply in answers:
        assert reply.address in ("/stemd/pong", "/stemd/accepted", "/stemd/queued", "/stemd/error",
                                 "/stemd/status/reply", "/stemd/cancelled"), reply
        if reply.address == "/stemd/error":
            assert reply.args[1] in ERROR_CODES and reply.args[1] != "internal", reply
