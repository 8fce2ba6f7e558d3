"""Transport following: the shared state, the fixed follower, and the OSC followers fed by a real OSC
peer (liblo's oscsend) sending what REAPER and DrivenByMoss send."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from fractions import Fraction

import pytest

from stemd.bridge.transport import FollowError, Transport, make_follower
from stemd.bridge.transport.daw_osc import (BitwigFollower, ReaperFollower, TempoFromMotion, parse_bbt,
                                            parse_drivenbymoss_beat)
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


@pytest.mark.parametrize("quarters, meter_quarters", [(Fraction(0), 4), (Fraction(37, 4), 4), (Fraction(29, 8), 3),
                                                      (Fraction(51, 4), Fraction(7, 2))])
def test_drivenbymoss_beat_strings_are_quarters_within_the_bar_in_its_own_format(quarters, meter_quarters):
    # the text exactly as DrivenByMoss's StringUtils.formatMeasuresLong makes it (startOffset 1)
    measure = int(quarters // meter_quarters)
    t = quarters - measure * meter_quarters
    q = int(t // 1)
    t -= q
    sixteenth = int(t // Fraction(1, 4))
    t -= sixteenth * Fraction(1, 4)
    frames = int(t / Fraction(1, 4) * 100)
    text = "%d.%02d.%02d:%02d" % (measure + 1, q + 1, sixteenth + 1, frames)
    bar, into = parse_drivenbymoss_beat(text)
    assert (bar - 1) * meter_quarters + into == quarters, text
    assert parse_drivenbymoss_beat("3.2.50") is None and parse_drivenbymoss_beat("1.01.05:00") is None


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
        oscsend(follower.listen_port, "/time/signature", "s", "6 / 8")        # DrivenByMoss's own spacing
        oscsend(follower.listen_port, "/tempo/raw", "f", "140")
        # bar 4, second quarter, third sixteenth, 50 hundredths of it: 3 bars of 6/8 (3 quarters each) + 1.625
        oscsend(follower.listen_port, "/beat/str", "s", "4.02.03:50")
        assert wait_for(lambda: transport.last().quarters == 3 * 3 + Fraction(13, 8))
        assert str(transport.last().meter) == "6/8" and float(transport.last().bpm) == 140
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
    follower = ArdourFollower(transport, listen_port=0)
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
