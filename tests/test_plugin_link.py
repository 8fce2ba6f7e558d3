"""The stemd plugin's network side (plugin_host/plugin/daemon_link.cpp) against real peers.

``build/plugin/stemd_link_probe_asan`` is the plugin's own DaemonLink (and its OSC codec and framing)
on the command line, built with AddressSanitizer and UBSan: it connects, asks for one take, and prints
every event as one JSON line. Here it talks to a real ``stemd serve --model click`` (a take at 97 BPM
3/4 checked bar by bar against stemd.timing.Grid), to no daemon at all (it says so and retries), and to
hostile peers (it drops the connection, says why, reconnects and does not crash). The codec's own
checks run in ``build/plugin/link_test`` (plugin_host/plugin/link_test.cpp).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import pytest

from stemd import osc
from stemd.framing import LengthPrefixDecoder, frame_length_prefixed
from stemd.timing import Grid

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_SRC = ROOT / "plugin_host" / "plugin"
PROBE = ROOT / "build" / "plugin" / "stemd_link_probe_asan"
LINK_TEST = ROOT / "build" / "plugin" / "link_test"
SLOW_RESOLVER = ROOT / "build" / "plugin" / "libstemd_slow_resolver.so"
ASAN_ENV = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0", "UBSAN_OPTIONS": "print_stacktrace=1"}

pytestmark = pytest.mark.skipif(not (shutil.which("make") and shutil.which("c++")),
                                reason="the link probe needs make and a C++ compiler (Debian: build-essential)")


def _make(target: str) -> None:
    proc = subprocess.run(["make", "-C", str(PLUGIN_SRC), "-f", "Makefile.link", target], capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0 and "fsanitize" in proc.stderr and "cannot find" in proc.stderr:
        pytest.skip("the compiler's AddressSanitizer runtime is missing (Debian: libasan8)")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def probe() -> Path:
    _make("asan")
    return PROBE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Probe:
    """The probe as a process; its JSON lines collected as they come."""

    def __init__(self, binary: Path, *args: str, env: Optional[dict] = None):
        self.proc = subprocess.Popen([str(binary), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env={**ASAN_ENV, **(env or {})})
        self.events: list[dict] = []
        self.stderr = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._errors = threading.Thread(target=self._read_stderr, daemon=True)
        self._errors.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.events.append(json.loads(line))

    def _read_stderr(self) -> None:
        self.stderr = self.proc.stderr.read()

    def wait_for(self, match: Callable[[dict], bool], timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in list(self.events):
                if match(event):
                    return event
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no such event; got {self.events}")

    def finish(self, timeout: float = 120.0) -> int:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the probe did not exit; events {self.events}")
        self._reader.join(10)
        self._errors.join(10)
        assert "AddressSanitizer" not in self.stderr and "runtime error" not in self.stderr, self.stderr[-4000:]
        return self.proc.returncode

    def peak_rss_kib(self) -> int:
        """The process's peak resident memory so far (VmHWM), while it runs."""
        with open(f"/proc/{self.proc.pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["event"] == kind]

    def states(self) -> list[str]:
        return [e["state"] for e in self.of("connection")]


def test_codec_framing_and_event_checks_pass_their_unit_test():
    _make("link_test")
    proc = subprocess.run([str(LINK_TEST)], capture_output=True, text=True, timeout=120, env=ASAN_ENV)
    assert proc.returncode == 0 and ", 0 failed" in proc.stdout, proc.stdout + proc.stderr


def test_a_two_bar_take_at_bar_3_in_97_bpm_3_4_streams_every_bar_at_its_sample(probe, start_daemon):
    daemon = start_daemon()
    p = Probe(probe, "--port", str(daemon.port), "--generate", "t1", "--prompt", "click", "--bars", "2",
              "--variations", "2", "--bpm", "97", "--meter", "3/4", "--start-bar", "2", "--sample-rate", "48000",
              "--seed", "7", "--seconds", "60")
    assert p.finish() == 0, (p.events, p.stderr[-2000:])
    kinds = [e["event"] for e in p.events]
    assert p.states()[:2] == ["connecting", "connected"] and p.states()[-1] == "stopped"
    assert p.of("models")[0]["rows"][0][:3] == ["click", "click", 1]
    assert kinds.index("accepted") < kinds.index("chunk")

    grid = Grid(97, "3/4")
    chunks = p.of("chunk")
    assert sorted((c["variation"], c["bar_index"]) for c in chunks) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for c in chunks:
        bar = 2 + c["bar_index"]  # bar 3 of the DAW is bar 2 from the origin
        assert c["start_sample"] == grid.bar_start_sample(bar, 48000), c
        assert c["frames"] == grid.bar_length_samples(bar, 48000), c
        assert (c["sample_rate"], c["channels"]) == (48000, 2)
        assert c["first_sound"] == 0 and c["peak"] > 0.1, c  # the click's downbeat is the bar's first sample
    assert chunks[0]["start_sample"] == 178144

    # per variation: its sidecar, exactly as the daemon wrote it beside the take, then the take
    for v in (0, 1):
        sidecar_at = next(i for i, e in enumerate(p.events) if e["event"] == "sidecar" and e["variation"] == v)
        take_at = next(i for i, e in enumerate(p.events) if e["event"] == "take" and e["variation"] == v)
        assert sidecar_at < take_at
        text, path = p.events[sidecar_at]["json"], Path(p.events[take_at]["path"])
        assert path.is_file() and path.with_suffix(".json").read_text() == text
        card = json.loads(text)
        assert (card["bars"], card["meter"], card["seed"], card["start_bar"]) == (2, "3/4", 7, 2), card
    assert kinds[-3:] == ["done", "connection", "exit"]  # done, then the stop
    assert not p.of("error")


def test_a_request_sent_while_connecting_goes_out_once_connected(probe, start_daemon):
    daemon = start_daemon()
    p = Probe(probe, "--port", str(daemon.port), "--generate", "early", "--early", "1", "--bars", "1",
              "--bpm", "97", "--meter", "3/4", "--start-bar", "4", "--seconds", "60")
    assert p.finish() == 0, (p.events, p.stderr[-2000:])
    assert p.of("chunk")[0]["start_sample"] == Grid(97, "3/4").bar_start_sample(4, 48000)
    assert p.of("done")


def test_a_cancel_ends_the_take_with_cancelled_and_no_take(probe, start_daemon):
    daemon = start_daemon("--pace", "0.5")  # half a second a bar: the cancel arrives mid-take
    p = Probe(probe, "--port", str(daemon.port), "--generate", "c1", "--bars", "8", "--bpm", "97", "--meter",
              "3/4", "--cancel-after", "1", "--seconds", "60")
    assert p.finish() == 1, (p.events, p.stderr[-2000:])
    kinds = [e["event"] for e in p.events]
    assert "cancel_sent" in kinds and kinds.index("cancel_sent") < kinds.index("cancelled"), kinds
    assert len(p.of("chunk")) < 8 and not p.of("take") and not p.of("done") and not p.of("error"), kinds


def test_a_bar_of_18_mib_arrives_whole(probe, start_daemon):
    # 20 BPM 8/4 at 96 kHz: one bar is 24 s, 2,304,000 stereo frames, an 18 MiB /stemd/chunk
    daemon = start_daemon()
    p = Probe(probe, "--port", str(daemon.port), "--generate", "big", "--bars", "1", "--bpm", "20", "--meter",
              "8/4", "--sample-rate", "96000", "--seconds", "120")
    assert p.finish(timeout=180) == 0, (p.events, p.stderr[-2000:])
    chunk = p.of("chunk")[0]
    assert chunk["frames"] == Grid(20, "8/4").bar_length_samples(0, 96000) == 2_304_000
    assert chunk["peak"] > 0.1 and p.of("done")


def test_an_absent_daemon_is_reported_and_retried_until_it_comes(probe, start_daemon):
    port = _free_port()
    p = Probe(probe, "--port", str(port), "--generate", "late", "--bars", "1", "--bpm", "137", "--meter", "7/8",
              "--seconds", "90")
    p.wait_for(lambda e: e.get("state") == "unreachable" and "retrying in 1000 ms" in e["message"])
    first = p.of("connection")[1]
    assert first["state"] == "unreachable" and "refused" in first["message"].lower(), first
    assert "retrying in 500 ms" in first["message"]
    start_daemon("--port", str(port))  # the daemon comes up on the port the link keeps trying
    assert p.finish() == 0, (p.events, p.stderr[-2000:])
    assert "connected" in p.states()
    chunk = p.of("chunk")[0]
    assert chunk["start_sample"] == 0 and chunk["frames"] == Grid(137, "7/8").bar_length_samples(0, 48000)
    assert p.of("done")


def test_the_token_is_sent_as_hello_and_a_wrong_one_is_reported(probe, start_daemon):
    token = "plugin-token-0123456789"
    daemon = start_daemon(env={"STEMD_TOKEN": token})
    good = Probe(probe, "--port", str(daemon.port), "--token", token, "--generate", "tok", "--bars", "1",
                 "--bpm", "275/2", "--meter", "7/8", "--seconds", "60")
    assert good.finish() == 0, (good.events, good.stderr[-2000:])
    assert good.of("chunk")[0]["frames"] == Grid("275/2", "7/8").bar_length_samples(0, 48000)

    wrong = Probe(probe, "--port", str(daemon.port), "--token", "not-the-token-at-all", "--seconds", "3")
    assert wrong.finish() == 0, wrong.stderr[-2000:]
    refused = wrong.of("error")
    assert refused and refused[0]["id"] == "" and refused[0]["code"] == "unauthorized", wrong.events
    assert "dropped" in wrong.states() and not wrong.of("models")


# --- hostile peers ---------------------------------------------------------------------------------

def _models_reply() -> bytes:
    return frame_length_prefixed(osc.encode_message(
        "/stemd/models/reply", 1, "click", "click", 1, "cpu", "float32", 0, "MIT (stemd)", 1, ""))


def _read_generate(conn: socket.socket) -> Optional[str]:
    """The id of the first /stemd/generate the link sends on `conn` (None if it closes first)."""
    decoder = LengthPrefixDecoder()
    conn.settimeout(20)
    while True:
        data = conn.recv(65536)
        if not data:
            return None
        for packet in decoder.feed(data):
            message = osc.decode(packet)
            if message.address == "/stemd/generate":
                return message.args[0]


def _lying_chunk(conn: socket.socket) -> None:
    conn.sendall(_models_reply())
    rid = _read_generate(conn)
    conn.sendall(frame_length_prefixed(osc.encode_message("/stemd/accepted", rid)))
    # 801 bytes of audio for a stereo float32 bar: not frames * channels * 4
    conn.sendall(frame_length_prefixed(osc.encode_message("/stemd/chunk", rid, 0, 0, 0, 48000, 2, bytes(801))))


def _blob_past_the_end(conn: socket.socket) -> None:
    conn.sendall(_models_reply())
    rid = _read_generate(conn)
    packet = bytearray(osc.encode_message("/stemd/chunk", rid, 0, 0, 0, 48000, 2, bytes(800)))
    packet[-804:-800] = struct.pack(">i", 1 << 20)  # the blob says 1 MiB; 800 bytes follow
    conn.sendall(frame_length_prefixed(bytes(packet)))


# /stemd/pong padded with "!" after its address's NUL: OSC 1.0 pads with NUL only
NON_NUL_PADDING = b"/stemd/pong\0,\0!!"


def test_the_daemon_refuses_the_padding_the_plugin_refuses():
    with pytest.raises(osc.OSCDecodeError, match="padded with bytes other than NUL"):
        osc.decode(NON_NUL_PADDING)
    assert osc.decode(NON_NUL_PADDING.replace(b"!", b"\0")).address == "/stemd/pong"


HOSTILE = {
    # name: (what the peer sends, whether the probe asks for a take, what the drop says)
    "oversized size header": (lambda c: c.sendall(struct.pack(">I", 0x7FFFFFFF) + b"\0" * 64), False,
                              "over the limit"),
    "negative size header": (lambda c: c.sendall(struct.pack(">i", -8)), False, "negative packet size"),
    "truncated packet": (lambda c: (c.sendall(struct.pack(">I", 4096) + _models_reply()[4:]),
                                    c.shutdown(socket.SHUT_WR)), False, "closed the connection inside a packet"),
    "malformed packet": (lambda c: c.sendall(frame_length_prefixed(b"/stemd/chunk\0\0\0\0,sb\0xx\0\0")), False,
                         "malformed packet"),
    "chunk whose blob size lies": (_lying_chunk, True, "not a whole number of float32 frames"),
    "blob past the end": (_blob_past_the_end, True, "blob size"),
    "random bytes": (lambda c: c.sendall(struct.pack(">I", 2000) + random.Random(5).randbytes(2000)), False,
                     "malformed packet"),
    "padding that is not NUL": (lambda c: c.sendall(_models_reply() + frame_length_prefixed(NON_NUL_PADDING)), False,
                                "padding holds bytes other than NUL"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_peer_drops_the_connection_not_the_probe(probe, name):
    send, asks, reason = HOSTILE[name]
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(30)
    connections: list[socket.socket] = []

    def serve() -> None:
        try:
            for _ in range(2):  # the hostile connection, then the reconnection (answered with nothing)
                conn, _ = server.accept()
                connections.append(conn)
                if len(connections) == 1:
                    send(conn)
        except OSError:
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    args = ["--port", str(server.getsockname()[1]), "--seconds", "20" if asks else "6"]
    if asks:
        args += ["--generate", "h1", "--bars", "2", "--bpm", "97", "--meter", "3/4", "--start-bar", "2"]
    p = Probe(probe, *args)
    try:
        status = p.finish()
    finally:
        server.close()
        for conn in connections:
            conn.close()
    dropped = next((e for e in p.of("connection") if e["state"] == "dropped"), None)
    assert dropped, p.events
    assert reason in dropped["message"] and "retrying in" in dropped["message"], dropped
    if asks:  # the open request ends with connection_lost, and the probe exits normally
        errors = p.of("error")
        assert errors and errors[0]["id"] == "h1" and errors[0]["code"] == "connection_lost", p.events
        assert status == 1
    else:  # it reconnected to the same peer after its back-off, and stopped when asked
        assert p.states().count("connected") == 2 and p.states()[-1] == "stopped", p.events
        assert status == 0


# --- memory and stop() --------------------------------------------------------------------------------

def test_a_peer_that_announces_64_mib_and_hangs_up_costs_the_link_no_memory(probe):
    # Each connection: a size header at the cap (64 MiB + 64 KiB), 10 bytes of it, then the peer hangs up.
    # The link's buffer follows the bytes that came; before, each connection made a 64 MiB buffer
    # (301 MiB peak RSS over 5 connections under ASan, whose quarantine keeps freed blocks).
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(30)
    accepted: list[int] = []

    def serve() -> None:
        try:
            while True:
                conn, _ = server.accept()
                with conn:
                    conn.sendall(struct.pack(">I", 64 * 1024 * 1024 + 64 * 1024) + b"x" * 10)
                    accepted.append(1)
                    time.sleep(0.1)
        except OSError:
            pass

    threading.Thread(target=serve, daemon=True).start()
    p = Probe(probe, "--port", str(server.getsockname()[1]), "--seconds", "30")
    try:
        p.wait_for(lambda e: len([d for d in p.of("connection") if d["state"] == "dropped"]) >= 4)
        peak_kib = p.peak_rss_kib()
        p.proc.terminate()
        p.proc.wait(30)
    finally:
        server.close()
    assert len(accepted) >= 4
    assert peak_kib < 48 * 1024, f"peak RSS {peak_kib} KiB after {len(accepted)} connections"


def _slow_resolver() -> dict:
    _make("slow_resolver")
    # plugin_host/plugin/slow_resolver.c in front of the C library's resolver; ASan accepts a library
    # loaded before its runtime only when told to
    return {"LD_PRELOAD": str(SLOW_RESOLVER),
            "ASAN_OPTIONS": ASAN_ENV["ASAN_OPTIONS"] + ":verify_asan_link_order=0"}


def test_stop_returns_while_the_resolver_hangs(probe, tmp_path):
    # hang.stemd.test: the resolver answers after 60 s. The link gives up waiting after its connect timeout
    # (3 s), retries on the same lookup, and stop() at 6 s returns at once instead of after the resolver.
    lookups = tmp_path / "lookups.txt"
    started = time.monotonic()
    p = Probe(probe, "--host", "hang.stemd.test", "--port", "9", "--seconds", "6",
              env={**_slow_resolver(), "STEMD_RESOLVER_LOG": str(lookups)})
    assert p.finish(timeout=40) == 0, (p.events, p.stderr[-2000:])
    assert time.monotonic() - started < 40
    assert p.of("exit")[0]["stop_ms"] < 2000, p.events
    unreachable = next(e for e in p.of("connection") if e["state"] == "unreachable")
    assert "looking up hang.stemd.test took over 3000 ms" in unreachable["message"], p.events
    assert p.states().count("connecting") == 2 and p.states()[-1] == "stopped", p.events
    assert lookups.read_text().split() == ["hang.stemd.test"]  # one lookup, waited on twice


def test_a_host_name_is_looked_up_and_the_take_streams(probe, start_daemon, tmp_path):
    # slow.stemd.test: 1.5 s to answer 127.0.0.1; the take at 137 BPM 7/8 then streams as from an address
    daemon = start_daemon()
    lookups = tmp_path / "lookups.txt"
    p = Probe(probe, "--host", "slow.stemd.test", "--port", str(daemon.port), "--generate", "named", "--bars", "1",
              "--bpm", "137", "--meter", "7/8", "--start-bar", "3", "--seconds", "60",
              env={**_slow_resolver(), "STEMD_RESOLVER_LOG": str(lookups)})
    assert p.finish() == 0, (p.events, p.stderr[-2000:])
    assert p.states()[:2] == ["connecting", "connected"], p.events
    assert p.of("chunk")[0]["start_sample"] == Grid(137, "7/8").bar_start_sample(3, 48000)
    assert lookups.read_text().split() == ["slow.stemd.test"]
