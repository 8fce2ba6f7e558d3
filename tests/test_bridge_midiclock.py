"""The MIDI clock follower: tempo from a real jack_midi_clock, position from real Song Position Pointer.

JACK runs on the dummy driver under a server name of its own. jack_midi_clock sends clock at the tempo
of the JACK timebase master (jack_transport, told ``master``, ``tempo 124``, ``play``). The Debian
jack_midi_clock 0.4 with jack_transport as master sends Start/Stop/Continue but no Song Position
Pointer here, so the locate test drives the bridge from a second process that sends real Start, Clock,
Stop, SPP and Continue bytes through a JACK MIDI port (python-rtmidi), and the bridge must follow.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import textwrap
import time
from fractions import Fraction

import pytest

from stemd.bridge.transport import Transport
from stemd.bridge.transport.midiclock import CLOCK, CONTINUE, SONG_POSITION, START, STOP, ClockPosition, ClockTempo
from test_bridge_support import jack, json_lines  # noqa: F401 (fixture)

needs_jack = pytest.mark.skipif(not (shutil.which("jackd") and shutil.which("jack_wait")),
                                reason="JACK (Debian jackd2) is not installed")


# --- logic ------------------------------------------------------------------------------------
def test_tempo_survives_period_jitter():
    rng = random.Random(1)
    tempo, interval, period = ClockTempo(), 60 / (124 * 24), 256 / 48000
    bpm = None
    for i in range(24 * 8):
        ideal = i * interval
        bpm = tempo.tick((ideal // period + 1) * period + rng.uniform(0, 0.0003))  # delivered at period starts
    assert abs(bpm - 124) < 0.1


def test_tempo_follows_a_change_within_two_beats():
    tempo = ClockTempo()
    t = 0.0
    for _ in range(24 * 8):
        t += 60 / (120 * 24)
        tempo.tick(t)
    for _ in range(48):
        t += 60 / (90 * 24)
        bpm = tempo.tick(t)
    assert abs(bpm - 90) < 0.5


def test_start_clock_spp_continue_set_the_position():
    transport = Transport()
    pos = ClockPosition(transport)
    pos.handle([START], 0.0, now=100.0)
    assert not transport.last().playing
    for i in range(24 * 5):  # five quarters: the first clock is beat 1
        pos.handle([CLOCK], i * 0.02, now=100.0 + i * 0.02)
    s = transport.last()
    assert s.playing and s.quarters == Fraction(24 * 5 - 1, 24)
    pos.handle([STOP], 3.0, now=103.0)
    pos.handle([SONG_POSITION, 128 & 0x7F, 128 >> 7], 3.1, now=103.1)  # 128 sixteenths: bar 9
    assert not transport.last().playing and transport.last().bar_index == 8
    pos.handle([CONTINUE], 3.2, now=103.2)
    pos.handle([CLOCK], 3.21, now=103.21)
    assert transport.last().playing and transport.last().quarters == 32


# --- real JACK ----------------------------------------------------------------------------------
def bridge_following(jack, port):
    return jack.start([sys.executable, "-m", "stemd", "bridge", "--daemon", "none", "--follow", "midi-clock",
                       "--midi-in", port, "--print-transport", "--no-stdin"], stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, text=True)


@needs_jack
@pytest.mark.skipif(not (shutil.which("jack_midi_clock") and shutil.which("jack_transport")),
                    reason="jack_midi_clock (Debian jack-midi-clock) or jack_transport is not installed")
def test_jack_midi_clock_at_124_bpm_is_followed_at_124(jack):
    jack.start(["jack_midi_clock", "-d", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    master = jack.start(["jack_transport"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL, text=True)
    bridge = bridge_following(jack, "jack_midi_clock")
    time.sleep(1.0)
    master.stdin.write("master\ntempo 124\nplay\n")
    master.stdin.flush()
    lines = json_lines(bridge, 7.0)
    playing = [l for l in lines if l["playing"]]
    assert len(playing) >= 10, lines[-5:]  # 7 s at 124 BPM is 14 beats
    assert abs(playing[-1]["bpm"] - 124.0) <= 0.1, playing[-1]
    beats = [(l["bar"], l["beat"]) for l in playing[-8:]]
    assert all(b2 == (b1[0], b1[1] + 1) or b2 == (b1[0] + 1, 1) for b1, b2 in zip(beats, beats[1:])), beats


SENDER = textwrap.dedent("""
    import sys, time, rtmidi
    out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, "spp-sender")
    out.open_virtual_port("out")
    time.sleep(float(sys.argv[1]))  # let the bridge connect
    tick = 60 / (124 * 24)
    def clocks(n):
        t = time.monotonic()
        for i in range(n):
            time.sleep(max(0, t + i * tick - time.monotonic()))
            out.send_message([0xF8])
    out.send_message([0xFA]); clocks(24 * 6)                  # play from bar 1 for six beats
    out.send_message([0xFC]); time.sleep(0.3)
    spp = 16 * 8 + 4 * 2                                       # locate: bar 9, beat 3 (sixteenths)
    out.send_message([0xF2, spp & 0x7F, spp >> 7]); time.sleep(0.3)
    print("located", flush=True)
    out.send_message([0xFB]); clocks(24 * 3)                  # play on from there for three beats
    out.send_message([0xFC]); time.sleep(0.5)
""")


@needs_jack
def test_song_position_pointer_over_jack_moves_the_bridge_to_the_right_bar(jack):
    sender = jack.start([sys.executable, "-c", SENDER, "1.5"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.7)
    bridge = bridge_following(jack, "spp-sender")
    lines = json_lines(bridge, 6.5)
    assert sender.wait(5) == 0
    stops = [i for i, l in enumerate(lines) if not l["playing"] and l["bar"] == 9]
    assert stops, lines
    after = [(l["bar"], l["beat"]) for l in lines[stops[0]:] if l["playing"]]
    assert after[:3] == [(9, 3), (9, 4), (10, 1)], lines
