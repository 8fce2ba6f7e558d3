"""Transport following: the shared state, the fixed follower, and the OSC followers fed by a real OSC
peer (liblo's oscsend) sending what REAPER and DrivenByMoss send."""

from __future__ import annotations

import math
import random
import shutil
import subprocess
import sys
import time
from fractions import Fraction

import numpy as np
import pytest

from stemd.bridge.transport import FollowError, Transport, make_follower
from stemd.bridge.transport.daw_osc import (BitwigFollower, ReaperFollower, TempoFromMotion, parse_bbt,
                                            parse_drivenbymoss_beat)
from stemd.timing import Meter
from test_bridge_support import json_lines


def test_position_extrapolates_while_playing_and_holds_when_stopped():
    clock = [100.0]
    transport = Transport(90, "3/4", clock=lambda: clock[0])
    transport.update(quarters=3, playing=True)
    clock[0] += 2.0  # 3 quarters at 90 BPM
    state = transport.now()
    assert state.quarters == 6 and (state.bar_index, state.beat_index) == (2, 0)
    transport.update(playing=False)
    clock[0] += 5.0
    assert transport.now().quarters == 6


def test_a_late_report_within_tolerance_never_moves_the_position_back():
    clock = [0.0]
    transport = Transport(120, clock=lambda: clock[0])
    transport.update(quarters=0, playing=True)
    clock[0] = 1.0  # we are at quarter 2
    transport.update(quarters=Fraction(39, 20), tolerance=Fraction(1, 8))  # a report 50 ms behind
    assert transport.now().quarters == 2
    transport.update(quarters=16, tolerance=Fraction(1, 8))  # a locate is not jitter
    assert transport.now().quarters == 16


def test_next_bar_and_json_line_count_from_one_like_a_daw():
    transport = Transport(137.5, "7/8")
    transport.update(quarters=Fraction(7, 2) * 2 + Fraction(1, 2), playing=True)  # bar 3, second eighth
    state = transport.last()
    assert state.next_bar() == 3
    assert state.as_json() == '{"bpm": 137.5, "meter": "7/8", "bar": 3, "beat": 2, "playing": true}'


@pytest.mark.parametrize("text, expected", [
    ("003|02|0960", (3, 2, Fraction(1, 2))),   # Ardour: bars|beats|ticks of 1920
    ("5.3.25", (5, 3, Fraction(1, 4))),        # REAPER: hundredths of a beat
    ("nonsense", None),
])
def test_bbt_strings(text, expected):
    assert parse_bbt(text) == expected


def _java_int(x: float) -> int:
    """Java's ``(int)`` of a double: toward zero, NaN to 0, clamped to the int range."""
    if math.isnan(x):
        return 0
    return max(-2**31, min(2**31 - 1, int(x))) if math.isfinite(x) else (2**31 - 1 if x > 0 else -2**31)


def _java_int_add(a: int, b: int) -> int:
    return (a + b + 2**31) % 2**32 - 2**31


def drivenbymoss_beat_text(beats: float, numerator: int, denominator: int, padded: bool = True) -> str:
    """``/beat/str`` as DrivenByMoss (github.com/git-moss/DrivenByMoss) makes it: a port of
    ``TransportImpl.formatAsBeats(1)`` (src/main/java/de/mossgrabers/bitwig/framework/daw/TransportImpl.java;
    its ``getBeatText`` is what its ``OSCWriter`` sends as ``/beat/str``) and the ``formatMeasures`` it
    calls through ``StringUtils.formatMeasuresLong`` (src/main/java/de/mossgrabers/framework/utils/
    StringUtils.java), Java's int and double arithmetic kept: ``beats`` is Bitwig's position in quarters.
    ``padded``: the long format ``"%d.%02d.%02d:%02d"``; older versions use ``"%d.%d.%d:%02d"``."""
    quarters_per_measure = (4 * numerator) // denominator            # Java int division (both positive)
    with np.errstate(divide="ignore", invalid="ignore"):                # x / 0.0: Infinity or NaN, as in Java
        measure = _java_int(float(np.floor(np.float64(beats) / np.float64(quarters_per_measure))))
    t = beats - _java_int(measure * quarters_per_measure)
    quarters = _java_int(math.floor(t))
    t = t - quarters
    eights = _java_int(math.floor(t / 0.25))
    t = t - eights * 0.25
    frames = _java_int(math.floor(t / 0.25 * 100.0))
    fields = (_java_int_add(measure, 1), quarters + 1, eights + 1, frames)
    return ("%d.%02d.%02d:%02d" if padded else "%d.%d.%d:%02d") % fields


METERS = [(4, 4), (6, 8), (7, 8), (5, 8), (9, 8), (3, 16)]


