"""Following a DAW's transport: one shared :class:`Transport` state, one module per source.

A follower (``fixed``, ``jack``, ``midi-clock``, ``ardour``, ``reaper``, ``ableton``, ``bitwig``) turns what its
source sends into :meth:`Transport.update` calls; everyone else reads :meth:`Transport.now`, which
extrapolates the last known position with the tempo while the transport plays. Positions are exact
quarter notes from the DAW's bar 1 (our bar 0) as ``Fraction``; the tempo is quarter notes per minute.

Bars and beats in :meth:`TransportState.as_json` are counted from 1, as a DAW shows them; ``bar_index``
everywhere else counts from 0 (``stemd.timing``'s convention: the DAW's bar 1 is bar 0).
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Callable, Optional

from stemd.errors import StemdError
from stemd.timing import Grid, Meter, Tempo, exact


class FollowError(StemdError):
    """A ``--follow`` source that cannot be used (bad spec, port not found)."""

    code = "bad_arguments"


@dataclass(frozen=True)
class TransportState:
    bpm: Fraction
    meter: Meter
    quarters: Fraction  # exact position from the DAW's bar 1, beat 1
    playing: bool
    at: float  # time.monotonic() when ``quarters`` was true

    @property
    def tempo(self) -> Tempo:
        return Tempo(self.bpm)

    @property
    def bar_index(self) -> int:
        """0-based bar (the DAW's bar 1 is 0); negative positions (pre-roll) count as bar 0."""
        return max(0, math.floor(self.quarters / self.meter.bar_quarters))

    @property
    def beat_index(self) -> int:
        """0-based meter unit within the bar (eighths in 7/8)."""
        in_bar = self.quarters - self.bar_index * self.meter.bar_quarters
        return max(0, math.floor(in_bar / self.meter.unit_quarters))

    @property
    def grid(self) -> Grid:
        return Grid(self.tempo, self.meter)

    def next_bar(self) -> int:
        """The first bar line at or after the position (a take started now lands here)."""
        bq = self.meter.bar_quarters
        return max(0, math.ceil(self.quarters / bq))

    def seconds_until_quarters(self, quarters: Fraction) -> float:
        return float((quarters - self.quarters) * 60 / self.bpm)

    def as_json(self, position_known: bool = True) -> str:
        bpm = round(float(self.bpm), 3)
        return json.dumps({"bpm": bpm, "meter": str(self.meter),
                           "bar": self.bar_index + 1 if position_known else None,
                           "beat": self.beat_index + 1 if position_known else None, "playing": self.playing})




class Transport:
    """The followed transport, thread-safe: followers write, the bridge reads."""

    def __init__(self, bpm=120, meter="4/4", clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._state = TransportState(exact(Tempo(bpm).bpm), Meter.parse(meter), Fraction(0), False, clock())
        self._listeners: list[Callable[[TransportState], None]] = []
        self.known = False  # True once the source has told us anything
        self.positioned = threading.Event()  # set once the source has told us where it is
        #: set while the tempo and meter are known; a source that cannot say them at once (Ardour without
        #: its session file) clears it until it knows, and the bridge places no take meanwhile
        self.grid_known = threading.Event()
        self.grid_known.set()

    def update(self, *, bpm=None, meter=None, quarters=None, playing=None, at: Optional[float] = None,
               tolerance=0, late=0) -> None:
        """Set what the source reports; leave the rest extrapolated from the last state.

        ``tolerance`` (quarters): while playing, a reported position this close to the extrapolated one
        is ignored, so a source that reports late and unevenly (a DAW's OSC every 100 ms) never moves
        the position backwards by a hair; ``late`` (quarters): a report behind the extrapolated position by
        less than this is taken as late, not as a locate, and ignored too."""
        with self._lock:
            now = self._clock() if at is None else at
            cur = self._extrapolate(self._state, now)
            changes = {"at": now}
            if bpm is not None:
                changes["bpm"] = Tempo(bpm).bpm
            if meter is not None:
                changes["meter"] = Meter.parse(meter)
            if quarters is not None:
                q = exact(quarters, "position")
                rolling = cur.playing and playing is not False
                if not (rolling and (abs(q - cur.quarters) < tolerance or 0 <= cur.quarters - q < late)):
                    changes["quarters"] = q
            if playing is not None:
                changes["playing"] = bool(playing)
            self._state = replace(cur, **changes)
            self.known = True
            if quarters is not None:
                self.positioned.set()
            state = self._state
        for listener in list(self._listeners):
            listener(state)

    def subscribe(self, listener: Callable[[TransportState], None]) -> None:
        """Called (on the follower's thread) after every update."""
        self._listeners.append(listener)

    @staticmethod
    def _extrapolate(state: TransportState, now: float) -> TransportState:
        if not state.playing or now <= state.at:
            return state
        elapsed = Fraction(now - state.at)
        return replace(state, quarters=state.quarters + elapsed * state.bpm / 60, at=now)

    def now(self) -> TransportState:
        with self._lock:
            return self._extrapolate(self._state, self._clock())

    def last(self) -> TransportState:
        """The last reported state, not extrapolated."""
        with self._lock:
            return self._state


class BeatPrinter:
    """Prints one JSON line per beat (and on every start/stop, meter change and tempo change of 0.1 BPM)
    while running: ``--print-transport``. Until the source has said where it is (a MIDI clock joined
    mid-song, before Song Position, Start or Continue), the line has the tempo as it converges and
    ``"bar": null, "beat": null``."""

    def __init__(self, transport: Transport, write: Callable[[str], None], poll_s: float = 0.002):
        self.transport, self.write, self.poll_s = transport, write, poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stemd-beat-printer", daemon=True)

    def start(self) -> "BeatPrinter":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)

    def _run(self) -> None:
        last = None
        while not self._stop.wait(self.poll_s):
            if not self.transport.known:
                continue
            s = self.transport.now()
            positioned = self.transport.positioned.is_set()
            key = (s.bar_index if positioned else None, s.beat_index if positioned else None, s.playing,
                   str(s.meter), round(float(s.bpm), 1))
            if key != last:
                last = key
                self.write(s.as_json() if positioned else s.as_json(position_known=False))


def make_follower(spec: str, transport: Transport, args=None):
    """``--follow SPEC`` -> a started follower object with ``.stop()``."""
    name, _, rest = spec.partition(":")
    if name == "fixed":
        from stemd.bridge.transport.fixed import FixedFollower

        return FixedFollower.parse(rest, transport)
    if name == "jack":
        from stemd.bridge.transport.jack import JackFollower

        return JackFollower.parse(rest, transport)
    if name == "midi-clock":
        from stemd.bridge.transport.midiclock import MidiClockFollower

        return MidiClockFollower(transport, getattr(args, "midi_in", None) or rest or None)
    if name in ("reaper", "ableton", "ardour", "bitwig"):
        from stemd.bridge.transport import daw_osc

        return daw_osc.follower(name, transport, args)
    raise FollowError(f"unknown --follow {spec!r}: use fixed:BPM[:METER], jack[:BPM[:METER]], midi-clock, reaper, "
                      "ableton, ardour or bitwig")
