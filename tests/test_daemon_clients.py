"""Several clients on one real `stemd serve`: fairness, cancel, preemption, vanished and slow clients."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import soundfile

from daemon_fixtures import TcpClient
from stemd.protocol import Chunk

PACE = 0.4  # seconds per bar: the click engine made as slow as a model on a modest device


def chunks_of(messages, request_id):
    return [Chunk.from_args(m.args) for m in messages if m.address == "/stemd/chunk" and m.args[0] == request_id]


def test_two_clients_at_once_take_turns_and_both_get_whole_takes(start_daemon):
    daemon = start_daemon("--pace", "0.05")
    a, b = TcpClient(daemon.port), TcpClient(daemon.port, slip=True)
    for i in range(3):
        a.send("/stemd/generate", f"a{i}", "bars", 2)
    b.send("/stemd/generate", "b0", "bars", 2)
    got_a = a.until("/stemd/done", "a2")
    got_b = b.until("/stemd/done", "b0")
    for rid in ("a0", "a1", "a2"):
        assert [c.bar_index for c in chunks_of(got_a, rid)] == [0, 1]
    assert [c.bar_index for c in chunks_of(got_b, "b0")] == [0, 1]
    # round-robin: b0 ran second, after a0 and before a1 (the log lists requests as they end)
    log = daemon.wait_log("-> done", 4)
    order = [line.split()[4] for line in log.splitlines() if " request " in line and "-> done" in line]
    assert order == ["a0", "b0", "a1", "a2"], order


def test_cancel_mid_take_frees_the_worker_within_one_bar(start_daemon):
    daemon = start_daemon("--pace", str(PACE))
    a, b = TcpClient(daemon.port), TcpClient(daemon.port)
    a.send("/stemd/generate", "long", "bars", 64)
    a.until("/stemd/chunk", "long")
    b.send("/stemd/generate", "next", "bars", 1)
    assert [m.address for m in b.until("/stemd/queued", "next")] == ["/stemd/accepted", "/stemd/queued"]
    t0 = time.monotonic()
    a.send("/stemd/cancel", "long")
    ended = a.until("/stemd/cancelled", "long")
    cancelled_after = time.monotonic() - t0
    b.until("/stemd/chunk", "next")
    next_bar_after = time.monotonic() - t0
    assert cancelled_after < PACE, f"cancel took {cancelled_after:.3f} s, more than one bar ({PACE} s)"
    assert next_bar_after < 2 * PACE + 0.2  # the freed worker made the other client's bar at once
    assert "/stemd/done" not in [m.address for m in ended]
    b.until("/stemd/done", "next")
    a.send("/stemd/status", "long")
    assert a.until("/stemd/status/reply")[-1].args[:2] == ("long", "cancelled")


CLIENT = r"""
import sys
from pythonosc.tcp_client import SimpleTCPClient
c = SimpleTCPClient("127.0.0.1", int(sys.argv[1]))
c.send_message("/stemd/generate", ["victim", "bars", 64])
while True:
    for m in c.get_messages(0.2):
        if m.address == "/stemd/chunk":
            print("chunk", m.params[2], flush=True)
