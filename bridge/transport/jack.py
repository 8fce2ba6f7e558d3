"""``--follow jack[:BPM[:METER]]``: JACK's own transport, read in JACK's process cycle.

A JACK client of the bridge's asks the transport where it is at the first frame of every cycle. With a
timebase master (a DAW on JACK: Ardour, Qtractor...) its bar, beat, tick, meter and tempo place the
position; without one, the transport frame does, at the tempo and meter of the spec (default 120, 4/4).
stemd's tempo counts quarter notes; what JACK's ``beats_per_minute`` counts is each master's choice (JACK's
example: beats of the meter's unit, 194 for 97 BPM 7/8; Ardour 7: quarters, 97). :class:`TempoUnit` tells
them apart from how the master's bar/beat/tick advances against the frames.

The same client reads MIDI inputs for ``--guide-in`` (:meth:`JackClient.add_midi_input`): each event's
position is the cycle's position plus its frame offset in the cycle, so a note sits where it was played
on the transport whatever the machine's load did to the wall clock. With another ``--follow`` the client
only reads MIDI, and the cycle's position is the followed transport's, extrapolated to the cycle's start.

Needs the ``JACK-Client`` package (``pip install 'stemd[jack]'``) and a running JACK server.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Callable, Optional

from stemd.bridge.transport import FollowError, Transport
from stemd.timing import Meter, Tempo, TimingError


class JackError(FollowError):
    """No JACK here, or a JACK port that is not there."""


@dataclass(frozen=True)
class Cycle:
    """Where the transport was at the first frame of one JACK process cycle."""

    quarters: Fraction        # from the DAW's bar 1, beat 1
    bpm: Fraction             # quarter notes per minute
    meter: Meter
    playing: bool
    frame_rate: int
    bbt: bool = False         # placed by a timebase master's bar/beat/tick (else by the frame)

    def at_offset(self, offset: int) -> Fraction:
        """The position ``offset`` frames into the cycle (the transport moves only while it plays)."""
        if not self.playing:
            return self.quarters
        return self.quarters + Fraction(offset) * self.bpm / (60 * self.frame_rate)


class TempoUnit:
    """What a JACK timebase master's ``beats_per_minute`` counts: beats of ``beat_type`` or quarter notes.

    Masters agree on bar/beat/tick (beats of the meter's unit), so the unit shows in how the position advances
    against the frames: at ``beats_per_minute`` a minute the master counts the meter's beats, at
    ``beats_per_minute x beat_type / 4`` quarters. Summed over each rolling cycle that follows on from the last
    one (its frame the last one plus its cycle) while the tempo and meter stay: a locate, or a cycle that JACK's
    dummy driver repeats or skips under load, adds nothing and loses nothing. Told once the sums reach a quarter
    of a beat (a whole tick is up to 1/480 of it) and 16 cycles (a late JACK cycle moves it less than 1/16), and
    the rate read lies within 1/8 of one of the two (they differ twice at least). With beat_type 4 both are one
    and nothing is learnt. Until told, the meter's beats (JACK's example); a told unit stays until another
    measure tells otherwise. The plugin reads its hosts by the same rule (plugin_host/plugin/transport.hpp,
    tempoUnit)."""

    MIN_BEATS, MIN_CYCLES, CLOSE = Fraction(1, 4), 16, Fraction(1, 8)

    def __init__(self):
        self.quarters = False           # JACK's example's reading until a roll says otherwise
        self._key: Optional[tuple] = None
        self._last: Optional[tuple] = None     # (frame the next cycle starts at if it follows on, beats)
        self._beats, self._frames = Fraction(0), 0

    @staticmethod
    def told(beats: Fraction, frames: int, cycle_frames: int, bpm: Fraction, unit: int, rate: int) -> Optional[bool]:
        """True: the master counts quarters; False: the meter's beats; None: not told by this interval."""
        if unit == 4 or beats < TempoUnit.MIN_BEATS or frames < TempoUnit.MIN_CYCLES * cycle_frames or bpm <= 0:
            return None
        per_minute = beats * 60 * rate / frames
        if abs(per_minute / bpm - 1) <= TempoUnit.CLOSE:
            return False
        if abs(per_minute / (bpm * unit / 4) - 1) <= TempoUnit.CLOSE:
            return True
        return None

    def observe(self, position: dict, rolling: bool, cycle_frames: int) -> None:
        """One JACK cycle's ``transport_query`` dict (its bar/beat/tick checked by :func:`bbt_cycle`)."""
        frame = int(position["frame"])
        key = (position["beats_per_minute"], position["beats_per_bar"], position["beat_type"], position["frame_rate"])
        beats = ((position["bar"] - 1) * int(round(position["beats_per_bar"])) + (position["beat"] - 1)
                 + Fraction(int(position["tick"]), int(round(position["ticks_per_beat"]))))
        last, self._last = self._last, ((frame + cycle_frames, beats) if rolling else None)
        if not rolling:
            return
        if key != self._key:                # a first roll, or the tempo or meter changed: measure anew
            self._key, self._beats, self._frames = key, Fraction(0), 0
            return
        if last is None or last[0] != frame:    # the transport jumped: this cycle adds nothing
            return
        self._beats += beats - last[1]
        self._frames += cycle_frames
        told = self.told(self._beats, self._frames, cycle_frames,
                         Fraction(position["beats_per_minute"]).limit_denominator(10_000),
                         int(round(position["beat_type"])), int(position["frame_rate"]))
        if told is not None:
            self.quarters = told


