"""The stemd plugin on JACK (a JACK dummy server at 48 kHz), following JACK's transport: the LV2 in jalv,
and the JACK standalone (build/plugin/stemd, DPF's own JACK host).

A timebase master of the tests' own (tests/jack_timebase.c) publishes 97 BPM 3/4 or 7/8 (its beats per minute
in the meter's beats as JACK's example writes them, or in quarters as Ardour 7 does) and writes each sample's
transport frame on its ``frame`` port; jack_rec records the plugin's outputs beside it in the same
cycles, so the recording says on which transport sample the plugin's take starts. The plugin reaches a
real ``stemd serve`` through $STEMD_DAEMON. jalv's plugin is driven through its parameters; the JACK app,
which has no window, through its reserved MIDI note for "generate" (note 6: a take with the current
parameters, 4 bars from the next bar line).
"""

from __future__ import annotations

import importlib.util
import re
import time

import numpy as np
import pytest
import soundfile

from plugin_hosts import (NOTE_GENERATE, JackApp, Jalv, Timebase, build_jack_timebase, daemon_status, first_audible,
                          needs_cc, needs_jack_rec, needs_jalv, plugin_build,  # noqa: F401 (fixture)
                          read_recording, record, recorded_in_time, wait_for)
from stemd.timing import Grid, Meter

RATE = 48000
GRID = Grid(97, "3/4")
#: (meter, what the master's beats_per_minute counts): the plugin must read 97 quarters a minute from each
MASTERS = [("3/4", "beats"), ("7/8", "beats"), ("7/8", "quarters")]

pytestmark = [needs_jack_rec, needs_cc]


def plugin_env(tmp_path, daemon) -> dict:
    return {"STEMD_DAEMON": f"127.0.0.1:{daemon.port}", "STEMD_TAKES_DIR": str(tmp_path / "plugin-takes")}


def jack_app_with(jack, tmp_path, plugin_build, daemon, meter: str = "3/4",
                  convention: str = "beats") -> tuple[Timebase, JackApp]:
    """The tests' timebase master at 97 BPM ``meter`` (stopped) and the JACK app, once it has reached ``daemon``."""
    timebase = Timebase(jack, build_jack_timebase(tmp_path), 97, Meter.parse(meter), convention)
    app = JackApp(jack, plugin_build, tmp_path, env=plugin_env(tmp_path, daemon))
    wait_for(lambda: daemon_status(daemon)[4] >= 1, 20, "the JACK app did not connect to the daemon")
    return timebase, app


def the_take(daemon) -> np.ndarray:
    wavs = sorted(daemon.out.rglob("*.wav"))
    assert len(wavs) == 1, f"one request, {len(wavs)} takes: {[w.name for w in wavs]}"
    return soundfile.read(wavs[0], dtype="float32", always_2d=True)[0]


def assert_plays_from(stemd: np.ndarray, frames: np.ndarray, take: np.ndarray, start: int) -> None:
    """The recording is silent on every transport frame before ``start`` and is ``take`` from ``start`` on,
    each recorded sample compared with the take's sample for its own transport frame.

    On this loaded machine JACK's dummy driver now and then reports one cycle's transport frame twice and
    skips the next (every client sees the same, so the plugin and the timebase master's frame port agree):
    such a cycle is compared for what it says, and the frames it skipped are not judged."""
    rolled = frames >= 0
    before = rolled & (frames < start)
    early = frames[before][np.abs(stemd[before]).max(axis=1) > 1e-6]
    assert not early.size, f"the plugin played before its take's bar, first on transport frame {early[:1]}"
    first = first_audible(stemd)
    assert first >= 0, "the plugin played nothing"
    if start in set(frames[rolled].tolist()):
        assert frames[first] == start, f"the take starts on transport sample {frames[first]}, its bar at {start}"
    inside = rolled & (frames >= start) & (frames < start + len(take))
    judged = len(np.unique(frames[inside]))
    assert judged >= 0.99 * len(take), f"the recording holds {judged} of the take's {len(take)} transport frames"
    diff = np.abs(stemd[inside] - take[frames[inside] - start]).max(axis=1)
    bad = np.flatnonzero(diff >= 1e-4)      # (jack_rec writes 32-bit integers)
    assert not bad.size, f"{bad.size} samples differ from the take, first on transport frame {frames[inside][bad[0]]}"


