"""Shared parts for the bridge's tests (no tests here): a stemd protocol peer, a JACK server, processes.

The peer is a small TCP server that speaks stemd's protocol (OSC 1.0 framing, /stemd/ping, /stemd/status,
/stemd/generate -> /stemd/chunk... /stemd/done) and makes its audio with the real click engine through
the real bar pipeline. It stands in for the protocol, not for the daemon.
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
import uuid

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
        from stemd.daemon.jobs import spec_from_request
        from stemd.models.click import ClickEngine
        from stemd.models.pipeline import bar_chunks

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
                    elif msg.address == protocol.CANCEL:
                        self.cancels.append(msg.args[0])
                    elif msg.address == protocol.GENERATE:
                        req = protocol.GenerateRequest.from_args(msg.args)
                        self.requests.append(req)
                        if req.prompt == "fail please":
                            send(protocol.ERROR, req.request_id, "engine_error", "the engine fell over")
                            continue
                        send(protocol.ACCEPTED, req.request_id)
                        for c in bar_chunks(engine, spec_from_request(req, engine)):
                            for v in range(c.variations):
                                send(protocol.CHUNK, *protocol.Chunk(req.request_id, v, c.index, c.start_sample,
                                                                     c.sample_rate, req.channels,
                                                                     c.audio[v]).to_args())
                        send(protocol.DONE, req.request_id)

    def close(self):
        self.server.close()


@pytest.fixture
def peer():
    p = ProtocolPeer()
    yield p
    p.close()



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


@pytest.fixture
def jack():
    """A JACK dummy server (48 kHz, 256 frames) under a name of its own; yields a Processes on its env.

    The client timeout is long (-t 10000 ms): on a loaded 2-core machine a slow first cycle of headless
    Ardour would otherwise get it thrown off the server ("JACK HALTED") and its transport never moves."""
    if not (shutil.which("jackd") and shutil.which("jack_wait")):
        pytest.skip("JACK (Debian jackd2) is not installed")
    name = f"stemd-test-{uuid.uuid4().hex[:8]}"
    procs = Processes(dict(os.environ, JACK_DEFAULT_SERVER=name))
    try:
        procs.start(["jackd", "-n", name, "-t", "10000", "-d", "dummy", "-r", "48000", "-p", "256"], stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
        if subprocess.run(["jack_wait", "-w", "-t", "10"], env=procs.env, capture_output=True).returncode != 0:
            pytest.skip("the JACK dummy server did not start")
        yield procs
    finally:
        procs.stop_all()


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