def bbt_cycle(position: dict, rolling: bool, fallback_bpm: Fraction, fallback_meter: Meter,
              tempo_unit: Optional[TempoUnit] = None, cycle_frames: int = 0) -> Cycle:
    """A :class:`Cycle` from JACK-Client's ``transport_query`` dict: its bar/beat/tick when a timebase master
    gives them, else its frame at the fallback tempo and meter. ``tempo_unit`` (fed this cycle of ``cycle_frames``)
    says what the master's beats per minute count; without one, the meter's beats."""
    rate = int(position["frame_rate"])
    meter = None
    if "bar" in position:
        per_bar, unit = int(round(position["beats_per_bar"])), int(round(position["beat_type"]))
        try:
            meter = Meter.parse(f"{per_bar}/{unit}")
        except TimingError:          # a master's nonsense meter: its BBT is not read, the frame is
            meter = None
    if meter is not None and position["ticks_per_beat"] >= 1 and 0 < position["beats_per_minute"] < 10_000:
        beats = ((position["bar"] - 1) * per_bar + (position["beat"] - 1)
                 + Fraction(int(position["tick"]), int(round(position["ticks_per_beat"]))))
        quarters = beats * Fraction(4, unit)
        bpm = Fraction(position["beats_per_minute"]).limit_denominator(10_000)
        if tempo_unit is not None:
            tempo_unit.observe(position, rolling, cycle_frames)
        if tempo_unit is None or not tempo_unit.quarters:
            bpm *= Fraction(4, unit)
        return Cycle(quarters, bpm, meter, rolling, rate, bbt=True)
    quarters = Fraction(int(position["frame"]), rate) * fallback_bpm / 60
    return Cycle(quarters, fallback_bpm, fallback_meter, rolling, rate)


class BbtLine:
    """Positions on a straight line through the frames, drawn from a timebase master's BBT.

    A master's tick is a whole number (Ardour, jack_timebase.c: floored), so a cycle's BBT position is up to a
    tick behind the true one, and a note played on a bar line could read as just before it. At a steady
    tempo the position is ``offset + frame x quarters per frame``; each cycle's BBT gives an ``offset`` up to
    a tick low, so the largest seen is the truest. A reading further than a tick from the line (a locate, a
    tempo or meter change) starts a new line."""

    def __init__(self):
        self._key: Optional[tuple] = None
        self._offset: Optional[Fraction] = None

    def place(self, cycle: Cycle, frame: int, tick: Fraction) -> Cycle:
        per_frame = cycle.bpm / (60 * cycle.frame_rate)
        offset = cycle.quarters - frame * per_frame
        key = (cycle.bpm, cycle.meter, cycle.frame_rate)
        if key != self._key or self._offset is None or abs(offset - self._offset) > tick + per_frame:
            self._key, self._offset = key, offset
        else:
            self._offset = max(self._offset, offset)
        return replace(cycle, quarters=self._offset + frame * per_frame)


def _jack_module():
    try:
        import jack
    except ImportError:
        raise JackError("JACK needs the JACK-Client package: pip install 'stemd[jack]'") from None
    except OSError as e:            # JACK-Client found no libjack
        raise JackError(f"no JACK library here ({e}): install JACK (Debian jackd2)") from None
    return jack


MidiHandler = Callable[[Fraction, bytes], None]