def play_from_bar_1(jack, timebase, ports: list[str], seconds: int, wav, passes: int = 3):
    """Locates to bar 1, records ``ports`` and the transport frame while the transport plays ``seconds``.

    A pass in which JACK's transport jumped (on this loaded machine its dummy driver now and then reports a
    cycle's frame 256 samples off) is played again, up to ``passes`` times: the host then forwards a
    position that disagrees with the cycles around it, and the test judges transport following, not that.
    A pass whose recorder never finished (:func:`recorded_in_time`) is played again too.
    Returns (the plugin's audio, the transport frame of each sample, the passes it took)."""
    recorded = 0
    for attempt in range(1, passes + 1):
        timebase.tell("stop")
        timebase.tell("locate 0")
        time.sleep(0.5)
        rec = record(jack, ports, seconds, wav)
        timebase.tell("play")
        finished = recorded_in_time(jack, rec, seconds + 30)
        timebase.tell("stop")
        if not finished:
            continue
        recorded += 1
        stemd, frames, rate = read_recording(wav)
        assert rate == RATE and frames[0] == -1, "the recording began after the transport had started"
        rolled = frames[frames >= 0]
        if not np.any(np.diff(rolled) != 1):
            break
    assert recorded, f"jack_rec finished none of {passes} recordings"
    return stemd, frames, attempt


@needs_jalv
@pytest.mark.parametrize("meter, convention", MASTERS)
def test_lv2_in_jalv_follows_jack_transport_at_97_bpm_and_its_take_starts_on_the_first_sample_of_bar_3(
        jack, tmp_path, start_daemon, plugin_build, meter, convention):
    grid = Grid(97, meter)
    daemon = start_daemon()
    timebase = Timebase(jack, build_jack_timebase(tmp_path), 97, Meter.parse(meter), convention)
    # stopped in the middle of bar 1: jalv hands the plugin the master's position there, which tells what the
    # master's beats per minute count (a roll from bar 1's first sample alone would not: jalv then sends no
    # position until the transport stops or jumps, and DPF counts bar/beat on from its guess)
    timebase.tell(f"locate {grid.bar_start_sample(1, RATE) // 2}")
    jalv = Jalv(jack, plugin_build, "stemd-jalv", tmp_path / "jalv.log", controls={"bars": 2, "start_bar": 3},
                env=plugin_env(tmp_path, daemon))
    outs = jalv.wait_ports()
    assert jalv.wait_value("connected", 1, timeout=20) == 1, jalv.log.read_text()[-2000:]
    timebase.tell("play")                      # the plugin reads tempo and meter from the transport
    time.sleep(0.5)
    jalv.set("generate", 1)
    assert jalv.wait_value("bars_received", 2, timeout=30) == 2, jalv.log.read_text()[-2000:]
    assert f"2 bars 97 BPM {meter} at bar 3" in daemon.log, daemon.log[-2000:]
    # bar 5 (the take's end) is 7.42 s in at 3/4, 8.66 s at 7/8
    stemd, frames, _ = play_from_bar_1(jack, timebase, [*outs, Timebase.PORT], 11, tmp_path / "jack.wav")
    assert frames.max() > grid.bar_start_sample(4, RATE)
    assert_plays_from(stemd, frames, the_take(daemon), grid.bar_start_sample(2, RATE))   # 178,144 at 3/4


@needs_jalv
def test_lv2_restored_with_generate_high_asks_nothing_until_generate_rises_again(jack, tmp_path, start_daemon,
                                                                                 plugin_build):
    # an LV2 host keeps the port's value in the project: one saved with generate at 1 hands 1 over before
    # the first block when the project opens (jalv -c does what its state restore does: the port's value)
    daemon = start_daemon()
    timebase = Timebase(jack, build_jack_timebase(tmp_path), 97, Meter(3, 4))
    jalv = Jalv(jack, plugin_build, "stemd-jalv", tmp_path / "jalv.log", controls={"bars": 1, "generate": 1},
                env=plugin_env(tmp_path, daemon))
    jalv.wait_ports()
    assert jalv.wait_value("connected", 1, timeout=20) == 1, jalv.log.read_text()[-2000:]
    timebase.tell("play")
    time.sleep(3)                              # the worker acts on a press within milliseconds
    assert not re.findall(r"bars \S+ BPM", daemon.log), "the project's saved generate value asked for a take"
    assert jalv.value("bars_received") == 0
    jalv.set("generate", 0)
    time.sleep(0.3)
    jalv.set("generate", 1)                    # the producer's press
    assert jalv.wait_value("bars_received", 1, timeout=30) == 1, jalv.log.read_text()[-2000:]
    assert re.findall(r"\d+ bars \S+ BPM \S+", daemon.log) == ["1 bars 97 BPM 3/4"]


