"""Cheap attacks on a real ``stemd serve`` process on loopback, one test per item of the robustness list
(docs/protocol.md, "Robustness"), and a soak test that runs the whole mix at once while a normal client
completes takes. The daemon runs the click engine: these are tests of the daemon, not of a model.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from daemon_fixtures import STEMD, TcpClient
from stemd import osc
from stemd.framing import frame_length_prefixed

HOST = "127.0.0.1"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for {pid}")


def daemon_pid(daemon) -> int:
    """The serve process itself (the fixture starts ``python -m stemd``, which is it)."""
    return daemon.proc.pid


def replies(sock: socket.socket, wait: float = 0.5) -> list:
    """Every datagram that arrives on ``sock`` within ``wait`` seconds of the last one."""
    out = []
    sock.settimeout(wait)
    while True:
        try:
            out.append(sock.recvfrom(65536)[0])
        except socket.timeout:
            return out


def udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((HOST, 0))
    return s


def ping_ms(daemon) -> float:
    t0 = time.monotonic()
    daemon.ping_udp(timeout=10)
    return (time.monotonic() - t0) * 1000


# 1 -----------------------------------------------------------------------------------------------
#: ``stemd serve`` that writes every datagram its UDP socket takes in or sends out to its log, as
#: ``udp-ledger: in|out HOST PORT`` (the line is written before the datagram is handled or sent)
UDP_LEDGER = """
import sys
from stemd.daemon import server

handle_datagram, sendto = server.Server.handle_datagram, server.Server.sendto

def logged_handle_datagram(self, data, addr):
    print("udp-ledger: in", addr[0], addr[1], file=sys.stderr, flush=True)
    handle_datagram(self, data, addr)

def logged_sendto(self, data, addr):
    print("udp-ledger: out", addr[0], addr[1], file=sys.stderr, flush=True)
    sendto(self, data, addr)

server.Server.handle_datagram, server.Server.sendto = logged_handle_datagram, logged_sendto
from stemd.cli import main

