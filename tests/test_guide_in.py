"""A guide played in: ``stemd bridge --guide-in PORT --guide-bars N`` on a real JACK MIDI port.

JACK runs on the dummy driver (48 kHz, 256 frames); tests/jack_timebase.c is the timebase master (97 BPM
3/4, 7/8); tests/jack_notes.c plays notes at exact transport frames of known bar/beat positions, off the
grid too. The bridge follows JACK's transport (``--follow jack``) and records from jack_notes' port; the
SMF it writes must hold each note within 1/96 of a quarter of where it was played, relative to the bars.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import pytest

from stemd.bridge.guide_in import GuideRecording
from stemd.bridge.transport.jack import Cycle, TempoUnit, bbt_cycle
from stemd.guides import GuideError
from stemd.guides.smf import read_smf
from stemd.timing import Meter
from plugin_hosts import TESTS, Timebase, build_jack_timebase, compile_c, read_line, wait_connected, wait_for
from test_bridge_support import jack, json_lines, peer  # noqa: F401  (fixtures)

RATE = 48000
SLACK = Fraction(1, 96)   # quarters


# --- logic: positions from JACK's transport, notes from events ----------------------------------------
def test_bbt_of_a_timebase_master_is_read_in_quarters_with_the_tempo_in_quarters():
    # 7/8 at 97 quarters per minute: JACK counts eighths (194 per minute); bar 3, eighth 5, tick 960/1920
    pos = {"frame_rate": RATE, "frame": 123, "bar": 3, "beat": 5, "tick": 960, "bar_start_tick": 0.0,
           "beats_per_bar": 7.0, "beat_type": 8.0, "ticks_per_beat": 1920.0, "beats_per_minute": 194.0}
    cycle = bbt_cycle(pos, True, Fraction(120), Meter.parse("4/4"))
    assert (cycle.quarters, cycle.bpm, str(cycle.meter)) == (Fraction(7) + Fraction(9, 4), 97, "7/8")
    assert cycle.at_offset(240) == cycle.quarters + Fraction(240 * 97, 60 * RATE)
    # no timebase master: the frame at the spec's tempo
    plain = bbt_cycle({"frame_rate": RATE, "frame": RATE * 3}, True, Fraction(97), Meter.parse("3/4"))
    assert plain.quarters == Fraction(3 * 97, 60) and str(plain.meter) == "3/4" and not plain.bbt
    # a master whose meter or tempo makes no sense is not read (and raises nothing in JACK's process thread)
    for nonsense in ({"beats_per_bar": 0.0}, {"ticks_per_beat": 0.0}, {"beats_per_minute": float("inf")}):
        odd = bbt_cycle({**pos, **nonsense}, True, Fraction(97), Meter.parse("3/4"))
        assert not odd.bbt and odd.quarters == Fraction(123 * 97, 60 * RATE), nonsense


def master_position(frame: int, meter: Meter, quarters: bool) -> dict:
    """tests/jack_timebase.c's position at ``frame`` for 97 BPM (bar 1 at frame 0, whole ticks), its beats per
    minute in beats of beat_type (JACK's example) or in quarters (Ardour 7)."""
    beats = Fraction(frame * 97, 60 * RATE) / meter.unit_quarters
    bar, in_bar = divmod(beats, meter.numerator)
    beat = int(in_bar)
    return {"frame_rate": RATE, "frame": frame, "bar": int(bar) + 1, "beat": beat + 1,
            "tick": int((in_bar - beat) * 1920), "bar_start_tick": 0.0, "beats_per_bar": float(meter.numerator),
            "beat_type": float(meter.denominator), "ticks_per_beat": 1920.0,
            "beats_per_minute": 97.0 if quarters else 97.0 * meter.denominator / 4}


@pytest.mark.parametrize("meter", ["7/8", "5/16", "3/2", "3/4"])
@pytest.mark.parametrize("quarters", [False, True])
def test_the_tempo_unit_of_a_master_is_told_by_how_its_bars_advance_against_the_frames(meter, quarters):
    # a roll from the middle of bar 2 in 256-frame cycles: bar/beat/tick is read the same either way, the
    # tempo in quarters once 16 cycles and a quarter of a beat have gone by
    meter = Meter.parse(meter)
    unit = TempoUnit()
    start = 120_000
    cycles = [bbt_cycle(master_position(start + 256 * k, meter, quarters), True, Fraction(120), Meter.parse("4/4"),
                        unit, 256) for k in range(200)]
    exact = [Fraction((start + 256 * k) * 97, 60 * RATE) for k in range(200)]
    assert all(0 <= q - c.quarters < meter.unit_quarters / 1920 for q, c in zip(exact, cycles))
    told = next(k for k, c in enumerate(cycles) if c.bpm == 97)
    assert all(c.bpm == 97 for c in cycles[told:])
    assert told <= 64 if meter.denominator != 4 else told == 0
    if quarters and meter.denominator != 4:          # until told, JACK's example's reading: half or twice
        assert cycles[0].bpm == Fraction(97 * 4, meter.denominator)
    # a steady roll's later cycles keep it; a locate starts a new measure and the unit stays meanwhile
    later = bbt_cycle(master_position(9_000, meter, quarters), True, Fraction(120), Meter.parse("4/4"), unit, 256)
    assert later.bpm == 97


@pytest.mark.parametrize("quarters", [False, True])
def test_the_tempo_unit_is_told_on_a_roll_whose_cycles_jack_repeats_and_skips(quarters):
    # JACK's dummy driver under load: every 6th cycle repeats the last one's frame and the next skips a cycle,
    # and a locate comes half-way. No 16 cycles in a row follow on from each other; summed, they tell it
    meter, unit = Meter.parse("7/8"), TempoUnit()
    frames, frame = [], 60_000
    for k in range(160):
        if k == 80:
            frame = 300_000                                  # a locate while rolling
        elif k % 6 == 5:
            frame -= 256                                      # JACK gives the last cycle's frame again ...
        elif k % 6 == 0 and k:
            frame += 256                                      # ... and skips the next
        frames.append(frame)
        frame += 256
    cycles = [bbt_cycle(master_position(f, meter, quarters), True, Fraction(120), Meter.parse("4/4"), unit, 256)
              for f in frames]
    told = next(k for k, c in enumerate(cycles) if c.bpm == 97)
    assert told <= 40 and all(c.bpm == 97 for c in cycles[told:]), [c.bpm for c in cycles]
    # a tempo change measures anew: the unit told stays meanwhile
    changed = {**master_position(400_000, meter, quarters), "beats_per_minute": 150.0}
    assert bbt_cycle(changed, True, Fraction(120), Meter.parse("4/4"), unit, 256).bpm == (150 if quarters else 75)


def test_with_another_follower_a_cycle_is_placed_on_the_followed_transport_at_its_first_frame():
    # --follow midi-clock (or a DAW's OSC) with --guide-in: the client only reads MIDI; a cycle that began
    # 0.1 s before the transport was asked sits 0.1 s of 97 BPM earlier than "now"
    from types import SimpleNamespace

    from stemd.bridge.transport import Transport
    from stemd.bridge.transport.jack import JackClient

    now = [50.0]
    transport = Transport(clock=lambda: now[0])
    transport.update(bpm=97, meter="7/8", quarters=Fraction(10), playing=True, at=50.0)
    now[0] = 51.0
    client = JackClient.__new__(JackClient)
    client.transport, client.follow, client.client = transport, False, SimpleNamespace(samplerate=RATE)
    cycle = client._cycle(started=50.9)
    assert cycle.playing and str(cycle.meter) == "7/8"
    assert abs(cycle.quarters - (10 + Fraction(9, 10) * Fraction(97, 60))) < Fraction(1, 10**9)
    transport.positioned.clear()                    # a clock joined mid-song: no position yet, no recording
    assert not client._cycle(started=50.9).playing


def cycle_at(quarters, meter="3/4", playing=True) -> Cycle:
    return Cycle(Fraction(quarters), Fraction(97), Meter.parse(meter), playing, RATE)


def on(pitch, velocity=100):
    return bytes([0x90, pitch, velocity])


def off(pitch):
    return bytes([0x80, pitch, 0])


def test_a_recording_starts_on_the_next_bar_line_keeps_exact_positions_and_cuts_at_its_last_bar_line():
    rec = GuideRecording(bars=2)
    rec.event(Fraction(1), on(50))                       # before the transport rolls: not heard
    rec.cycle(cycle_at(Fraction(7, 2)))                  # 3/4 rolling mid-bar 2: recording starts at bar 3 (q 6)
    assert rec.start == 6 and rec.end == 12 and rec.start_bar == 2
    rec.event(Fraction(5), on(60))                       # before the first bar line: dropped
    rec.event(Fraction(6) + Fraction(37, 960), off(60))
    rec.event(Fraction(7) + Fraction(37, 960), on(62))  # beat 2 + 37/960 of the first bar
    rec.event(Fraction(8) + Fraction(1, 3), off(62))
    rec.event(Fraction(11) + Fraction(1, 2), on(65))     # still held at the end: cut at q 12
    rec.cycle(cycle_at(Fraction(11, 1)))
    assert not rec.done.is_set()
    rec.cycle(cycle_at(12))
    guide = rec.wait(0)
    assert [(n.start, n.length, n.pitch) for n in guide.notes] == [
        (Fraction(1) + Fraction(37, 960), Fraction(4, 3) - Fraction(37, 960), 62), (Fraction(11, 2), Fraction(1, 2), 65)]
    assert [(n.start, n.pitch) for n in read_smf(guide.smf)] == [(n.start, n.pitch) for n in guide.notes]


def test_a_recording_with_no_note_is_an_error_and_no_guide():
    rec = GuideRecording(bars=1, source="stemd-notes:out")
    rec.cycle(cycle_at(0))
    rec.cycle(cycle_at(3))
    with pytest.raises(GuideError, match="no note was played on stemd-notes:out in bars 1-1"):
        rec.wait(0)


def test_more_notes_than_a_guide_holds_is_too_large():
    rec = GuideRecording(bars=1)
    rec.cycle(cycle_at(0))
    for i in range(4097):
        rec.event(Fraction(i, 4097), on(60))
    with pytest.raises(GuideError, match="more than 4096 notes") as e:
        rec.wait(0)
    assert e.value.code == "too_large"


def test_a_take_with_a_guide_is_kept_in_the_history_and_its_reroll_follows_the_same_guide(tmp_path):
    from stemd.bridge.history import TakeHistory
    from stemd.guides import Note
    from stemd.guides.smf import write_smf
    from stemd.lifecycle import TakeRecord, reroll

    smf = write_smf([Note(Fraction(1, 3), Fraction(1), 60)], Fraction(97), (7, 8))
    TakeHistory(tmp_path).add(TakeRecord("t1", {"prompt": "keys", "bars": 2, "bpm": 97, "meter": "7/8",
                                                 "seed": 4, "guide": smf}))
    again = TakeHistory(tmp_path).get("t1")              # read back from the folder's history file
    request = again.request()
    assert request.guide == smf and request.meter.denominator == 8
    ask = reroll(again)
    assert ask.params["guide"] == smf and ask.params["seed"] != 4


def test_a_guide_given_to_the_bridge_goes_with_takes_asked_by_command_too(peer, tmp_path):
    # not only the --generate take: one asked on stdin (or OSC, or a pad) follows the guide as well; the peer
    # keeps each request and refuses it ("fail please"), as a daemon whose model follows no guide would
    from stemd.guides import Note
    from stemd.guides.smf import write_smf

    part = tmp_path / "part.mid"
    part.write_bytes(write_smf([Note(Fraction(1, 2), Fraction(1), 64)], Fraction(97), (7, 8)))
    bridge = subprocess.Popen([sys.executable, "-m", "stemd", "bridge", "--daemon", f"127.0.0.1:{peer.port}",
                               "--follow", "fixed:97:7/8", "--guide", str(part), "--out", str(tmp_path),
                               "--command-port", "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    out, err = bridge.communicate('generate "fail please" 2\nquit\n', timeout=60)
    assert bridge.returncode == 0, err
    wait_for(lambda: peer.requests, 10, "the peer got no request")     # (read on the peer's own thread)
    assert len(peer.requests) == 1 and peer.requests[0].guide == part.read_bytes(), out


# --- real JACK ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def helpers(tmp_path_factory):
    if importlib.util.find_spec("jack") is None:
        pytest.skip("the JACK-Client package (stemd[jack]) is not installed")
    folder = tmp_path_factory.mktemp("jack-helpers")
    return build_jack_timebase(folder), compile_c(TESTS / "jack_notes.c", folder / "jack_notes", "-ljack")


class Notes:
    """tests/jack_notes.c: plays notes at transport frames."""

    PORT = "stemd-notes:out"

    def __init__(self, jack, exe: Path):
        self.proc = jack.start([str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1)
        assert read_line(self.proc, 15).strip() == "ready", "jack_notes did not start"

    def play(self, notes: list[tuple[int, int, int]]) -> None:
        """``(on_frame, off_frame, pitch)`` notes, armed: each leaves on its frame once the transport rolls."""
        self.proc.stdin.write("".join(f"note {a} {b} {p} 100\n" for a, b, p in notes) + "arm\n")
        self.proc.stdin.flush()
        assert read_line(self.proc, 30).strip() == f"ok arm {2 * len(notes)}"

    def sent(self) -> tuple[int, int]:
        self.proc.stdin.write("sent\n")
        self.proc.stdin.flush()
        _, _, sent, late = read_line(self.proc, 10).split()
        return int(sent), int(late)


def frame_of(quarters: Fraction, bpm: int) -> int:
    return round(quarters * 60 * RATE / bpm)


def bridge_recording(jack, tmp_path, *extra):
    return jack.start([sys.executable, "-m", "stemd", "bridge", "--follow", "jack", "--guide-in", "stemd-notes",
                       "--out", str(tmp_path), "--no-stdin", "--command-port", "0", "--timeout", "90", "--once",
                       *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def played_positions(meter: Meter) -> list[Fraction]:
    """Where notes are played, in quarters from the first recorded bar line: bar lines, beats, and off-grid
    positions (beat 2 + 37/960, a triplet, 1/7 of a unit before a bar line)."""
    bar, unit = meter.bar_quarters, meter.unit_quarters
    return [Fraction(0), unit + Fraction(37, 960), 2 * unit + Fraction(1, 3), bar - unit / 7, bar,
            bar + unit + Fraction(811, 960) * unit, 2 * bar - Fraction(1, 96) * 3]


@pytest.mark.parametrize("meter", ["3/4", "7/8"])
def test_a_guide_played_on_a_jack_port_is_written_where_it_was_played(jack, helpers, peer, tmp_path, meter):
    timebase_exe, notes_exe = helpers
    meter, bpm = Meter.parse(meter), 97
    bar = meter.bar_quarters
    timebase, notes = Timebase(jack, timebase_exe, bpm, meter), Notes(jack, notes_exe)
    timebase.tell(f"locate {frame_of(bar * 3 + bar / 2, bpm)}")       # mid-bar 4: recording starts at bar 5
    first = 4 * bar
    played = played_positions(meter)
    sent = [(frame_of(first + q, bpm), frame_of(first + q + Fraction(1, 8), bpm), 60 + i) for i, q in enumerate(played)]
    sent.append((frame_of(first - bar / 4, bpm), frame_of(first - bar / 8, bpm), 40))       # before: not in the guide
    sent.append((frame_of(first + 2 * bar, bpm), frame_of(first + 2 * bar + 1, bpm), 41))   # after: not either
    notes.play(sent)
    # then a take: the peer keeps the request and refuses it at once ("fail please"), as a daemon whose model
    # follows no guide would; what matters here is what the bridge asked for
    bridge = bridge_recording(jack, tmp_path, "--daemon", f"127.0.0.1:{peer.port}", "--guide-bars", "2",
                              "--generate", "fail please", "--seed", "5")
    wait_connected(jack.env, Notes.PORT)
    timebase.tell("play")
    out, err = bridge.communicate(timeout=120)
    assert bridge.returncode == 2 and "the engine fell over" in err, err
    assert notes.sent()[1] == 0                     # every note left jack_notes on its own frame
    lines = out.splitlines()
    assert lines[0] == "guide: recording bars 5-6 from stemd-notes:out", out
    mid = Path(lines[1].split()[1])
    assert mid.parent == tmp_path and mid.suffix == ".mid", out

    import mido

    smf = mido.MidiFile(mid)
    assert smf.ticks_per_beat == 960
    metas = {m.type: m for m in smf.tracks[0] if m.is_meta}
    assert (metas["time_signature"].numerator, metas["time_signature"].denominator) == (meter.numerator,
                                                                                          meter.denominator)
    assert abs(mido.tempo2bpm(metas["set_tempo"].tempo) - bpm) < 1e-3
    got = read_smf(mid.read_bytes())
    assert [n.pitch for n in got] == [60 + i for i in range(len(played))], got
    errors = [abs(n.start - q) for n, q in zip(got, played)]
    print(f"{meter}: largest error {float(max(errors)) * 960:.2f} ticks of 960 per quarter "
          f"({float(max(errors) * 60 / bpm) * 1000:.3f} ms)")
    assert max(errors) <= SLACK, [float(e) for e in errors]
    # positions are frame-exact (the SMF's rounding is half a tick): a note a JACK cycle late (256 frames,
    # 8.3 ticks at 97 BPM) would be within 1/96 and still wrong
    assert max(errors) <= Fraction(2, 960), [float(e) for e in errors]
    assert got[-1].start + got[-1].length <= 2 * bar          # held past the end: cut on the last bar line
    # the take asked for next follows the guide: the same SMF, as many bars
    req = peer.requests[0]
    assert req.guide == mid.read_bytes() and req.bars == 2 and req.start_bar >= 6


def test_no_such_port_names_the_ports_there_are(jack, helpers, tmp_path):
    Notes(jack, helpers[1])
    out = jack.start([sys.executable, "-m", "stemd", "bridge", "--daemon", "none", "--follow", "jack", "--guide-in",
                      "keyboard", "--out", str(tmp_path), "--no-stdin", "--once"],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = out.communicate(timeout=60)
    assert out.returncode == 2
    assert err.strip().splitlines() == [
        "stemd bridge: no JACK MIDI port 'keyboard'; the JACK MIDI outputs here: stemd-notes:out"], err


@pytest.mark.parametrize("convention", ["beats", "quarters"])
def test_the_jack_follower_reads_tempo_meter_and_bars_from_the_timebase_master(jack, helpers, convention):
    # 7/8 at 97 quarters per minute: JACK's example master says 194 eighths per minute, Ardour 7's 97 quarters;
    # the bridge says 97 either way (told within the roll's first cycles)
    timebase = Timebase(jack, helpers[0], 97, Meter.parse("7/8"), convention)
    timebase.tell(f"locate {frame_of(Fraction(7, 2) * 2, 97)}")      # bar 3
    bridge = jack.start([sys.executable, "-m", "stemd", "bridge", "--daemon", "none", "--follow", "jack",
                         "--print-transport", "--no-stdin", "--command-port", "0"], stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True)
    stopped = json_lines(bridge, 30.0, first_only=True)        # the bridge's start (Python, JACK) is slow under load
    stopped += json_lines(bridge, 1.0)
    timebase.tell("play")
    rolling = [line for line in json_lines(bridge, 4.0) if line["playing"]]
    timebase.tell("stop")
    assert stopped and (stopped[-1]["bar"], stopped[-1]["beat"], stopped[-1]["playing"]) == (3, 1, False), stopped
    # bar 3's downbeat may be printed before the unit is told (16 cycles: 85 ms in), then again at 97
    told = next(i for i, line in enumerate(rolling) if line["bpm"] == 97.0)
    assert (told <= 1 if convention == "quarters" else told == 0) and rolling[0]["bar"] == 3 and rolling[0]["beat"] == 1, rolling
    rolling = rolling[told:]
    beats = [(line["bar"], line["beat"]) for line in rolling]
    assert beats[:8] == [(3, 1), (3, 2), (3, 3), (3, 4), (3, 5), (3, 6), (3, 7), (4, 1)], rolling
    assert all(line["bpm"] == 97.0 and line["meter"] == "7/8" for line in rolling), rolling


@pytest.mark.skipif(not shutil.which("jack_midi_clock"), reason="jack_midi_clock (Debian jack-midi-clock) is not installed")
def test_with_a_midi_clock_the_guide_is_recorded_in_the_bars_of_the_given_meter(jack, helpers, tmp_path):
    # --follow midi-clock --meter 3/4: a MIDI clock says no meter; the bars and the SMF are 3/4 and the tempo is
    # the clock's. Positions are only as exact as the clock follower (it trails the clock by its ticks'
    # delivery: a note on the first bar line may read as before it), so they are not held to 1/96 here.
    meter, bpm = Meter.parse("3/4"), 97
    bar = meter.bar_quarters
    timebase, notes = Timebase(jack, helpers[0], bpm, meter), Notes(jack, helpers[1])
    jack.start(["jack_midi_clock", "-d", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    timebase.tell(f"locate {frame_of(bar * 3 + bar / 2, bpm)}")
    played = played_positions(meter)
    notes.play([(frame_of(4 * bar + q, bpm), frame_of(4 * bar + q + Fraction(1, 8), bpm), 60 + i)
                for i, q in enumerate(played)])
    bridge = jack.start([sys.executable, "-m", "stemd", "bridge", "--follow", "midi-clock", "--midi-in",
                         "jack_midi_clock", "--meter", "3/4", "--guide-in", "stemd-notes", "--guide-bars", "2",
                         "--daemon", "none", "--once", "--out", str(tmp_path), "--no-stdin", "--command-port", "0",
                         "--timeout", "90"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_connected(jack.env, Notes.PORT)
    time.sleep(1.0)                                  # the clock follower hears jack_midi_clock's Song Position
    timebase.tell("play")
    out, err = bridge.communicate(timeout=120)
    assert bridge.returncode == 0, err
    lines = out.splitlines()
    assert lines[0] == "guide: recording bars 5-6 from stemd-notes:out", out
    mid = Path(lines[1].split()[1])
    import mido

    metas = {m.type: m for m in mido.MidiFile(mid).tracks[0] if m.is_meta}
    assert (metas["time_signature"].numerator, metas["time_signature"].denominator) == (3, 4)
    assert abs(mido.tempo2bpm(metas["set_tempo"].tempo) - bpm) < 0.5
    pitches = {n.pitch for n in read_smf(mid.read_bytes())}
    assert set(range(61, 60 + len(played))) <= pitches <= set(range(60, 60 + len(played))), pitches


def refused_recording(jack, helpers, tmp_path, played: list) -> str:
    """A one-bar recording at 97 BPM 3/4 of ``played`` notes that the bridge refuses: its stderr, once it has
    exited 2 and written no guide."""
    timebase_exe, notes_exe = helpers
    timebase, notes = Timebase(jack, timebase_exe, 97, Meter.parse("3/4")), Notes(jack, notes_exe)
    notes.play(played)
    bridge = bridge_recording(jack, tmp_path, "--daemon", "none", "--guide-bars", "1")
    wait_connected(jack.env, Notes.PORT)
    timebase.tell("play")
    _, err = bridge.communicate(timeout=60)
    assert bridge.returncode == 2, err
    assert not list(tmp_path.glob("*.mid"))
    return err


def test_bars_with_no_note_played_are_an_error_and_write_no_guide(jack, helpers, tmp_path):
    err = refused_recording(jack, helpers, tmp_path, [])
    assert "no note was played on stemd-notes:out in bars 1-1: no guide was made" in err, err


def test_more_than_4096_notes_played_are_refused(jack, helpers, tmp_path):
    span = frame_of(Fraction(3), 97)                     # bar 1 of 3/4
    err = refused_recording(jack, helpers, tmp_path,
                            [(span * i // 4200, span * i // 4200 + 10, 30 + i % 60) for i in range(4200)])
    assert "too_large: more than 4096 notes were played on stemd-notes:out in bars 1-1" in err, err
