"""Shared parts for the bridge's tests (no tests here): a stemd protocol peer, a JACK server, processes.

The peer is a small TCP server that speaks stemd's protocol (OSC 1.0 framing, /stemd/ping, /stemd/status,
/stemd/generate -> /stemd/chunk... /stemd/sidecar... /stemd/done) and makes its audio with the real click
engine through the real bar pipeline, its sidecars with stemd.sidecar. It stands in for the protocol, not for the daemon.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from stemd import osc, protocol
from stemd.framing import StreamDecoder, frame_length_prefixed


class ProtocolPeer:
    def __init__(self):
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen()
        self.port = self.server.getsockname()[1]
        self.requests: list[protocol.GenerateRequest] = []
        self.cancels: list[str] = []
        self._threads = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()

    def _serve(self, conn):
        from dataclasses import replace

        from stemd.daemon.takeio import spec_from_request
        from stemd.licenses import card as card_of
        from stemd.models.click import ClickEngine
        from stemd.models.pipeline import bar_chunks
        from stemd.sampling import DEFAULT_SAMPLING
        from stemd.sidecar import encode, take_sidecar

        decoder, engine = StreamDecoder(), ClickEngine()
        send = lambda addr, *a: conn.sendall(frame_length_prefixed(osc.encode_message(addr, *a)))  # noqa: E731
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                for packet in decoder.feed(data):
                    msg = osc.decode(packet)
                    if msg.address == protocol.PING:
                        send(protocol.PONG)
                    elif msg.address == protocol.STATUS:
                        send(protocol.STATUS_REPLY, "*", "idle", 0, "", 1, "click")
                    elif msg.address == protocol.MODELS:
                        card = card_of("click")
                        send(protocol.MODELS_REPLY, 1, "click", "click", 1, "cpu", "float32", 0, card["name"],
                             int(card["commercial"]), "")
                    elif msg.address == protocol.CANCEL:
                        self.cancels.append(msg.args[0])
                    elif msg.address == protocol.GENERATE:
                        req = protocol.GenerateRequest.from_args(msg.args)
                        self.requests.append(req)
                        if req.prompt == "fail please":
                            send(protocol.ERROR, req.request_id, "engine_error", "the engine fell over")
                            continue
                        send(protocol.ACCEPTED, req.request_id)
                        frames = 0
                        # the peer stands in for any model (a bridge may send temperature, steps ...): the click
                        # engine makes its audio from the request's grid alone, without the family-only keys
                        spec = replace(spec_from_request(req, engine), sampling=DEFAULT_SAMPLING, extra={})
                        for c in bar_chunks(engine, spec):
                            frames += c.audio.shape[-1]
                            for v in range(c.variations):
                                send(protocol.CHUNK, *protocol.Chunk(req.request_id, v, c.index, c.start_sample,
                                                                     c.sample_rate, req.channels,
                                                                     c.audio[v]).to_args())
                        for v in range(req.variations if req.prompt != "no sidecar please" else 0):
                            send(protocol.SIDECAR, req.request_id, v, encode(take_sidecar(
                                req, v, engine.info(), "click", file=f"peer-{req.request_id}-{v}.wav",
                                sample_rate=req.sample_rate, channels=req.channels, frames=frames, format="float32")))
                        send(protocol.DONE, req.request_id)

    def close(self):
        self.server.close()


@pytest.fixture
def peer():
    p = ProtocolPeer()
    yield p
    p.close()


class Processes:
    """Processes a test starts, each in its own process group, all stopped at the end."""

    def __init__(self, env=None):
        self.env = env if env is not None else dict(os.environ)
        self.procs: list[subprocess.Popen] = []

    def start(self, args, **kw) -> subprocess.Popen:
        kw.setdefault("env", self.env)
        p = subprocess.Popen(args, start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen, timeout: float = 10) -> None:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            self.stop(p, 5)


JACK_NAMES = [f"stemd-bridge-test-{i}" for i in range(3)]


def _jack_server_running(env) -> bool:
    return subprocess.run(["jack_wait", "-c"], env=env, capture_output=True, text=True).stdout.startswith("running")


@pytest.fixture
def jack():
    """A JACK dummy server (48 kHz, 256 frames) under a name no running server has; yields a Processes on
    its env, and stops the server last, with SIGTERM, so that it leaves JACK's server registry.

    Names are reused from a short list: JACK keeps at most 8 servers in its registry and frees the entry
    of a server that died without cleaning up only when a server of the same name starts again, so
    ever-new names would fill it after a few killed runs ("Too many servers already active").

    The client timeout (-t 2000 ms) gives a slow first cycle of headless Ardour on a loaded 2-core machine
    room, and still lets the server notice killed clients and stop within a few seconds."""
    if not (shutil.which("jackd") and shutil.which("jack_wait")):
        pytest.skip("JACK (Debian jackd2) is not installed")
    procs = server = None
    for name in JACK_NAMES:
        procs = Processes(dict(os.environ, JACK_DEFAULT_SERVER=name))
        if _jack_server_running(procs.env):
            continue  # another test run's server
        server = procs.start(["jackd", "-n", name, "-t", "2000", "-d", "dummy", "-r", "48000", "-p", "256"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        waited = subprocess.run(["jack_wait", "-w", "-t", "10"], env=procs.env, capture_output=True)
        time.sleep(0.3)  # a jackd that lost the name to another run's server exits within milliseconds
        if server.poll() is None and waited.returncode == 0:
            break  # ours is the server under this name (a run that started one at the same time loses)
        procs.stop(server)
        server = None
    if server is None:
        pytest.skip(f"no JACK dummy server could start under {', '.join(JACK_NAMES)}")
    try:
        yield procs
    finally:
        procs.procs.remove(server)
        procs.stop_all()
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


def json_lines(proc: subprocess.Popen, seconds: float, first_only: bool = False) -> list[dict]:
    """The JSON lines (``--print-transport``) a process prints within ``seconds``."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    lines, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        if sel.select(timeout=0.1):
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("{"):
                lines.append(json.loads(line))
                if first_only:
                    break
    return lines


