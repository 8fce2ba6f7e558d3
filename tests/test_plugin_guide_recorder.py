"""The plugin's guide recorder (plugin_host/plugin/guide_recorder.cpp) against the bridge's (bridge/guide_in.py).

build/plugin/guide_test drives the recorder as run() does (blocks of frames on the host's timeline, MIDI
events at frames in them); the same performance, as the bridge's recorder hears it from JACK (each cycle's
position in exact quarters, each event at its cycle's position plus its frame), must give the same Standard
MIDI File byte for byte: where the recording starts, which notes it keeps, where it cuts them, the ticks,
the program changes. Then what only the plugin does: stopping on a stop, a locate or a tempo change, the
note limit, and the events it takes from the plugin's triggers while armed.
"""

from __future__ import annotations

import base64
import random
import subprocess
from fractions import Fraction
from pathlib import Path

import pytest

from bridge.guide_in import GuideRecording
from bridge.transport.jack import Cycle
from stemd.guides.notes import GuideError
from stemd.guides.smf import read_smf
from stemd.timing import Grid, Meter

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_SRC = ROOT / "plugin_host" / "plugin"

pytestmark = pytest.mark.skipif(
    subprocess.run(["sh", "-c", "command -v make && command -v g++"], capture_output=True).returncode != 0,
    reason="the recorder's test needs make and g++ (Debian: build-essential)")