@pytest.mark.skipif(importlib.util.find_spec("rtmidi") is None,
                    reason="python-rtmidi (MIDI to the JACK app) is not installed")
@pytest.mark.parametrize("meter, convention", MASTERS)
def test_jack_app_follows_jack_transport_at_97_bpm_and_a_take_from_a_midi_note_starts_on_its_bar(
        jack, tmp_path, start_daemon, plugin_build, meter, convention):
    grid = Grid(97, meter)
    daemon = start_daemon()
    timebase, app = jack_app_with(jack, tmp_path, plugin_build, daemon, meter, convention)
    timebase.tell("locate 0")
    timebase.tell("play")                      # the JACK app tells what the beats per minute count as it rolls
    timebase.roll_to(RATE // 4)                # into bar 1 (to 1.86 s at 3/4, 2.16 s at 7/8): next is bar 2
    app.note(NOTE_GENERATE)
    done = wait_for(lambda: re.search(r"4 bars (\S+) BPM (\S+) at bar (\d+).*-> done", daemon.log), 30,
                    "the daemon made no take for the note")
    assert done.group(1, 2) == ("97", meter), done.group(0)   # what JACK's timebase master means
    bar = int(done.group(3))
    assert bar >= 2, f"asked for bar {bar}, but the note came after bar 1 had started"
    end = grid.bar_start_sample(bar + 3, RATE)
    stemd, frames, _ = play_from_bar_1(jack, timebase, [*app.outs, Timebase.PORT], end // RATE + 2,
                                       tmp_path / "jack.wav")
    assert frames.max() > end
    assert_plays_from(stemd, frames, the_take(daemon), grid.bar_start_sample(bar - 1, RATE))


@pytest.mark.skipif(importlib.util.find_spec("torch") is None or importlib.util.find_spec("rtmidi") is None,
                    reason="torch (MusicGen test model) or python-rtmidi (MIDI to the JACK app) is not installed")
def test_a_musicgen_take_streams_into_the_jack_app_and_its_first_bar_plays_before_the_daemon_has_made_the_last(
        jack, tmp_path, start_daemon, plugin_build, tiny):
    # a random-weight MusicGen test model, paced to at least 4 s a bar; the note asks for 4 bars (16 s or more)
    daemon = start_daemon("--device", "cpu", "--pace", "4", model=str(tiny))
    timebase, app = jack_app_with(jack, tmp_path, plugin_build, daemon)
    timebase.tell("locate 0")                  # stopped on bar 1's first sample: the take starts there
    time.sleep(0.5)
    app.note(NOTE_GENERATE)
    request = wait_for(lambda: daemon_status(daemon)[3], 30, "the daemon is not making a take")

    # the host plays bar 1 again and again until the take's first bar sounds in it, then once more (the
    # pass that first hears it may have begun before the bar arrived: bars not yet received are silent)
    end = GRID.bar_start_sample(1, RATE)
    deadline, passes, heard = time.monotonic() + 90, 0, 0
    while True:
        passes += 1
        wav = tmp_path / f"pass{passes}.wav"
        timebase.tell("locate 0")
        rec = record(jack, [*app.outs, Timebase.PORT], 5, wav)   # slack for a late start on a loaded machine
        timebase.tell("play")                  # bar 1 is 0 to 1.86 s
        finished = recorded_in_time(jack, rec, 30)
        timebase.tell("stop")
        if not finished and time.monotonic() < deadline:
            continue
        status = daemon_status(daemon)
        stemd, frames, _ = read_recording(wav)
        assert frames.max() >= end, "the recording stopped before bar 1 ended"
        in_bar = (frames >= 0) & (frames < end)
        heard += np.abs(stemd[in_bar]).max() > 1e-3
        if heard == 2 or time.monotonic() > deadline:
            break
    bar1, bar1_frames = stemd[in_bar], frames[in_bar]
    assert heard == 2, f"the take's first bar never played ({passes} passes over bar 1)"
    assert status[1] == "busy" and status[3] == request, \
        f"the daemon had finished the take before its first bar played (pass {passes}): {status}"

    # what played was the daemon's first bar, sample for sample (its take file is written at the end)
    wait_for(lambda: daemon_status(daemon)[1] == "idle", 120, "the daemon did not finish the take")
    take = the_take(daemon)
    assert len(take) == GRID.span_samples(0, 4, RATE)
    assert np.abs(bar1 - take[bar1_frames]).max() < 1e-4
