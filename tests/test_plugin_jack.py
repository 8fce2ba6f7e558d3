"""The stemd LV2 in jalv on JACK (a JACK dummy server at 48 kHz), following JACK's transport.

A timebase master of the tests' own (tests/jack_timebase.c) publishes 97 BPM 3/4 and writes each sample's
transport frame on its ``frame`` port; jack_rec records the plugin's outputs beside it in the same
cycles, so the recording says on which transport sample the plugin's take starts. The plugin
reaches a real ``stemd serve`` through $STEMD_DAEMON.
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest
import soundfile

from daemon_fixtures import TcpClient
from plugin_hosts import (Jalv, Timebase, build_jack_timebase, first_audible, needs_cc, needs_jalv, plugin_build,
                          read_recording, record)  # noqa: F401 (fixture)
from stemd.timing import Grid, Meter

RATE = 48000
GRID = Grid(97, "3/4")

pytestmark = [needs_jalv, needs_cc]


def daemon_status(daemon) -> tuple:
    """``/stemd/status`` without an id: ("*", state, queued, running id, clients, model)."""
    client = TcpClient(daemon.port)
    try:
        client.send("/stemd/status")
        return client.until("/stemd/status/reply", timeout=10)[-1].args
    finally:
        client.close()


def start_rig(jack, tmp_path, plugin_build, daemon, controls: dict, env: dict = None):
    timebase = Timebase(jack, build_jack_timebase(tmp_path), 97, Meter(3, 4))
    jalv = Jalv(jack, plugin_build, "stemd-jalv", tmp_path / "jalv.log", controls=controls,
                env={"STEMD_DAEMON": f"127.0.0.1:{daemon.port}", "STEMD_TAKES_DIR": str(tmp_path / "plugin-takes"),
                     **(env or {})})
    outs = jalv.wait_ports()
    assert jalv.wait_value("connected", 1, timeout=20) == 1, \
        f"the plugin did not connect to the daemon:\n{jalv.log.read_text()[-2000:]}"
    return timebase, jalv, outs


def test_lv2_in_jalv_follows_jack_transport_at_97_bpm_3_4_and_its_take_starts_on_the_first_sample_of_bar_3(
        jack, tmp_path, start_daemon, plugin_build):
    daemon = start_daemon()
    timebase, jalv, outs = start_rig(jack, tmp_path, plugin_build, daemon, {"bars": 2, "start_bar": 3})
    timebase.tell("locate 0")
    timebase.tell("play")                      # the plugin reads tempo and meter from the rolling transport
    time.sleep(0.5)
    jalv.set("generate", 1)
    assert jalv.wait_value("bars_received", 2, timeout=30) == 2, jalv.log.read_text()[-2000:]
    timebase.tell("stop")
    timebase.tell("locate 0")
    time.sleep(0.5)

    wav = tmp_path / "jack.wav"
    rec = record(jack, [*outs, Timebase.PORT], 10, wav)
    timebase.tell("play")                      # bar 5 (the take's end) is 7.42 s in
    rec.wait(30)
    timebase.tell("stop")
    stemd, frames, rate = read_recording(wav)
    assert rate == RATE
    assert frames[0] == -1 and frames.max() > GRID.bar_start_sample(4, RATE), "the recording missed the take"
    first = first_audible(stemd)
    assert first >= 0, "the plugin played nothing"
    assert frames[first] == GRID.bar_start_sample(2, RATE) == 178144, \
        f"the take starts on transport sample {frames[first]}, bar 3 is 178144"
    # the take as the daemon made it, each sample on its transport frame (three clicks a bar)
    wavs = sorted(daemon.out.rglob("*.wav"))
    assert len(wavs) == 1, f"one generate, {len(wavs)} takes: {[w.name for w in wavs]}"
    take, _ = soundfile.read(wavs[0], dtype="float32", always_2d=True)
    rolled = frames >= 0
    at = {f: i for i, f in zip(np.flatnonzero(rolled), frames[rolled])}
    span = [at.get(178144 + k) for k in range(len(take))]
    assert None not in span, "the recorder lost part of the take (a dropped cycle on a loaded machine?)"
    assert np.abs(stemd[span] - take).max() < 1e-4      # (jack_rec writes 32-bit integers)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch (MusicGen test model) is not installed")
def test_a_musicgen_take_streams_into_the_lv2_and_its_first_bar_plays_before_the_daemon_has_made_the_last(
        jack, tmp_path, start_daemon, plugin_build, tiny):
    # a random-weight MusicGen test model, paced to 4 s a bar, asked for 4 bars: about 16 s of work
    daemon = start_daemon("--device", "cpu", "--pace", "4", model=str(tiny))
    timebase, jalv, outs = start_rig(jack, tmp_path, plugin_build, daemon, {"bars": 4, "start_bar": 2})
    timebase.tell("locate 0")
    timebase.tell("play")
    time.sleep(0.5)
    jalv.set("generate", 1)
    assert jalv.wait_value("bars_received", 1, timeout=90) >= 1, jalv.log.read_text()[-2000:]
    status = daemon_status(daemon)
    assert status[1] == "busy" and status[3], f"the daemon is not making the take any more: {status}"
    received = jalv.value("bars_received")
    assert received < 4, f"all {received} bars arrived at once"

    # the first bar plays now, while the rest is still being made
    timebase.tell("stop")
    timebase.tell("locate 0")
    time.sleep(0.3)
    wav = tmp_path / "stream.wav"
    rec = record(jack, [*outs, Timebase.PORT], 4, wav)
    timebase.tell("play")                      # bar 2 is 1.86 s to 3.71 s in
    rec.wait(30)
    timebase.tell("stop")
    status_after = daemon_status(daemon)
    assert status_after[1] == "busy" and status_after[3], \
        f"the daemon finished before the first bar had played: {status_after}"
    stemd, frames, _ = read_recording(wav)
    start, end = GRID.bar_start_sample(1, RATE), GRID.bar_start_sample(2, RATE)
    assert frames.max() >= end, "the recording stopped before the take's first bar ended"
    assert np.abs(stemd[(frames >= 0) & (frames < start)]).max() <= 1e-6, "the plugin played before the take's bar"
    in_bar = (frames >= start) & (frames < end)
    bar2, bar2_frames = stemd[in_bar], frames[in_bar] - start
    assert np.abs(bar2).max() > 1e-3, "the first bar of the take did not play"

    # what played was the daemon's first bar, sample for sample (its take file is written at the end)
    deadline = time.monotonic() + 90
    while daemon_status(daemon)[1] != "idle" and time.monotonic() < deadline:
        time.sleep(0.5)
    wavs = sorted(daemon.out.rglob("*.wav"))
    assert wavs, f"the daemon wrote no take:\n{daemon.log[-2000:]}"
    take, _ = soundfile.read(wavs[0], dtype="float32", always_2d=True)
    assert np.abs(bar2 - take[bar2_frames]).max() < 1e-4