"""


@contextlib.contextmanager
def python_osc_client(port: int):
    """A python-osc client in its own process asking for a 64-bar take; yields the process to kill."""
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, str(port)], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(5)


def test_killing_one_client_mid_stream_leaves_the_other_take_intact(start_daemon):
    daemon = start_daemon("--pace", str(PACE))
    with python_osc_client(daemon.port) as victim:
        assert victim.stdout.readline().startswith("chunk 0")
        other = TcpClient(daemon.port)
        other.send("/stemd/generate", "keeper", "bars", 4, "bpm", 180)
        other.until("/stemd/accepted", "keeper")
        kill(victim)
        t0 = time.monotonic()
        got = other.until("/stemd/done", "keeper")
    assert time.monotonic() - t0 < 4 * PACE + 2 * PACE  # victim's 60 remaining bars were not made
    assert_take_intact(got, "keeper")
    assert "request victim from tcp:" in daemon.wait_log("-> cancelled (disconnect)")


def test_killing_a_waiting_client_while_another_streams_leaves_that_take_intact(start_daemon):
    daemon = start_daemon("--pace", str(PACE))
    streaming = TcpClient(daemon.port)
    streaming.send("/stemd/generate", "keeper", "bars", 6)
    got = streaming.until("/stemd/chunk", "keeper")
    with python_osc_client(daemon.port) as victim:
        deadline = time.monotonic() + 10
        while True:  # until the victim's request waits in the queue
            streaming.send("/stemd/status")
            got += streaming.until("/stemd/status/reply")
            if got[-1].args[2] >= 1:
                break
            assert time.monotonic() < deadline
        kill(victim)
        got += streaming.until("/stemd/done", "keeper")
    assert_take_intact(got, "keeper")
    assert "request victim from tcp:" in daemon.wait_log("cancelled while queued (disconnect)")


def assert_take_intact(messages, request_id):
    chunks = chunks_of(messages, request_id)
    bars = sorted({c.bar_index for c in chunks})
    assert [c.bar_index for c in chunks] == bars == list(range(len(bars))) and bars
    take = next(m.args[2] for m in messages if m.address == "/stemd/take")
    audio, _ = soundfile.read(take, dtype="float32", always_2d=True)
    assert np.array_equal(audio.T, np.concatenate([c.audio for c in chunks], axis=1))


def test_a_live_request_preempts_an_offline_render_which_then_resumes(start_daemon):
    daemon = start_daemon("--pace", "0.1")
    offline, live = TcpClient(daemon.port), TcpClient(daemon.port)
    offline.send("/stemd/generate", "render", "bars", 6, "priority", "offline", "seed", 3)
    got = offline.until("/stemd/chunk", "render")
    live.send("/stemd/generate", "pad", "bars", 2)
    live.until("/stemd/done", "pad")
    got += offline.until("/stemd/done", "render")
    chunks = chunks_of(got, "render")
    assert [c.bar_index for c in chunks] == [0, 1, 2, 3, 4, 5]  # every bar once, in order, across the preemption
    ended = [line.split()[4] for line in daemon.wait_log("-> done", 2).splitlines() if "-> done" in line]
    assert ended == ["pad", "render"] and "render from tcp:127.0.0.1" in daemon.log
    assert "preempted by a live request" in daemon.log
    take = next(m.args[2] for m in got if m.address == "/stemd/take")
    audio, _ = soundfile.read(take, dtype="float32", always_2d=True)
    assert np.array_equal(audio.T, np.concatenate([c.audio for c in chunks], axis=1))


def test_a_full_queue_answers_busy(start_daemon):
    daemon = start_daemon("--pace", "0.5", "--queue-size", "1")
    c = TcpClient(daemon.port)
    c.send("/stemd/generate", "running", "bars", 4)
    c.until("/stemd/accepted", "running")
    time.sleep(0.1)  # let the worker take it
    c.send("/stemd/generate", "waiting", "bars", 1)
    c.until("/stemd/accepted", "waiting")
    c.send("/stemd/generate", "refused", "bars", 1)
    error = c.until("/stemd/error", "refused")[-1]
    assert error.args[1] == "busy"
    c.send("/stemd/generate", "running", "bars", 1)
    assert c.until("/stemd/error", "running")[-1].args[1] == "duplicate_id"


def test_a_client_that_stops_reading_is_dropped_and_others_go_on(start_daemon):
    daemon = start_daemon("--max-client-buffer-mb", "1", "--max-take-mb", "1024")
    stalled = TcpClient(daemon.port)
    stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # and never reads
    stalled.send("/stemd/generate", "flood", "bars", 64, "bpm", 60, "sample_rate", 96000, "variations", 2)
    daemon.wait_log("dropping client", timeout=30)
    other = TcpClient(daemon.port)
    other.send("/stemd/generate", "fine", "bars", 2)
    # a client that reads is never dropped, even with more than the limit (1 MiB) in flight: 2 x 768 KiB
    assert [c.bar_index for c in chunks_of(other.until("/stemd/done", "fine"), "fine")] == [0, 1]
    assert "too slow" in daemon.log and "request flood from tcp:" in daemon.wait_log("request flood from tcp:")


def test_connections_past_max_clients_are_told_busy_and_closed(start_daemon):
    daemon = start_daemon("--max-clients", "1")
    first = TcpClient(daemon.port)
    first.send("/stemd/ping")
    assert first.recv().address == "/stemd/pong"
    second = TcpClient(daemon.port)
    second.send("/stemd/ping")      # a connection counts once it has spoken (silent ones time out)
    assert second.recv().args[1] == "busy"
    first.send("/stemd/generate", "still", "bars", 1)
    assert first.until("/stemd/done", "still")[-1].address == "/stemd/done"
