"""A real ``stemd serve`` process for tests, and a small OSC-over-TCP client built on stemd's codec.

``Daemon`` starts ``stemd serve --port 0`` in its own process group, reads the port it chose from its
log, waits until it answers ``/stemd/ping`` and kills the whole group at the end.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import pytest

from stemd import osc
from stemd.framing import StreamDecoder, frame_length_prefixed, frame_slip

STEMD = [sys.executable, "-m", "stemd"]


class Daemon:
    def __init__(self, tmp: Path, *args: str, model: str = "click", env: Optional[dict] = None,
                 command: Optional[list] = None):
        """``command``: what runs ``stemd`` (default ``python -m stemd``; a test may wrap it)."""
        self.out = tmp / "takes"
        self.log_path = tmp / f"daemon-{time.monotonic_ns()}.log"
        self.args = ["serve", "--model", model, "--port", "0", "--out", str(self.out), *args]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen((command or STEMD) + self.args, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, env={**os.environ, **(env or {})})
        self.host, self.port = "127.0.0.1", self._wait_for_port(timeout=60)

    def _wait_for_port(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"osc\.tcp://[^:]+:(\d+)", self.log)
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                raise RuntimeError(f"stemd serve exited with {self.proc.returncode}:\n{self.log}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"stemd serve did not start in {timeout} s:\n{self.log}")

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, count: int = 1, timeout: float = 10.0) -> str:
        """The log once ``text`` is in it ``count`` times (replies can arrive before their log line)."""
        deadline = time.monotonic() + timeout
        while self.log.count(text) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} is not {count}x in the daemon's log:\n{self.log[-3000:]}")
            time.sleep(0.02)
        return self.log

    def ping_udp(self, timeout: float = 5.0) -> osc.Message:
        """``/stemd/ping`` over UDP, asked again every 0.5 s (UDP may drop a datagram; the daemon may not)."""
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            while True:
                s.sendto(osc.encode_message("/stemd/ping"), (self.host, self.port))
                s.settimeout(min(0.5, max(0.01, deadline - time.monotonic())))
                try:
                    return osc.decode(s.recvfrom(65536)[0])
                except socket.timeout:
                    if time.monotonic() >= deadline:
                        raise TimeoutError(f"no /stemd/pong in {timeout} s") from None

    def signal(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self._log.close()


@pytest.fixture
def start_daemon(tmp_path):
    """``start_daemon(*args, model="click")`` -> a running :class:`Daemon`; all are killed at the end."""
    started: list[Daemon] = []

    def start(*args: str, **kwargs) -> Daemon:
        daemon = Daemon(tmp_path, *args, **kwargs)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


@pytest.fixture
def daemon(start_daemon) -> Daemon:
    return start_daemon()


class TcpClient:
    """OSC over TCP with stemd's own codec: OSC 1.0 length-prefix (what liblo sends) or SLIP."""

    def __init__(self, port: int, host: str = "127.0.0.1", slip: bool = False, timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.frame = frame_slip if slip else frame_length_prefixed
        self.decoder = StreamDecoder()
        self.pending: list[osc.Message] = []
        self.timeout = timeout
        self.lock = threading.Lock()

    def send(self, address: str, *args) -> None:
        self.send_raw(self.frame(osc.encode_message(address, *args)))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: Optional[float] = None) -> osc.Message:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                raise TimeoutError("no reply from the daemon")
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("the daemon closed the connection")
            for packet in self.decoder.feed(data):
                self.pending += list(osc.messages_in(osc.decode(packet)))
        return self.pending.pop(0)

    def until(self, address: str, request_id: Optional[str] = None, timeout: float = 30.0) -> list[osc.Message]:
        """Every message up to and including the first ``address`` (for ``request_id`` if given)."""
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(0.01, deadline - time.monotonic()))
            seen.append(msg)
            if msg.address == address and (request_id is None or msg.args[:1] == (request_id,)):
                return seen

    def close(self) -> None:
        self.sock.close()