class JackClient:
    """The bridge's JACK client: follows JACK's transport (``follow=True``) or another follower's, and reads
    MIDI inputs with their exact positions. ``on_cycle(Cycle)`` listeners run in JACK's process thread:
    keep them short (append to a deque)."""

    UPDATE_EVERY_S = 0.05          # how often the shared Transport hears from a steady JACK transport

    def __init__(self, transport: Transport, follow: bool, bpm=120, meter="4/4", name: str = "stemd-bridge"):
        jack = _jack_module()
        self.transport, self.follow = transport, follow
        self.fallback_bpm, self.fallback_meter = Tempo(bpm).bpm, Meter.parse(meter)
        try:
            self.client = jack.Client(name, no_start_server=True)
        except jack.JackError as e:
            raise JackError(f"no JACK server to connect to ({e}): start jackd, or the DAW's JACK") from None
        self._jack = jack
        self._inputs: list[tuple[object, MidiHandler]] = []
        self._cycle_listeners: list[Callable[[Cycle], None]] = []
        self._told: Optional[tuple] = None
        self._told_at = 0.0
        self.last_cycle: Optional[Cycle] = None
        self._line = BbtLine()
        self._tempo_unit = TempoUnit()
        self._lock = threading.Lock()
        self.client.set_process_callback(self._process)
        self.client.activate()
        if follow:
            transport.grid_known.clear()      # until the first cycle has said the tempo and meter

    # --- MIDI inputs ----------------------------------------------------------------------------
    def midi_sources(self) -> list[str]:
        return [p.name for p in self.client.get_ports(is_midi=True, is_output=True)]

    def find_source(self, wanted: str) -> str:
        """The JACK MIDI output named ``wanted``: its full name, else the one whose name contains it."""
        sources = self.midi_sources()
        if wanted in sources:
            return wanted
        matches = [s for s in sources if wanted.lower() in s.lower()]
        if len(matches) == 1:
            return matches[0]
        there = ", ".join(sources) or "none"
        if matches:
            raise JackError(f"--guide-in {wanted!r} matches several JACK MIDI ports: {', '.join(matches)}")
        raise JackError(f"no JACK MIDI port {wanted!r}; the JACK MIDI outputs here: {there}")

    def add_midi_input(self, source: str, handler: MidiHandler, port_name: str = "guide_in") -> str:
        """Connect JACK MIDI output ``source`` (full name or a unique part of it) to a new input of ours;
        ``handler(quarters, message_bytes)`` gets every event, in JACK's process thread. Returns the source's
        full name."""
        full = self.find_source(source)
        port = self.client.midi_inports.register(port_name)
        with self._lock:
            self._inputs = [*self._inputs, (port, handler)]
        try:
            self.client.connect(full, port)
        except self._jack.JackError as e:
            self.remove_midi_input(handler)
            raise JackError(f"--guide-in: cannot connect {full} to the bridge ({e})") from None
        return full

    def remove_midi_input(self, handler: MidiHandler) -> None:
        with self._lock:
            kept = [(p, h) for p, h in self._inputs if h is not handler]
            gone = [p for p, h in self._inputs if h is handler]
            self._inputs = kept
        for port in gone:
            port.unregister()

    def on_cycle(self, listener: Callable[[Cycle], None]) -> None:
        with self._lock:      # a new list: the process thread goes on with the one it holds
            self._cycle_listeners = [*self._cycle_listeners, listener]

    def remove_cycle_listener(self, listener: Callable[[Cycle], None]) -> None:
        with self._lock:
            self._cycle_listeners = [l for l in self._cycle_listeners if l is not listener]

    # --- JACK's process thread -----------------------------------------------------------------
    def _process(self, frames: int) -> None:
        started = time.monotonic() - self.client.frames_since_cycle_start / self.client.samplerate
        cycle = self._cycle(started, frames)
        self.last_cycle = cycle
        for listener in self._cycle_listeners:      # before the cycle's events: a recording starts here
            listener(cycle)
        for port, handler in self._inputs:
            for offset, data in port.incoming_midi_events():
                handler(cycle.at_offset(offset), bytes(data))
        if self.follow:
            self._tell(cycle, started)

    def _cycle(self, started: float, frames: int = 0) -> Cycle:
        if self.follow:
            state, position = self.client.transport_query()
            cycle = bbt_cycle(position, state == self._jack.ROLLING, self.fallback_bpm, self.fallback_meter,
                              self._tempo_unit, frames)
            if not cycle.bbt:            # no (usable) BBT: the frame placed it
                return cycle
            tick = cycle.meter.unit_quarters / Fraction(position["ticks_per_beat"]).limit_denominator(10_000)
            return self._line.place(cycle, int(position["frame"]), tick)
        s = self.transport.now()
        quarters = s.quarters - Fraction(s.at - started) * s.bpm / 60 if s.playing else s.quarters
        placed = s.playing and self.transport.positioned.is_set()   # a clock joined mid-song: not yet
        return Cycle(quarters, s.bpm, s.meter, placed, self.client.samplerate)

    def _tell(self, cycle: Cycle, started: float) -> None:
        """The shared Transport hears a change at once, a steady transport every UPDATE_EVERY_S. A report a
        hair behind its extrapolation (JACK's frames against the wall clock on a loaded machine) is no locate:
        the position never steps back across a beat for it."""
        now = started
        key = (cycle.bpm, cycle.meter, cycle.playing)
        if key == self._told and now - self._told_at < self.UPDATE_EVERY_S:
            return
        self._told, self._told_at = key, now
        self.transport.update(bpm=cycle.bpm, meter=cycle.meter, quarters=cycle.quarters, playing=cycle.playing,
                              at=started, tolerance=Fraction(1, 96), late=Fraction(1, 16))
        self.transport.grid_known.set()

    def stop(self) -> None:
        try:
            self.client.deactivate()
            self.client.close()
        except self._jack.JackError:
            pass


class JackFollower(JackClient):
    """``--follow jack[:BPM[:METER]]``."""

    @classmethod
    def parse(cls, rest: str, transport: Transport) -> "JackFollower":
        bpm, _, meter = rest.partition(":")
        try:
            return cls(transport, True, Tempo(bpm or "120").bpm, Meter.parse(meter or "4/4"))
        except TimingError as e:
            raise JackError(f"--follow jack:{rest}: {e}") from None
