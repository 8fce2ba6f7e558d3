"""Audition: the stemd plugin plays its selected take from the take's start while the host is stopped.

The JACK standalone (build/plugin/stemd) on a JACK dummy server, with the tests' own timebase master at
97 BPM 3/4: a take is made from a MIDI note while the transport rolls; then, with the transport stopped,
the reserved note for audition (5) plays the whole take at the next bar line of the plugin's own clock.
"""

from __future__ import annotations

import re
import time

import numpy as np

from plugin_hosts import (Timebase, first_audible, needs_cc, needs_jalv, plugin_build,  # noqa: F401 (fixture)
                          read_recording, record, recorded_in_time, wait_for)
from stemd.timing import Grid
from test_plugin_jack import jack_app_with, the_take

RATE = 48000
GRID = Grid(97, "3/4")
NOTE_GENERATE, NOTE_AUDITION = 6, 5

pytestmark = [needs_jalv, needs_cc]


def test_audition_plays_the_take_from_its_start_while_the_transport_is_stopped(jack, tmp_path, start_daemon,
                                                                               plugin_build):
    daemon = start_daemon()
    timebase, app = jack_app_with(jack, tmp_path, plugin_build, daemon)
    timebase.tell("locate 0")
    timebase.tell("play")
    time.sleep(0.6)
    app.note(NOTE_GENERATE)                              # 4 bars from the next bar line
    wait_for(lambda: re.search(r"4 bars 97 BPM 3/4 at bar \d+.*-> done", daemon.log), 30, "no take was made")
    timebase.tell("stop")
    time.sleep(1.0)                                      # the last bars reach the plugin
    take = the_take(daemon)
    assert np.abs(take).max() > 0.1

    wav = tmp_path / "audition.wav"
    seconds = (GRID.span_samples(0, 5, RATE)) // RATE + 2  # the take's 4 bars, a bar of waiting, slack
    for attempt in range(2):                 # a second audition where jack_rec never finished the first
        rec = record(jack, [*app.outs, Timebase.PORT], seconds, wav)
        time.sleep(0.3)
        app.note(NOTE_AUDITION)
        if recorded_in_time(jack, rec, 60):
            break
    else:
        raise AssertionError("jack_rec finished neither recording of the audition")
    assert app.proc.poll() is None
    stemd, frames, rate = read_recording(wav)
    assert rate == RATE and (frames == -1).all(), "the transport rolled during the audition"
    first = first_audible(stemd)
    assert first > 0, "the audition played nothing"
    assert first <= int(0.3 * RATE) + GRID.bar_length_samples(0, RATE) + RATE, "the audition started late"
    assert_is_take(stemd, first, take)
    assert np.abs(stemd[first + len(take) + 8 * PERIOD:]).max() < 1e-6     # and then nothing


PERIOD = 256     # the test server's JACK period (jackd -p 256)


def assert_is_take(recording: np.ndarray, first: int, take: np.ndarray) -> None:
    """From ``first`` on, the recording is ``take`` sample for sample, except for whole JACK periods the
    recorder lost on a loaded machine (jack_rec drops a period when its disk thread falls behind): each
    recorded period must be the take's next samples, or those a few periods later."""
    pos, off, lost = first, 0, 0
    while off < len(take) and pos < len(recording):
        end = min((pos // PERIOD + 1) * PERIOD, len(recording), pos + len(take) - off)   # to this period's end
        seg = recording[pos:end]
        for skip in range(4):
            want = take[off + skip * PERIOD: off + skip * PERIOD + len(seg)]
            if len(want) == len(seg) and np.abs(seg - want).max() < 1e-4:     # (jack_rec: 32-bit ints)
                break
        else:
            raise AssertionError(f"the recording {pos - first} samples in is not the take ({off} samples in)")
        lost += skip
        off += skip * PERIOD + len(seg)
        pos = end
    assert off >= len(take), "the recording ends inside the take"
    assert lost <= 4, f"the recorder lost {lost} periods"