#: A JACK timebase master (``python -c TIMEBASE_MASTER BPM``): 4/4 at BPM, BBT from the transport frame on
#: every cycle, so jack_midi_clock sends clock at BPM and a Song Position Pointer on every start and locate.
#: Reads ``play``, ``stop``, ``locate FRAME`` lines on stdin and answers each with ``ok ...``; ``frames`` answers
#: ``ok frames N``: JACK's frame time now (the frames its cycles have run, rolling or not; 32 bits).
TIMEBASE_MASTER = """
import ctypes, ctypes.util, sys
BPM, BEATS_PER_BAR, TICKS = float(sys.argv[1]), 4, 1920.0
jack = ctypes.CDLL(ctypes.util.find_library("jack") or "libjack.so.0")

class Position(ctypes.Structure):  # jack_position_t, up to beats_per_minute
    _fields_ = [("unique_1", ctypes.c_uint64), ("usecs", ctypes.c_uint64), ("frame_rate", ctypes.c_uint32),
                ("frame", ctypes.c_uint32), ("valid", ctypes.c_int32), ("bar", ctypes.c_int32),
                ("beat", ctypes.c_int32), ("tick", ctypes.c_int32), ("bar_start_tick", ctypes.c_double),
                ("beats_per_bar", ctypes.c_float), ("beat_type", ctypes.c_float),
                ("ticks_per_beat", ctypes.c_double), ("beats_per_minute", ctypes.c_double)]

CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_uint32, ctypes.POINTER(Position), ctypes.c_int,
                            ctypes.c_void_p)

def timebase(state, nframes, pos, new_pos, arg):
    p = pos.contents
    beats = p.frame / p.frame_rate * BPM / 60.0
    bar, in_bar = divmod(beats, BEATS_PER_BAR)
    p.valid = 0x10  # JackPositionBBT
    p.bar, p.beat, p.tick = int(bar) + 1, int(in_bar) + 1, int((in_bar - int(in_bar)) * TICKS)
    p.bar_start_tick = bar * BEATS_PER_BAR * TICKS
    p.beats_per_bar, p.beat_type, p.ticks_per_beat, p.beats_per_minute = BEATS_PER_BAR, 4.0, TICKS, BPM

callback = CALLBACK(timebase)
jack.jack_client_open.restype = ctypes.c_void_p
jack.jack_client_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p]
client = jack.jack_client_open(b"stemd-timebase", 0, None)
if not client:
    sys.exit("no JACK server")
jack.jack_set_timebase_callback.argtypes = [ctypes.c_void_p, ctypes.c_int, CALLBACK, ctypes.c_void_p]
jack.jack_activate.argtypes = jack.jack_transport_start.argtypes = jack.jack_transport_stop.argtypes = [ctypes.c_void_p]
jack.jack_transport_locate.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
jack.jack_frame_time.argtypes = [ctypes.c_void_p]
jack.jack_frame_time.restype = ctypes.c_uint32
if jack.jack_set_timebase_callback(client, 0, callback, None) != 0 or jack.jack_activate(client) != 0:
    sys.exit("cannot become the JACK timebase master")
print("ready", flush=True)
for line in sys.stdin:
    command = line.split()
    if command[:1] == ["play"]:
        jack.jack_transport_start(client)
    elif command[:1] == ["stop"]:
        jack.jack_transport_stop(client)
    elif command[:1] == ["locate"]:
        jack.jack_transport_locate(client, int(command[1]))
    elif command[:1] == ["frames"]:
        print("ok frames", jack.jack_frame_time(client), flush=True)
        continue
    print("ok", line.strip(), flush=True)
"""
