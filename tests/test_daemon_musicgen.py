"""`stemd serve` with a real MusicGen architecture (a tiny random-weight test model built here)."""

import importlib.util
import subprocess
import time

import pytest

from daemon_fixtures import STEMD, TcpClient
from stemd.protocol import Chunk
from stemd.timing import Grid

pytestmark = pytest.mark.skipif(importlib.util.find_spec("stemd.models.cmd_make_test_model") is None
                                or importlib.util.find_spec("torch") is None,
                                reason="stemd make-test-model (models room) or torch is not available")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-musicgen")
    subprocess.run(STEMD + ["make-test-model", str(folder), "--arch", "tiny"], check=True, timeout=300,
                   capture_output=True)
    return folder


def test_a_tiny_musicgen_streams_bar_exact_chunks_and_cancels_between_steps(start_daemon, tiny_model):
    daemon = start_daemon("--device", "cpu", model=str(tiny_model))
    client = TcpClient(daemon.port)
    client.send("/stemd/ping")
    pong = client.recv()
    assert pong.address == "/stemd/pong" and pong.args[2] == "cpu"
    assert pong.args[3:] == ("musicgen", "CC-BY-NC-4.0", 0)          # family, licence, commercial use
    assert "does not allow commercial use" in daemon.log                 # said once, at start
    client.send("/stemd/generate", "s1", "bars", 1, "strength", 0.5)    # a diffusion model's key
    error = client.until("/stemd/error", "s1", timeout=60)[-1]
    assert error.args[1] == "unsupported_key" and "strength" in error.args[2]
    client.send("/stemd/generate", "mg", "bars", 2, "bpm", 137.5, "seed", 1, "sample_rate", 44100)
    messages = client.until("/stemd/done", "mg", timeout=120)
    chunks = [Chunk.from_args(m.args) for m in messages if m.address == "/stemd/chunk"]
    grid = Grid(137.5)
    assert [c.bar_index for c in chunks] == [0, 1]
    for c in chunks:
        assert c.audio.shape == (2, grid.bar_length_samples(c.bar_index, 44100))
        assert c.start_sample == grid.bar_start_sample(c.bar_index, 44100)
    # cancel mid-take: the worker stops within one bar's worth of decoding steps
    client.send("/stemd/generate", "long", "bars", 8, "bpm", 120, "seed", 2)
    client.until("/stemd/chunk", "long", timeout=120)
    first = time.monotonic()
    client.until("/stemd/chunk", "long", timeout=120)
    bar_time = time.monotonic() - first      # one bar's worth of steps, measured
    t0 = time.monotonic()
    client.send("/stemd/cancel", "long")
    ended = client.until("/stemd/cancelled", "long", timeout=120)
    assert time.monotonic() - t0 < bar_time + 0.5, (time.monotonic() - t0, bar_time)
    assert "/stemd/done" not in [m.address for m in ended]
    client.send("/stemd/ping")
    assert client.until("/stemd/pong")[-1].address == "/stemd/pong"


def test_a_preempted_musicgen_render_resumes_seamlessly(start_daemon, tiny_model):
    daemon = start_daemon("--device", "cpu", model=str(tiny_model))
    offline, live = TcpClient(daemon.port), TcpClient(daemon.port)
    live.send("/stemd/ping")        # a connection that says nothing for 5 s is closed: say hello now
    assert live.recv().address == "/stemd/pong"
    args = ("bars", 4, "bpm", 120, "seed", 5, "priority", "offline", "prompt", "resume me")
    offline.send("/stemd/generate", "whole", *args)
    whole = [Chunk.from_args(m.args) for m in offline.until("/stemd/done", "whole", timeout=120)
             if m.address == "/stemd/chunk"]
    offline.send("/stemd/generate", "cut", *args)
    got = offline.until("/stemd/chunk", "cut", timeout=120)
    live.send("/stemd/generate", "pad", "bars", 1, "seed", 1)
    live.until("/stemd/done", "pad", timeout=120)
    got += offline.until("/stemd/done", "cut", timeout=120)
    cut = [Chunk.from_args(m.args) for m in got if m.address == "/stemd/chunk"]
    assert "preempted by a live request" in daemon.log
    assert [c.bar_index for c in cut] == [0, 1, 2, 3]
    for a, b in zip(whole, cut):  # same seed, same bars: the resumed take is the take
        assert abs(a.audio - b.audio).max() < 1e-4