sys.exit(main(sys.argv[1:]))
"""


def udp_ledger(daemon) -> list[tuple[str, str, int]]:
    return [(way, host, int(port)) for way, host, port in
            (line.split()[1:4] for line in daemon.log.splitlines() if line.startswith("udp-ledger: "))]


def test_1_a_datagram_pointing_the_daemon_at_itself_or_at_another_stemd_is_not_answered(start_daemon, tmp_path):
    wrapper = tmp_path / "ledger_stemd.py"
    wrapper.write_text(UDP_LEDGER)
    a, b = (start_daemon(command=[STEMD[0], str(wrapper)]) for _ in range(2))
    with udp() as s:
        me = s.getsockname()
        for target in (a, b):
            for message in (osc.encode_message("/stemd/ping", "reply_port", target.port),
                            osc.encode_message("/stemd/nope", "reply_port", target.port),
                            osc.encode_message("/stemd/error", "", "bad_packet", "x")):   # a reply: never answered
                s.sendto(message, (HOST, target.port))
        # a to b and b to a: each answers the other's address, and a reply is never answered back
        s.sendto(osc.encode_message("/stemd/nope", "reply_port", b.port), (HOST, a.port))
        s.sendto(osc.encode_message("/stemd/nope", "reply_port", a.port), (HOST, b.port))
        assert replies(s) == []
        # a datagram from the daemon's own port on a loopback address (127.0.0.2: the daemon listens on
        # 127.0.0.1 only, so this socket can hold the port and hear what the daemon would answer)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as own:
            own.bind(("127.0.0.2", a.port))
            own.sendto(osc.encode_message("/stemd/ping"), (HOST, a.port))
            own.sendto(osc.encode_message("/stemd/nope"), (HOST, a.port))
            assert replies(own) == []
        for d in (a, b):  # still answering; and each pong's ledger line is written before it is sent
            s.sendto(osc.encode_message("/stemd/ping"), (HOST, d.port))
            assert [osc.decode(r).address for r in replies(s)] == ["/stemd/pong"]
    for d, other in ((a, b), (b, a)):
        ledger = udp_ledger(d)
        sent_to_self = [e for e in ledger if e[0] == "out" and e[2] == d.port]
        assert sent_to_self == [], f"{d.port} sent to its own port: {sent_to_self}"
        heard_from_self = [e for e in ledger if e[0] == "in" and e[2] == d.port]
        assert heard_from_self == ([("in", "127.0.0.2", d.port)] * 2 if d is a else []), heard_from_self
        # what each daemon sent: the one error to the other daemon (as told), and the pong to the test
        assert [e for e in ledger if e[0] == "out"] == [("out", HOST, other.port), ("out", HOST, me[1])], ledger
    before = [cpu_seconds(daemon_pid(d)) for d in (a, b)]
    time.sleep(1.0)
    spent = [cpu_seconds(daemon_pid(d)) - t for d, t in zip((a, b), before)]
    assert all(x < 0.3 for x in spent), f"CPU seconds in 1 s of quiet: {spent} (answering itself?)"


# 2 -----------------------------------------------------------------------------------------------
def test_2_a_bundle_of_bad_messages_draws_one_error_and_errors_are_rate_limited_per_host(start_daemon):
    daemon = start_daemon()
    bad = [osc.Message(f"/nope/{i}") for i in range(300)]
    bundle = osc.encode(osc.Bundle(1, tuple(bad)))
    with udp() as s:
        s.sendto(bundle, (HOST, daemon.port))
        got = replies(s)
        assert len(got) == 1 and sum(map(len, got)) <= 4 * len(bundle)
        assert osc.decode(got[0]).args[1] == "unknown_address"
        for _ in range(200):                           # 200 bad datagrams at once
            s.sendto(osc.encode_message("/nope"), (HOST, daemon.port))
        burst = replies(s)
        assert 0 < len(burst) <= 60, len(burst)        # a burst of 40, then 20 per second
    client = TcpClient(daemon.port)                    # over TCP: a few errors, within 4x the packet's size
    client.send_raw(frame_length_prefixed(bundle))
    client.send("/stemd/ping")
    got = []
    while not got or got[-1].address != "/stemd/pong":
        got.append(client.recv())
    errors = got[:-1]
    assert 1 <= len(errors) <= 16 and sum(len(osc.encode(m)) for m in errors) <= 4 * len(bundle)
    token = "t" * 24
    locked = start_daemon("--token", token)
    with udp() as s:
        s.sendto(osc.encode(osc.Bundle(1, tuple(osc.Message("/stemd/ping") for _ in range(100)))), (HOST, locked.port))
        s.sendto(b"\x00garbage", (HOST, locked.port))
        got = [osc.decode(d) for d in replies(s)]
        assert [m.args[1] for m in got] == ["unauthorized"] * len(got) and len(got) <= 2


# 3 -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, code", [
    (("bpm", "1e20000000"), "out_of_range"),
    (("bpm", "1e400"), "out_of_range"),
    (("meter", "9" * 4301 + "/4"), "out_of_range"),
    (("meter", "\u00b2/4"), "out_of_range"),                # a digit Python's isdigit takes and int() does not
    (("prompt", "x", "key", "A minor"), None),
])
def test_3_numeric_text_is_bounded_before_parsing_and_the_loop_stays_free(daemon, args, code):
    client = TcpClient(daemon.port)
    t0 = time.monotonic()
    client.send("/stemd/generate", "r3", *args)
    reply = client.until("/stemd/error" if code else "/stemd/done", "r3")[-1]
    if code:
        assert reply.args[1] == code and reply.args[1] != "internal"
    assert time.monotonic() - t0 < 5 and ping_ms(daemon) < 2000


def test_3_deep_arrays_lone_surrogates_and_nul_paths_get_typed_errors(daemon):
    nested = b"/stemd/generate\0" + osc._encode_string(",ss" + "[" * 3000 + "]" * 3000) + \
        osc._encode_string("r") + osc._encode_string("loop")
    # well-formed packets whose string values only an OSC 'c' (char) argument can carry: a lone surrogate
    # as the prompt, a NUL as the continuation path
    surrogate = (osc._encode_string("/stemd/generate") + osc._encode_string(",ssc") + osc._encode_string("rs")
                 + osc._encode_string("prompt") + struct.pack(">i", 0xD800))
    client = TcpClient(daemon.port)
    client.send_raw(frame_length_prefixed(nested))
    assert client.recv().args[1] == "bad_packet"
    client.send_raw(frame_length_prefixed(surrogate))
    error = client.recv()
    assert error.args[1] == "out_of_range" and "surrogate" in error.args[2]
    nul = (osc._encode_string("/stemd/generate") + osc._encode_string(",ssc") + osc._encode_string("nul")
           + osc._encode_string("continuation_path") + struct.pack(">i", 0))
    client.send_raw(frame_length_prefixed(nul))
    error = client.recv()
    assert error.args[1] == "out_of_range" and "NUL" in error.args[2]
    client.send("/stemd/generate", "long", "continuation_path", "x" * 5000)
    assert client.recv().args[1] == "out_of_range"
    assert "Traceback" not in daemon.log


# 4 -----------------------------------------------------------------------------------------------
def test_4_clients_that_leave_mid_packet_leave_no_buffers_behind(daemon):
    pid = daemon_pid(daemon)
    daemon.ping_udp()

    def round_of_leavers() -> float:
        for _ in range(4):                  # a packet that claims 60 MiB, 30 MiB of it sent, then gone
            with socket.create_connection((HOST, daemon.port)) as s:
                s.sendall(struct.pack(">i", 60 << 20) + b"/" + b"\0" * ((30 << 20) - 1))
                time.sleep(0.2)
        time.sleep(1.0)
        daemon.ping_udp()
        return rss_mib(pid)

    base = rss_mib(pid)
    first, second = round_of_leavers(), round_of_leavers()
    # kept buffers would pin 120 MiB a round; what stays is the allocator's own (reused by the next round)
    assert second - base < 100 and second - first < 40, f"RSS {base:.0f} -> {first:.0f} -> {second:.0f} MiB"


# 5 -----------------------------------------------------------------------------------------------
def test_5_a_packet_may_hold_only_so_many_elements(daemon):
    client = TcpClient(daemon.port)
    tags = "," + "[]" * 100_000                                  # 200 KB of type tags
    client.send_raw(frame_length_prefixed(osc._encode_string("/stemd/ping") + osc._encode_string(tags)))
    error = client.recv()
    assert error.args[1] == "bad_packet" and "4096" in error.args[2]
    bundle = osc.encode(osc.Bundle(1, tuple(osc.Message("/nope") for _ in range(5000))))
    client.send_raw(frame_length_prefixed(bundle))
    assert client.recv().args[1] == "bad_packet"
    assert ping_ms(daemon) < 2000


# 6 -----------------------------------------------------------------------------------------------
def test_6_every_string_key_is_bounded(daemon):
    client = TcpClient(daemon.port)
    pid = daemon_pid(daemon)
    peak = rss_mib(pid, "VmHWM")
    client.send("/stemd/generate", "k6", "key", "A" * (16 << 20))
    error = client.until("/stemd/error", "k6")[-1]
    assert error.args[1] == "out_of_range" and "key is over 64 characters" in error.args[2]
    assert rss_mib(pid, "VmHWM") - peak < 200           # the packet itself (16 MiB), not gigabytes


# 7 -----------------------------------------------------------------------------------------------
def test_7_two_daemons_on_one_out_folder_lose_no_take_and_pair_every_file(start_daemon, tmp_path):
    a = start_daemon()
    b = start_daemon()            # (same tmp_path: the same --out)
    assert a.out == b.out

    def ask(daemon, tag):
        client = TcpClient(daemon.port)
        for i in range(12):
            client.send("/stemd/generate", f"{tag}{i}", "bars", 1, "prompt", "same words", "variations", 2)
        done = 0
        while done < 12:
            done += client.recv(timeout=60).address == "/stemd/done"

    threads = [threading.Thread(target=ask, args=(d, tag)) for d, tag in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    wavs = sorted(a.out.glob("*.wav"))
    assert len(wavs) == 48, [w.name for w in wavs]
    ids = set()
    for wav in wavs:
        meta = json.loads(wav.with_suffix(".json").read_text())
        assert meta["file"] == wav.name
        ids.add((meta["request"]["request_id"], meta["variation"]))
    assert len(ids) == 48
    assert not list(a.out.glob("*.partial")) and not list(a.out.glob(".*.claim"))


# 8 -----------------------------------------------------------------------------------------------
def test_8_silent_connections_time_out_and_do_not_lock_others_out(start_daemon):
    daemon = start_daemon("--max-clients", "4")
    silent = [socket.create_connection((HOST, daemon.port)) for _ in range(12)]
    talker = TcpClient(daemon.port)
    talker.send("/stemd/ping")
    assert talker.recv().address == "/stemd/pong"            # 12 silent ones do not count
    time.sleep(6.0)
    for s in silent:
        s.settimeout(2)
        assert s.recv(100) == b""                           # closed by the daemon
        s.close()
    token = "k" * 20
    locked = start_daemon("--token", token)
    before = TcpClient(locked.port)
    before.send_raw(frame_length_prefixed(osc.encode_message("/stemd/hello", "x" * (1 << 20))))
    assert before.recv().args[1] in ("too_large", "unauthorized")   # small packets only before the token


# 9 -----------------------------------------------------------------------------------------------
def test_9_continuation_paths_only_under_the_input_root_with_one_answer_for_absent_and_forbidden(start_daemon,
                                                                                                  tmp_path):
    plain = start_daemon()
    client = TcpClient(plain.port)
    client.send("/stemd/generate", "p0", "continuation_path", "/etc/passwd")
    error = client.until("/stemd/error", "p0")[-1]
    assert error.args[1] == "bad_arguments" and "--input-root" in error.args[2]
    root = tmp_path / "inputs"
    root.mkdir()
    big = root / "huge.wav"
    with open(big, "wb") as f:
        f.truncate(300 << 20)                               # sparse: 300 MiB on paper
    daemon = start_daemon("--input-root", str(root))
    client = TcpClient(daemon.port)
    answers = []
    for rid, path in (("p1", "/etc/passwd"), ("p2", str(root / "missing.wav")), ("p3", "../../etc/passwd")):
        client.send("/stemd/generate", rid, "continuation_path", path)
        answers.append(tuple(client.until("/stemd/error", rid)[-1].args[1:]))
    assert len(set(answers)) == 1 and answers[0][0] == "out_of_range"
    client.send("/stemd/generate", "p4", "continuation_path", str(big))
    assert client.until("/stemd/error", "p4")[-1].args[1] == "too_large"


# 10 ----------------------------------------------------------------------------------------------
def test_10_serve_removes_what_a_killed_daemon_left_and_nothing_else(tmp_path):
    out = tmp_path / "takes"
    out.mkdir()
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = gone.pid
    (out / f"drums_bar001_take01.wav.{dead}-0123abcd.partial").write_bytes(b"half")
    (out / "drums_bar001_take02.json").write_text("{}")     # the sidecar of a take that never got its audio
    (out / ".drums_bar001_take02.claim").write_text(f"{dead}\ndrums_bar001_take02.json\ndrums_bar001_take02.wav")
    (out / "kept_bar001_take01.wav").write_bytes(b"RIFF")
    (out / "kept_bar001_take01.json").write_text("{}")
    live = out / f"other_bar001_take01.wav.{os.getpid()}-0123abcd.partial"   # a writer still running
    live.write_bytes(b"busy")
    from daemon_fixtures import Daemon

    daemon = Daemon(tmp_path)
    try:
        daemon.wait_log("removed 3 leftovers")
        names = sorted(p.name for p in out.iterdir() if not p.name.startswith(".stemd-write-test"))
        assert names == sorted(["kept_bar001_take01.wav", "kept_bar001_take01.json", live.name])
    finally:
        daemon.stop()


# 11 ----------------------------------------------------------------------------------------------
def test_11_a_long_take_streams_to_disk_and_the_default_take_limit_refuses_750_mib(start_daemon):
    daemon = start_daemon("--max-take-mb", "1024")
    pid = daemon_pid(daemon)
    daemon.ping_udp()
    base = rss_mib(pid, "VmHWM")
    client = TcpClient(daemon.port)
    # 96 bars at 120 BPM, 96 kHz stereo, 2 variations: 281 MiB of audio (141 MiB a file); read and dropped here
    client.send("/stemd/generate", "long", "bars", 96, "sample_rate", 96000, "variations", 2, "prompt", "long")
    client.until("/stemd/done", "long", timeout=240)
    grew = rss_mib(pid, "VmHWM") - base
    take = next(daemon.out.glob("long_bar001_take01_v1.wav"))
    assert take.stat().st_size > 140 << 20 and grew < 100, f"peak RSS grew {grew:.0f} MiB for a 281 MiB take"
    default = start_daemon()
    client = TcpClient(default.port)
    client.send("/stemd/generate", "big", "bars", 256, "sample_rate", 192000)
    assert client.until("/stemd/error", "big")[-1].args[1] == "too_large"


# 12 ----------------------------------------------------------------------------------------------
def test_12_a_client_that_stops_reading_below_its_limit_is_dropped_after_a_while(start_daemon):
    daemon = start_daemon("--stall-seconds", "2", "--max-take-mb", "1024")
    stalled = TcpClient(daemon.port)
    stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # and never reads
    stalled.send("/stemd/generate", "slow", "bars", 8, "variations", 2)   # 12 MiB: under its 64 MiB limit
    daemon.wait_log("took none of its", timeout=30)
    other = TcpClient(daemon.port)
    other.send("/stemd/generate", "fine", "bars", 1)
    assert other.until("/stemd/done", "fine")[-1].address == "/stemd/done"


# 13 ----------------------------------------------------------------------------------------------
def test_13_the_smaller_ones(start_daemon, tmp_path):
    daemon = start_daemon("--max-take-mb", "4096")
    client = TcpClient(daemon.port)
    client.send("/stemd/generate", "bar", "bars", 1, "bpm", 20, "meter", "64/4", "sample_rate", 192000)
    error = client.until("/stemd/error", "bar")[-1]
    assert error.args[1] == "too_large" and "/stemd/chunk" in error.args[2]
    client.send("/stemd/generate", "nl\n", "bars", 1)
    assert client.recv().args[1] == "bad_arguments"
    client.send("/stemd/generate", "st", "stem", "drums\n")
    assert client.recv().args[1] == "out_of_range"
    with udp() as s:                                        # an error about a huge value still fits a datagram
        s.sendto(osc.encode_message("/stemd/generate", "u", "prompt", "p" * 60000), (HOST, daemon.port))
        got = replies(s)
        assert len(got) == 1 and osc.decode(got[0]).args[1] == "out_of_range"
    short = subprocess.run(STEMD + ["serve", "--model", "click", "--port", "0", "--token", "short",
                                    "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=60)
    assert short.returncode == 2 and "at least 16 characters" in short.stderr
    not_a_folder = tmp_path / "a-file"          # (a folder under a file: unwritable even for root)
    not_a_folder.write_text("")
    ro = subprocess.run(STEMD + ["serve", "--model", "click", "--port", "0", "--out", str(not_a_folder / "t")],
                        capture_output=True, text=True, timeout=60)
    assert ro.returncode == 2 and "Traceback" not in ro.stderr and "cannot write takes" in ro.stderr


def test_13_tokens_from_a_file_and_wrong_guesses_throttled(start_daemon, tmp_path):
    token = "f" * 32
    (tmp_path / "token").write_text(token + "\n")
    daemon = start_daemon("--token-file", str(tmp_path / "token"))
    assert token not in " ".join(daemon.args)
    answers = []
    for i in range(8):                                   # eight wrong guesses in a row from this host
        guess = TcpClient(daemon.port)
        guess.send("/stemd/hello", f"guess-{i:02d}-xxxxxxxxxxxx")
        try:
            answers.append(guess.recv().args[1])
        except ConnectionError:
            answers.append("closed")
    assert answers[:5] == ["unauthorized"] * 5 and "closed" in answers[5:], answers   # throttled: no answer
    assert "too many wrong tokens" in daemon.wait_log("too many wrong tokens")
    right = TcpClient(daemon.port)                       # the right token is checked and let in at once
    right.send("/stemd/hello", token)
    assert right.recv().address == "/stemd/pong"


# the soak --------------------------------------------------------------------------------------------
def test_soak_the_whole_mix_at_once_while_a_normal_client_completes_takes(start_daemon, capsys):
    daemon = start_daemon("--stall-seconds", "3")
    pid = daemon_pid(daemon)
    stop = threading.Event()
    sent = {"datagrams": 0, "tcp": 0}

    def datagrams():
        import random

        rng = random.Random(7)
        with udp() as s:
            while not stop.is_set():
                kind = rng.randrange(6)
                if kind == 0:
                    data = rng.randbytes(rng.randrange(1, 200))
                elif kind == 1:
                    data = osc.encode_message("/stemd/ping", "reply_port", daemon.port)
                elif kind == 2:
                    data = osc.encode(osc.Bundle(1, tuple(osc.Message("/x") for _ in range(100))))
                elif kind == 3:
                    data = osc.encode_message("/stemd/generate", "f", "bpm", "1e20000000")
                elif kind == 4:
                    data = osc.encode_message("/stemd/error", "", "x", "y")
                else:
                    data = osc.encode_message("/stemd/generate", "g", "key", "k" * 60000)
                s.sendto(data, (HOST, daemon.port))
                sent["datagrams"] += 1
                time.sleep(0.001)         # about 1000 a second per thread: bounded, as the soak is

    def connections():
        held = []
        while not stop.is_set():
            try:
                s = socket.create_connection((HOST, daemon.port), timeout=2)
                if sent["tcp"] % 3 == 0:
                    s.sendall(struct.pack(">i", 8 << 20) + b"/" * (1 << 20))    # a partial packet, then gone
                    s.close()
                else:
                    held.append(s)                                               # silent
                sent["tcp"] += 1
            except OSError:
                pass
            time.sleep(0.02)
            if len(held) > 100:
                for h in held[:50]:
                    h.close()
                del held[:50]
        for h in held:
            h.close()

    workers = [threading.Thread(target=datagrams) for _ in range(2)] + [threading.Thread(target=connections)]
    for w in workers:
        w.start()
    pings, takes = [], 0
    client = TcpClient(daemon.port)
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            client.send("/stemd/generate", f"n{takes}", "bars", 2, "bpm", 97, "meter", "7/8")
            messages = client.until("/stemd/done", f"n{takes}", timeout=30)
            assert sum(m.address == "/stemd/chunk" for m in messages) == 2
            takes += 1
            pings.append(ping_ms(daemon))
    finally:
        stop.set()
        for w in workers:
            w.join(10)
    peak = rss_mib(pid, "VmHWM")
    with capsys.disabled():
        print(f"\nsoak: {sent['datagrams']} hostile datagrams and {sent['tcp']} hostile TCP connections in 20 s; "
              f"a normal client completed {takes} takes (2 bars, 97 BPM 7/8); worst ping {max(pings):.0f} ms, "
              f"median {sorted(pings)[len(pings) // 2]:.0f} ms; daemon peak RSS {peak:.0f} MiB")
    assert takes >= 5 and max(pings) < 3000 and daemon.proc.poll() is None