@pytest.mark.parametrize("numerator, denominator", METERS)
def test_drivenbymoss_beat_strings_give_the_exact_position_in_odd_meters(numerator, denominator):
    """A unit test of our reading against DrivenByMoss's documented code (its formatting ported above),
    not an integration test: no Bitwig runs here. Every 64th note of the first 24 bars (a quarter of a
    sixteenth: 25 hundredths, exact in the text and in a double) reads back as the position DrivenByMoss
    formatted; any other position reads back at most one hundredth of a sixteenth early (it truncates)."""
    meter = Meter(numerator, denominator)
    for padded in (True, False):
        for step in range(int(24 * meter.bar_quarters * 16) + 1):
            true = Fraction(step, 16)
            text = drivenbymoss_beat_text(float(true), numerator, denominator, padded)
            assert parse_drivenbymoss_beat(text, meter) == true, (text, true)
    rng = random.Random(7)
    for _ in range(2000):
        beats = rng.uniform(0, 40 * float(meter.bar_quarters))
        read = parse_drivenbymoss_beat(drivenbymoss_beat_text(beats, numerator, denominator), meter)
        assert 0 <= beats - read < Fraction(1, 400) + 1e-9, (beats, read)


def test_drivenbymoss_measures_are_its_own_not_the_bar():
    # 7/8: a DrivenByMoss measure is 3 quarters, the bar 3.5; "5.1.1:00" is quarter 12 = bar 4, eighth 4
    assert drivenbymoss_beat_text(12.0, 7, 8) == "5.01.01:00"
    assert parse_drivenbymoss_beat("5.01.01:00", Meter(7, 8)) == 12
    assert parse_drivenbymoss_beat("5.01.01:00", Meter(5, 8)) == 8      # 2 quarters a measure
    assert parse_drivenbymoss_beat("5.01.01:00", Meter(9, 8)) == 16     # 4 quarters a measure
    assert parse_drivenbymoss_beat("2.04.01:00", Meter(7, 8)) is None   # no 4th quarter in its measure
    assert parse_drivenbymoss_beat("0.03.04:99", Meter(4, 4)) is None   # before the start (pre-roll)
    assert parse_drivenbymoss_beat("3.2.50", Meter(4, 4)) is None       # REAPER's, not DrivenByMoss's
    assert parse_drivenbymoss_beat("1.01.05:00", Meter(4, 4)) is None


@pytest.mark.parametrize("numerator, denominator", METERS)
def test_bitwig_follower_puts_drivenbymoss_positions_on_the_sessions_bars_and_beats(numerator, denominator):
    """The follower, fed what DrivenByMoss sends, reports the bar and beat of the meter Bitwig runs at every
    eighth of the first 12 bars (unit test against DrivenByMoss's ported formatting, as above)."""
    from stemd import osc

    meter = Meter(numerator, denominator)
    transport = Transport(120)
    follower = BitwigFollower(transport, daw_port=9, listen_port=0)   # the discard port: nothing answers
    try:
        follower.handle(osc.Message("/time/signature", f"{numerator} / {denominator}"))
        for step in range(int(12 * meter.bar_quarters * 2)):
            true = Fraction(step, 2)
            follower.handle(osc.Message("/beat/str", drivenbymoss_beat_text(float(true), numerator, denominator)))
            state = transport.last()
            bar, into_bar = divmod(true, meter.bar_quarters)
            assert (state.quarters, state.bar_index, state.beat_index) == \
                (true, bar, math.floor(into_bar / meter.unit_quarters)), true
    finally:
        follower.stop()


def test_tempo_from_motion_is_exact_for_exact_reports_and_forgets_a_locate():
    tempo = TempoFromMotion()
    for i in range(10):
        bpm = tempo.add(i * 0.1, Fraction(i * 96, 600))  # 96 BPM: 1.6 quarters a second
    assert bpm == pytest.approx(96.0, abs=1e-6)
    assert tempo.add(0.05, Fraction(0)) is None  # jumped back: start over


def test_bad_follow_specs_are_one_clear_error():
    with pytest.raises(FollowError, match="unknown --follow 'cubase'"):
        make_follower("cubase", Transport())
    with pytest.raises(FollowError, match="tempo must be between 20 and 999"):
        make_follower("fixed:5000", Transport())


def test_print_transport_with_a_fixed_tempo_prints_every_beat():
    proc = subprocess.Popen([sys.executable, "-m", "stemd", "bridge", "--daemon", "none", "--follow", "fixed:240:3/4",
                             "--print-transport", "--no-stdin"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        lines = json_lines(proc, 2.5)
    finally:
        proc.terminate()
        proc.wait(5)
    beats = [(l["bar"], l["beat"]) for l in lines]
    assert beats[:5] == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)], beats
    assert all(l["bpm"] == 240 and l["meter"] == "3/4" and l["playing"] for l in lines)


