"""``--guide-in PORT --guide-bars N``: a guide played in on a JACK MIDI port, N bars from the next bar line.

    recording = GuideRecording(bars=4)
    jack_client.add_midi_input("a2j:keyboard", recording.event)    # every event with its exact position
    jack_client.on_cycle(recording.cycle)                          # JACK's process thread
    guide = recording.wait(timeout=600)                            # -> RecordedGuide: notes + SMF bytes

Recording starts on the first bar line at or after the first rolling cycle, and ends on the bar line N
bars later, both read from the transport the bridge follows. Nothing is quantised: each note keeps its
exact position relative to the first bar line (``stemd.bridge.transport.jack`` places an event at its
cycle's position plus its frame offset), written at 960 ticks per quarter with the tempo and meter of the
first bar. A note still held at the end is cut there; a note released before the first bar line is
dropped. The guide then goes with every following take (``guide`` blob: the SMF), read from the take's
first bar line.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Optional

from stemd.guides.notes import MAX_NOTES, GuideError, Note
from stemd.guides.smf import write_smf
from stemd.timing import Meter

TICKS_PER_QUARTER = 960      # 1/96 quarter is 10 ticks: rounding moves a note by at most 1/1920 quarter
NOTE_ON, NOTE_OFF, PROGRAM = 0x90, 0x80, 0xC0


@dataclass(frozen=True)
class RecordedGuide:
    notes: list            # Note, in quarters from the first recorded bar line
    smf: bytes
    start_bar: int         # 0-based (the DAW's bar 1 is 0)
    bars: int
    bpm: Fraction
    meter: Meter

    def describe(self) -> str:
        return (f"{len(self.notes)} notes, bars {self.start_bar + 1}-{self.start_bar + self.bars} at "
                f"{float(self.bpm):g} BPM {self.meter}")


class GuideRecording:
    """One recording. :meth:`event` and :meth:`cycle` are called in JACK's process thread and only append
    and compare; :meth:`wait` (any other thread) turns what was played into notes."""

    def __init__(self, bars: int, source: str = "the MIDI input"):
        if not 1 <= bars <= 1024:
            raise GuideError("out_of_range", f"--guide-bars must be 1..1024, got {bars}")
        self.bars, self.source = bars, source
        self.start: Optional[Fraction] = None        # quarters of the first bar line, once the transport rolls
        self.end: Optional[Fraction] = None
        self.start_bar = 0
        self.bpm, self.meter = Fraction(120), Meter.parse("4/4")
        self.events: list[tuple[Fraction, bytes]] = []
        self.note_ons = 0
        self.overflow = False
        self.started, self.done = threading.Event(), threading.Event()

    # --- JACK's process thread ------------------------------------------------------------------
    def cycle(self, cycle) -> None:
        """A process cycle begins at ``cycle.quarters`` (before its events are handed over)."""
        if self.done.is_set() or not cycle.playing:
            return
        if self.start is None:
            bar = cycle.meter.bar_quarters
            self.start_bar = max(0, math.ceil(cycle.quarters / bar))
            self.start, self.end = self.start_bar * bar, (self.start_bar + self.bars) * bar
            self.bpm, self.meter = cycle.bpm, cycle.meter
            self.started.set()
        elif cycle.quarters >= self.end:
            self.done.set()
        else:
            self.bpm = cycle.bpm    # the SMF's tempo: the last heard (a MIDI clock's fit settles as it plays)

    def event(self, quarters: Fraction, data: bytes) -> None:
        if self.start is None or self.done.is_set() or not data:
            return
        kind = data[0] & 0xF0
        if kind not in (NOTE_ON, NOTE_OFF, PROGRAM):
            return
        if kind == NOTE_ON and len(data) > 2 and data[2] > 0:
            self.note_ons += 1
            if self.note_ons > MAX_NOTES:
                self.overflow = True
                self.done.set()
                return
        self.events.append((quarters, data))

    # --- the bridge's thread -----------------------------------------------------------------
    def wait(self, timeout: Optional[float] = None) -> RecordedGuide:
        """The guide, once the transport has passed its last bar line; :class:`GuideError` if it held no
        note or more than :data:`MAX_NOTES`; TimeoutError if the transport did not get there in time."""
        if not self.done.wait(timeout):
            where = "never rolled" if self.start is None else \
                f"did not reach the end of bar {self.start_bar + self.bars}"
            raise TimeoutError(f"--guide-in: the transport {where} within {timeout:g} s")
        if self.overflow:
            raise GuideError("too_large", f"more than {MAX_NOTES} notes were played on {self.source} in bars "
                             f"{self.start_bar + 1}-{self.start_bar + self.bars}; a guide holds at most {MAX_NOTES}: "
                             "no guide was made")
        notes = self.notes()
        if not notes:
            raise GuideError("bad_arguments", f"no note was played on {self.source} in bars {self.start_bar + 1}-"
                             f"{self.start_bar + self.bars}: no guide was made, the takes have none")
        return RecordedGuide(notes, write_smf(notes, self.bpm, (self.meter.numerator, self.meter.denominator),
                                              TICKS_PER_QUARTER),
                             self.start_bar, self.bars, self.bpm, self.meter)

    def notes(self) -> list[Note]:
        """The events as notes, in quarters from the first bar line, exact. A note belongs to the guide when
        its start's tick in the SMF (rounded once) lies in the recorded bars: one a hair before the first bar
        line starts on it, one a hair before the last is not in the guide (its tick would be the take's end)."""
        start, end = self.start, self.end
        inside = lambda q: 0 <= round((q - start) * TICKS_PER_QUARTER) < (end - start) * TICKS_PER_QUARTER  # noqa: E731
        programs, held, notes = [0] * 16, {}, []
        for quarters, data in sorted(self.events, key=lambda e: e[0]):
            kind, channel = data[0] & 0xF0, data[0] & 0x0F
            if kind == PROGRAM and len(data) > 1:
                programs[channel] = data[1]
                continue
            if len(data) < 3:
                continue
            pitch, velocity = data[1], data[2]
            if kind == NOTE_ON and velocity > 0:
                if inside(quarters):
                    held.setdefault((channel, pitch), []).append((max(quarters, start), velocity, programs[channel]))
                continue
            started = held.get((channel, pitch))
            if started:
                on, velocity, program = started.pop(0)
                off = min(quarters, end)
                if off > on:
                    notes.append(Note(on - start, off - on, pitch, velocity, program, channel))
        for (channel, pitch), left in held.items():        # still held at the last bar line
            notes += [Note(on - start, end - on, pitch, velocity, program, channel) for on, velocity, program in left]
        return sorted(notes, key=lambda n: (n.start, n.pitch))


def save(guide: RecordedGuide, folder: Path) -> Path:
    """The guide's SMF in ``folder`` as ``guide-YYYYmmdd-HHMMSS[-N].mid``, never over another file."""
    from stemd.takes import atomic_write

    folder.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = folder / (f"guide-{stamp}.mid" if n == 0 else f"guide-{stamp}-{n}.mid")
        try:
            atomic_write(path, guide.smf, replace=False)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free guide file name in {folder}")


def record(client, source: str, bars: int, timeout: Optional[float], say=lambda line: None) -> RecordedGuide:
    """Record ``bars`` bars from JACK MIDI output ``source`` through ``client`` (a
    :class:`~stemd.bridge.transport.jack.JackClient`); ``say`` hears when recording starts."""
    recording = GuideRecording(bars, source)
    full = client.add_midi_input(source, recording.event)
    recording.source = full
    client.on_cycle(recording.cycle)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not recording.started.wait(0.1):
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"--guide-in: the transport never rolled within {timeout:g} s")
        say(f"guide: recording bars {recording.start_bar + 1}-{recording.start_bar + bars} from {full}")
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        return recording.wait(left)
    finally:
        client.remove_cycle_listener(recording.cycle)
        client.remove_midi_input(recording.event)
