"""Absurd and malformed input to a real `stemd serve`: a stable error code each, and the daemon goes on."""

import math
import socket
import struct

import pytest

from daemon_fixtures import TcpClient
from stemd import osc


def udp_ask(port: int, packet: bytes, timeout: float = 5.0) -> osc.Message:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(packet, ("127.0.0.1", port))
        return osc.decode(s.recvfrom(65536)[0])


def blob_claiming(size: int) -> bytes:
    return b"/stemd/generate\0" + b",ssb\0\0\0\0" + b"x\0\0\0" + b"continuation\0\0\0\0" + struct.pack(">i", size)


@pytest.mark.parametrize("packet, code", [
    (osc.encode_message("/stemd/generate", "r", "bars", 0), "out_of_range"),
    (osc.encode_message("/stemd/generate", "r", "bars", 1_000_000), "out_of_range"),
    (osc.encode_message("/stemd/generate", "r", "bars", 1e6), "wrong_type"),
    (osc.encode_message("/stemd/generate", "r", "bpm", math.nan), "out_of_range"),
    (osc.encode_message("/stemd/generate", "r", "bpm", math.inf), "out_of_range"),
    (osc.encode_message("/stemd/generate", "r", "sample_rate", 7), "out_of_range"),
    (osc.encode_message("/stemd/generate", "r", "channels", 3), "out_of_range"),
    (osc.encode_message("/stemd/generate", "r", "meter", "4/5"), "out_of_range"),
    (osc.encode_message("/stemd/generate", "r", "priority", "urgent"), "out_of_range"),
    (osc.encode_message("/stemd/generate", "r", "colour", "red"), "unknown_key"),
    (osc.encode_message("/stemd/generate", "r", "prompt", 5), "wrong_type"),
    (osc.encode_message("/stemd/generate", "r", "bars"), "bad_arguments"),
    (osc.encode_message("/stemd/generate"), "bad_arguments"),
    (osc.encode_message("/stemd/generate", "no spaces"), "bad_arguments"),
    (osc.encode_message("/stemd/generate", "r", "bars", 256, "bpm", 20, "variations", 16, "sample_rate", 192000),
     "too_large"),
    (osc.encode_message("/stemd/generate", "r", "continuation", b"\0\0\0"), "bad_arguments"),
    (osc.encode_message("/stemd/generate", "r", "continuation_path", "/nonexistent/x.wav"), "bad_arguments"),
    (osc.encode_message("/stemd/cancel", "nobody"), "unknown_request"),
    (osc.encode_message("/stemd/cancel"), "bad_arguments"),
    (osc.encode_message("/stemd/status", "nobody"), "unknown_request"),
    (osc.encode_message("/stemd/launch_missiles"), "unknown_address"),
    (blob_claiming(2 ** 31 - 1), "bad_packet"),
    (b"/stemd/ping\0" + b",z\0\0", "bad_packet"),
    (b"\xc0\xff\x00\x01", "bad_packet"),
])
def test_bad_requests_get_a_stable_error_code(daemon, packet, code):
    reply = udp_ask(daemon.port, packet)
    assert reply.address == "/stemd/error" and reply.args[1] == code, reply
    assert daemon.ping_udp().address == "/stemd/pong"


def test_a_two_gigabyte_frame_header_closes_that_connection_only(daemon):
    bad, good = TcpClient(daemon.port), TcpClient(daemon.port)
    bad.send_raw(struct.pack(">I", 2 ** 31) + b"/stemd/ping\0")
    error = bad.recv()
    assert (error.address, error.args[1]) == ("/stemd/error", "too_large")
    with pytest.raises(ConnectionError):
        bad.recv()
    good.send("/stemd/ping")
    assert good.recv().address == "/stemd/pong"


def test_bad_slip_escape_is_a_framing_error(daemon):
    client = TcpClient(daemon.port, slip=True)
    client.send_raw(b"\xc0/ste\xdb\x01\xc0")
    error = client.recv()
    assert (error.address, error.args[1]) == ("/stemd/error", "bad_framing")


def test_a_bad_packet_inside_good_framing_keeps_the_connection(daemon):
    client = TcpClient(daemon.port)
    client.send_raw(struct.pack(">I", 8) + b"/abc\0\0\0\0")  # fine framing, no type tags: unknown address
    assert client.recv().args[1] == "unknown_address"
    client.send_raw(struct.pack(">I", 5) + b"/abc\0")       # not a multiple of 4 bytes
    assert client.recv().args[1] == "bad_packet"
    client.send("/stemd/generate", "ok", "bars", 1)
    assert [m.address for m in client.until("/stemd/done")][-1] == "/stemd/done"


def test_continuation_path_outside_the_input_root_is_refused(start_daemon, tmp_path):
    daemon = start_daemon("--input-root", str(tmp_path / "inputs"))
    client = TcpClient(daemon.port)
    client.send("/stemd/generate", "esc", "continuation_path", "../../etc/passwd")
    error = client.until("/stemd/error", "esc")[-1]
    assert error.args[1] == "out_of_range" and "inside the daemon's --input-root" in error.args[2]