def test_print_transport_into_a_reader_that_leaves_stops_quietly():
    # stemd bridge --print-transport | head -3
    proc = subprocess.Popen([sys.executable, "-m", "stemd", "bridge", "--daemon", "none", "--follow", "fixed:600:7/8",
                             "--print-transport", "--no-stdin"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        for _ in range(3):
            assert proc.stdout.readline()
        proc.stdout.close()                       # head has what it wanted
        assert proc.wait(10) == 0
        assert b"Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def oscsend(port, *args):
    subprocess.run(["oscsend", "localhost", str(port), *args], check=True)


def wait_for(predicate, seconds=3.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.02)
    return predicate()


needs_oscsend = pytest.mark.skipif(not shutil.which("oscsend"), reason="liblo-tools (oscsend) is not installed")


@needs_oscsend
def test_reaper_follower_reads_reapers_default_feedback():
    transport = Transport()
    follower = ReaperFollower(transport, listen_port=0)
    try:
        oscsend(follower.listen_port, "/tempo/raw", "f", "93.5")
        oscsend(follower.listen_port, "/beat/str", "s", "17.3.50")
        oscsend(follower.listen_port, "/play", "f", "1")
        assert wait_for(lambda: transport.last().playing)
        state = transport.last()
        assert float(state.bpm) == 93.5 and state.quarters == 16 * 4 + Fraction(5, 2)
        oscsend(follower.listen_port, "/play", "f", "0")
        assert wait_for(lambda: not transport.last().playing)
    finally:
        follower.stop()


@needs_oscsend
def test_bitwig_follower_reads_drivenbymoss_feedback_and_asks_for_a_refresh():
    import socket

    from stemd import osc

    fake_bitwig = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fake_bitwig.bind(("127.0.0.1", 0))
    fake_bitwig.settimeout(2)
    transport = Transport()
    follower = BitwigFollower(transport, daw_port=fake_bitwig.getsockname()[1], listen_port=0)
    try:
        assert osc.decode(fake_bitwig.recvfrom(1024)[0]).address == "/refresh"
        oscsend(follower.listen_port, "/time/signature", "s", "7 / 8")        # DrivenByMoss's own spacing
        oscsend(follower.listen_port, "/tempo/raw", "f", "140")
        # its measure 4, second quarter, third sixteenth, 50 hundredths of it: 3 measures of 3 quarters (4 * 7 / 8
        # in integers) + 1.625 = quarter 10.625, the bridge's bar 4 (3.5 quarters a bar), eighth 2
        oscsend(follower.listen_port, "/beat/str", "s", "4.02.03:50")
        assert wait_for(lambda: transport.last().quarters == 3 * 3 + Fraction(13, 8))
        state = transport.last()
        assert (state.bar_index, state.beat_index) == (3, 0)
        assert str(state.meter) == "7/8" and float(state.bpm) == 140
    finally:
        follower.stop()
        fake_bitwig.close()


def test_a_late_report_does_not_step_the_position_back_but_a_locate_does():
    clock = [0.0]
    transport = Transport(120, clock=lambda: clock[0])
    transport.update(quarters=8, playing=True, at=0.0)
    clock[0] = 1.0                                     # two quarters later: 10 by the clock
    transport.update(quarters=Fraction(39, 4), at=1.0, tolerance=Fraction(1, 8), late=Fraction(1, 2))
    assert transport.now().quarters == 10              # a quarter of a beat late: latency, ignored
    transport.update(quarters=4, at=1.0, tolerance=Fraction(1, 8), late=Fraction(1, 2))
    assert transport.now().quarters == 4               # six quarters back: a locate


def test_ardour_follower_without_a_session_file_learns_meter_and_tempo_only_from_a_rolled_bar():
    # a unit test of the follower's logic against Ardour's feedback formats (the real Ardour, with a
    # session file, is tests/test_ardour.py): /position/bbt "BBB|bb|tttt" (1920 ticks a beat), then
    # /position/samples of the same instant, ten reports a beat, 97 BPM 3/4 at 48 kHz
    from stemd import osc
    from stemd.bridge.transport.daw_osc import ArdourFollower

    transport = Transport()
    # registered with the discard port, not Ardour's 3819: a real Ardour there (another test's) would answer
    # with its own feedback, read by the follower's thread beside these reports
    follower = ArdourFollower(transport, daw_port=9, listen_port=0)
    try:
        assert not transport.grid_known.is_set()
        follower.handle(osc.Message("/transport_play", 1))
        seconds_per_beat = Fraction(60, 97)
        for step in range(0, 3 * 3 * 10):                    # three bars of three beats
            beat, tenth = divmod(step, 10)
            bar, beat_in_bar = divmod(beat, 3)
            follower.handle(osc.Message("/position/bbt", f"{bar + 1:03d}|{beat_in_bar + 1:02d}|{tenth * 192:04d}"))
            follower.handle(osc.Message("/position/samples", str(int(48000 * seconds_per_beat * step / 10))))
            if step == 25:                                    # inside bar 1: nothing is known yet
                assert not transport.grid_known.is_set()
        assert transport.grid_known.is_set()
        state = transport.last()
        assert str(state.meter) == "3/4" and abs(float(state.bpm) - 97) < 0.05
    finally:
        follower.stop()
