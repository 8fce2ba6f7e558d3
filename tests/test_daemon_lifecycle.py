"""Start-up refusals, the token, and graceful shutdown of a real `stemd serve`."""

import signal
import socket
import subprocess
import sys
import time

import pytest

from daemon_fixtures import STEMD, TcpClient
from stemd import osc


def test_a_missing_model_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run(STEMD + ["serve", "--model", str(tmp_path / "no-such-model"), "--port", "0",
                                     "--out", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stemd serve:"), result.stderr


def test_listening_beyond_this_machine_requires_a_token(tmp_path):
    result = subprocess.run(STEMD + ["serve", "--model", "click", "--host", "0.0.0.0", "--port", "0"],
                            capture_output=True, text=True, timeout=60, env={"STEMD_TOKEN": "", **_env()})
    assert result.returncode == 2 and "requires --token" in result.stderr


def _env():
    import os

    return {k: v for k, v in os.environ.items() if k != "STEMD_TOKEN"}


def test_clients_must_present_the_token(start_daemon):
    daemon = start_daemon("--host", "0.0.0.0", "--token", "s3cret-s3cret-s3cret")
    # TCP: anything before /stemd/hello <token> is refused and the connection closed
    intruder = TcpClient(daemon.port)
    intruder.send("/stemd/generate", "x", "bars", 1)
    assert intruder.recv().args[1] == "unauthorized"
    with pytest.raises(ConnectionError):
        intruder.recv()
    wrong = TcpClient(daemon.port)  # a client that sends before it reads hears about every message
    wrong.send("/stemd/hello", "guess")
    wrong.send("/stemd/ping")
    assert [wrong.recv().args[1], wrong.recv().args[1]] == ["unauthorized", "unauthorized"]
    with pytest.raises(ConnectionError):
        wrong.recv()
    friend = TcpClient(daemon.port)
    friend.send("/stemd/hello", "s3cret-s3cret-s3cret")
    assert friend.recv().address == "/stemd/pong"
    friend.send("/stemd/generate", "ok", "bars", 1)
    assert friend.until("/stemd/done", "ok")[-1].address == "/stemd/done"
    # UDP: the token is the last argument pair of every message
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(osc.encode_message("/stemd/ping"), ("127.0.0.1", daemon.port))
        assert osc.decode(s.recv(65536)).args[1] == "unauthorized"
        s.sendto(osc.encode_message("/stemd/ping", "token", "s3cret-s3cret-s3cret"), ("127.0.0.1", daemon.port))
        assert osc.decode(s.recv(65536)).address == "/stemd/pong"


def test_sigterm_cancels_in_flight_work_tells_clients_and_exits_0(start_daemon):
    daemon = start_daemon("--pace", "0.2")
    client = TcpClient(daemon.port)
    client.send("/stemd/generate", "long", "bars", 64)
    client.until("/stemd/chunk", "long")
    client.send("/stemd/generate", "queued", "bars", 1)
    client.until("/stemd/accepted", "queued")
    daemon.signal(signal.SIGTERM)
    messages = client.until("/stemd/bye", timeout=10)
    errors = {(m.args[0], m.args[1]) for m in messages if m.address == "/stemd/error"}
    assert errors == {("long", "shutting_down"), ("queued", "shutting_down")}
    assert daemon.proc.wait(10) == 0
    assert not list(daemon.out.glob("*.wav"))  # cancelled takes are not written


def test_sigint_with_finish_completes_the_take_before_exiting(start_daemon):
    daemon = start_daemon("--pace", "0.1", "--on-shutdown", "finish")
    client = TcpClient(daemon.port)
    client.send("/stemd/generate", "keep", "bars", 4)
    client.until("/stemd/chunk", "keep")
    daemon.signal(signal.SIGINT)
    deadline = time.monotonic() + 5
    while _can_connect(daemon.port):  # it stops accepting connections at once ...
        assert time.monotonic() < deadline
        time.sleep(0.02)
    messages = client.until("/stemd/bye", timeout=10)
    addresses = [m.address for m in messages]
    assert addresses.index("/stemd/done") < addresses.index("/stemd/bye")
    assert [m.args[2] for m in messages if m.address == "/stemd/chunk"] == [1, 2, 3]
    assert len(list(daemon.out.glob("*.wav"))) == 1  # ... but finishes the take it was making
    assert daemon.proc.wait(10) == 0


def _can_connect(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_stemd_serve_help_works_without_starting(tmp_path):
    result = subprocess.run([sys.executable, "-m", "stemd", "serve", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--on-shutdown" in result.stdout