@pytest.fixture(scope="module")
def guide_test() -> Path:
    out = ROOT / "build" / "plugin" / "guide_test"
    proc = subprocess.run(["make", "-C", str(PLUGIN_SRC), str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def run_script(guide_test: Path, lines: list[str]) -> list[str]:
    proc = subprocess.run([str(guide_test)], input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def perform(seed: int, bpm: Fraction, meter: str, rate: int, bars: int, block: int, first_ts: int):
    """A random performance: (sample, bytes) events from a little before the first bar line to past the
    last one, on and off the grid, some held past the end, a program change, two channels."""
    rng = random.Random(seed)
    m = Meter.parse(meter)
    spq = Fraction(rate * 60) / bpm
    bar_q = m.bar_quarters
    first_bar = -(-Fraction(first_ts) / spq // bar_q)          # ceil: the first bar line at or after first_ts
    begin = first_bar * bar_q * spq
    end = (first_bar + bars) * bar_q * spq
    events = []
    for _ in range(rng.randint(5, 40)):
        channel = rng.choice([0, 0, 0, 3])
        pitch = rng.randint(24, 100)
        on = begin + Fraction(rng.randint(-4000, int(end - begin) + 3000))
        length = rng.randint(1, int(bar_q * spq))
        on_s, off_s = int(on), int(on) + length
        if on_s < first_ts:
            continue
        events.append((on_s, bytes([0x90 | channel, pitch, rng.randint(1, 127)])))
        events.append((off_s, bytes([0x80 | channel, pitch, 0]) if rng.random() < 0.5 else bytes([0x90 | channel, pitch, 0])))
    events.append((int(begin) + rng.randint(0, 3000), bytes([0xC0, rng.randint(0, 127)])))
    events.sort(key=lambda e: e[0])
    return events, int(end) + 2 * block


def python_guide(events, bpm: Fraction, meter: str, rate: int, bars: int, block: int, first_ts: int, last_ts: int):
    spq = Fraction(rate * 60) / bpm
    rec = GuideRecording(bars=bars)
    i = 0
    for ts in range(first_ts, last_ts, block):
        rec.cycle(Cycle(Fraction(ts) / spq, bpm, Meter.parse(meter), True, rate))
        while i < len(events) and events[i][0] < ts + block:
            rec.event(Fraction(events[i][0]) / spq, events[i][1])
            i += 1
    return rec.wait(0)


def plugin_lines(events, bpm: Fraction, meter: str, rate: int, bars: int, block: int, first_ts: int, last_ts: int):
    n, d = Meter.parse(meter).numerator, Meter.parse(meter).denominator
    lines = [f"grid {bpm.numerator} {bpm.denominator} {n} {d} {rate}", f"arm {bars}"]
    i = 0
    for ts in range(first_ts, last_ts, block):
        lines.append(f"block {ts} {block} 1")
        while i < len(events) and events[i][0] < ts + block:
            lines.append(f"ev {events[i][0] - ts} {events[i][1].hex()}")
            i += 1
        lines.append("end")
    lines.append("finish")
    return lines


CASES = [  # bpm, meter, rate, bars, block
    (Fraction(97), "3/4", 48000, 4, 256),
    (Fraction(97), "7/8", 48000, 3, 1024),
    (Fraction(275, 2), "5/8", 44100, 2, 512),
    (Fraction(120), "4/4", 96000, 1, 64),
]


@pytest.mark.parametrize("bpm,meter,rate,bars,block", CASES)
def test_the_plugin_records_the_same_smf_as_the_bridge_byte_for_byte(guide_test, bpm, meter, rate, bars, block):
    for seed in range(12):
        first_ts = random.Random(seed).randint(0, 3 * rate)
        events, last_ts = perform(seed, bpm, meter, rate, bars, block, first_ts)
        expected = python_guide(events, bpm, meter, rate, bars, block, first_ts, last_ts)
        out = run_script(guide_test, plugin_lines(events, bpm, meter, rate, bars, block, first_ts, last_ts))
        smf = next(line for line in out if line.startswith(("smf ", "error ", "phase ")))
        assert smf.startswith("smf "), f"seed {seed}: {smf}"
        assert bytes.fromhex(smf[4:]) == expected.smf, (
            f"seed {seed} at {bpm} BPM {meter}: the plugin's notes "
            f"{[(n.start, n.pitch) for n in read_smf(bytes.fromhex(smf[4:]))][:8]} against the bridge's "
            f"{[(n.start, n.pitch) for n in expected.notes][:8]}")
        assert f"from {expected.start_bar} bars {bars} notes {len(expected.notes)}" in out


def test_recording_starts_on_the_next_bar_line_and_ends_on_a_bar_line_at_97_bpm_3_4(guide_test):
    grid, rate = Grid(97, "3/4"), 48000
    bar2, bar3, bar4 = (grid.bar_start_sample(b, rate) for b in (1, 2, 3))
    ts = bar2 + 1000                                  # rolling mid-bar 2: the recording is bar 3
    lines = ["grid 97 1 3 4 48000", "arm 1"]
    lines += [f"block {ts} 512 1", f"ev 10 {bytes([0x90, 60, 90]).hex()}", "end"]   # before bar 3: not kept
    t = ts + 512
    while t < bar4 + 512:
        lines += [f"block {t} 512 1"]
        if t <= bar3 < t + 512:
            lines += [f"ev {bar3 - t} {bytes([0x90, 64, 90]).hex()}"]               # on the bar line
        lines += ["end"]
        t += 512
    lines.append("finish")
    out = run_script(guide_test, lines)
    dones = [line for line in out if line.startswith("block ")]
    assert dones[0] == "block 2 done 0"
    assert dones[-1] == "block 3 done 1"                                              # done at bar 4's line
    notes = read_smf(bytes.fromhex(next(line for line in out if line.startswith("smf "))[4:]))
    assert [(n.start, n.length, n.pitch) for n in notes] == [(0, Fraction(3), 64)]   # cut at the bar's end
    assert "from 2 bars 1 notes 1" in out


@pytest.mark.parametrize("interrupt,why", [
    ("block {t} 512 0", 2),                 # the transport stopped
    ("block {back} 512 1", 3),              # a locate back by more than two blocks
    ("block {far} 512 1", 3),               # a locate forwards by more than a second
    ("grid 98 1 3 4 48000\nblock {t} 512 1", 4),   # another tempo
    ("stop\nblock {t} 512 1", 1),           # stopped by the producer
])
def test_a_recording_interrupted_keeps_nothing_and_says_why(guide_test, interrupt, why):
    lines = ["grid 97 1 3 4 48000", "arm 2", "block 2048 512 1", f"ev 3 {bytes([0x90, 60, 90]).hex()}", "end"]
    lines += interrupt.format(t=2560, back=2560 - 1025, far=2560 + 48001).split("\n")
    lines += ["end", "finish", "arm 2"]
    out = run_script(guide_test, lines)
    assert f"phase 4 why {why}" in out
    assert out[-1] == "armed 1"               # idle again: it can be armed once more


def test_a_late_cycle_that_skips_ahead_up_to_a_second_goes_on_recording(guide_test):
    lines = ["grid 97 1 3 4 48000", "arm 1", "block 0 512 1", f"ev 3 {bytes([0x90, 60, 90]).hex()}", "end",
             "block 48512 512 1", f"ev 0 {bytes([0x80, 60, 0]).hex()}", "end", "block 89000 512 1", "end", "finish"]
    out = run_script(guide_test, lines)
    notes = read_smf(bytes.fromhex(next(line for line in out if line.startswith("smf "))[4:]))
    off_tick = round(Fraction(48512 * 97 * 960, 48000 * 60))       # the note-off at its own sample, after the skip
    assert [(n.pitch, n.start, n.length) for n in notes] == [(60, 0, Fraction(off_tick, 960))]


def test_a_repeated_cycle_goes_on_recording_with_the_hosts_samples(guide_test):
    """JACK's dummy driver under load repeats a cycle's frame, then skips the next: the recording is kept,
    and the repeated block's events stay at the host's samples (where a player on the same transport, as
    tests/jack_notes.c, played them: tests/test_plugin_guide.py holds them to 2 ticks)."""
    on, off = bytes([0x90, 64, 90]).hex(), bytes([0x80, 64, 0]).hex()
    lines = ["grid 97 1 3 4 48000", "arm 1", "block 0 256 1", "end", "block 256 256 1", "end",
             "block 256 256 1", f"ev 10 {on}", "end",           # the frame of the block before, again
             "block 768 256 1", f"ev 10 {off}", "end", "block 40000 256 1", "end", "block 80000 256 1", "end",
             "block 89000 256 1", "end", "finish"]
    out = run_script(guide_test, lines)
    notes = read_smf(bytes.fromhex(next(line for line in out if line.startswith("smf "))[4:]))
    tick = lambda sample: Fraction(round(Fraction(sample * 97 * 960, 48000 * 60)), 960)   # noqa: E731
    assert [(n.pitch, n.start, n.length) for n in notes] == [(64, tick(266), tick(778) - tick(266))]


@pytest.mark.parametrize("told", [True, False])
def test_a_recording_begun_on_a_tempo_not_yet_sure_begins_again_on_the_tempo_told(guide_test, told):
    """Armed before the roll with a JACK master counting 7/8's eighths (194 for 97 quarters), the JACK app reads
    194 until the roll's first blocks tell it: the recording begun on bar 1 of the guess begins again on the
    next bar line at 97 and keeps the notes from there. A tempo that changes while still unsure stops it."""
    on, off = bytes([0x90, 64, 90]).hex(), bytes([0x80, 64, 0]).hex()
    lines = ["grid 194 1 7 8 48000", "arm 1", "block 0 256 1 0", f"ev 5 {on}", "end"]
    lines += [line for k in range(1, 16) for line in (f"block {256 * k} 256 1 0", "end")]
    lines += ["grid 97 1 7 8 48000"]
    bar2, bar3 = (Grid(97, "7/8").bar_start_sample(b, 48000) for b in (1, 2))
    t = 256 * 16
    while t < bar3 + 256:
        lines += [f"block {t} 256 1 {1 if told else 0}"]
        if t <= bar2 + 1000 < t + 256:
            lines += [f"ev {bar2 + 1000 - t} {on}"]
        if t <= bar2 + 30000 < t + 256:
            lines += [f"ev {bar2 + 30000 - t} {off}"]
        lines += ["end"]
        t += 256
    out = run_script(guide_test, lines + ["finish"])
    if not told:
        assert "phase 4 why 4" in out            # another tempo, and still no surer: stopped
        return
    assert "from 1 bars 1 notes 1" in out, out[-3:]
    notes = read_smf(bytes.fromhex(next(line for line in out if line.startswith("smf "))[4:]))
    tick = lambda sample: Fraction(round(Fraction(sample * 97 * 960, 48000 * 60)), 960)   # noqa: E731
    assert [(n.pitch, n.start, n.length) for n in notes] == [(64, tick(1000), tick(30000) - tick(1000))]


def test_a_recording_with_no_note_or_too_many_notes_makes_no_guide(guide_test):
    empty = run_script(guide_test, ["grid 97 1 7 8 48000", "arm 1", "block 0 110000 1", "end", "finish"])
    assert "error no note was played in bars 1-1: no guide was made" in empty
    lines = ["grid 97 1 7 8 48000", "arm 1", "block 0 48000 1"]
    lines += [f"ev {i} {bytes([0x90, 60, 90]).hex()}" for i in range(4097)]
    lines += ["end", "finish"]
    out = run_script(guide_test, lines)
    assert "phase 4 why 5" in out             # more than 4,096 notes


def test_armed_and_stopped_the_recorder_waits_and_takes_the_events_from_the_triggers(guide_test):
    out = run_script(guide_test, ["grid 97 1 3 4 48000", "block 0 512 1", "end", "arm 2", "block 512 512 0", "end",
                                  "block 1024 512 0", "end", "stop", "block 1536 512 1", "end"])
    assert out == ["listening 0", "block 0 done 0", "armed 1", "listening 1", "block 1 done 0", "listening 1",
                   "block 1 done 0", "listening 0", "block 0 done 0"]


def test_the_guide_state_round_trips_through_base64(guide_test):
    for data in (b"M", b"MT", b"MTh", b"MThd\x00\x00\x00\x06\xff\x00", bytes(range(256))):
        text, ok = run_script(guide_test, [f"b64 {data.hex()}"])[0].split()[1:]
        assert text == base64.b64encode(data).decode() and ok == "1"



def test_a_guide_of_the_recorder_is_what_the_daemon_reads(guide_test):
    """Its SMF goes through the daemon's reader (stemd.guides.smf) with every note where it was played."""
    rate, spq = 48000, Fraction(48000 * 60, 97)
    lines = ["grid 97 1 7 8 48000", "arm 2"]
    played = [(Fraction(0), 60), (Fraction(7, 4) + Fraction(1, 7), 64), (Fraction(5), 67)]   # 7/8: 3.5 quarters a bar
    events = sorted([(int(q * spq), bytes([0x90, p, 100])) for q, p in played] +
                    [(int(q * spq) + 2000, bytes([0x80, p, 0])) for q, p in played])
    ts = 0
    while ts < int(7 * spq) + 1024:
        lines.append(f"block {ts} 1024 1")
        lines += [f"ev {s - ts} {b.hex()}" for s, b in events if ts <= s < ts + 1024]
        lines.append("end")
        ts += 1024
    lines.append("finish")
    out = run_script(guide_test, lines)
    notes = read_smf(bytes.fromhex(next(line for line in out if line.startswith("smf "))[4:]))
    assert [n.pitch for n in notes] == [60, 64, 67]
    for note, (q, _) in zip(notes, played):
        assert abs(note.start - Fraction(int(q * spq)) / spq) <= Fraction(1, 1920)   # rounded once, to 1/960
    with pytest.raises(GuideError):
        GuideRecording(bars=0)
