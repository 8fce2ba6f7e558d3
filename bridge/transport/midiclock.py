"""``--follow midi-clock``: MIDI clock (24 per quarter), Start/Stop/Continue and Song Position Pointer.

Tempo is the slope of a least-squares line through the arrival times of the last
:data:`WINDOW_TICKS` clock ticks: MIDI delivery jitters (JACK hands events over at period starts, up to
5.3 ms late at 256 frames, and a late process cycle hands over several ticks tens of milliseconds late),
a line through many ticks, leaving out those far off it, does not. A jump of more than
:data:`TEMPO_JUMP` in the median slope of the last quarter's ticks restarts the fit, so a real tempo
change shows within a beat; a stop and restart does not (the runs before and after share one slope).

Position: Start sets bar 1 beat 1, Song Position Pointer sets sixteenths; the first clock after Start
or Continue is that position, each further clock adds 1/24 of a quarter.
"""

from __future__ import annotations

import threading
import time
from fractions import Fraction
from typing import Optional

from stemd.bridge.transport import FollowError, Transport
from stemd.errors import StemdError

CLOCK, START, CONTINUE, STOP, SONG_POSITION = 0xF8, 0xFA, 0xFB, 0xFC, 0xF2
TICKS_PER_QUARTER = 24
WINDOW_TICKS = 192  # eight quarters
MIN_TICKS_FOR_TEMPO = 12  # half a quarter: enough for a first tempo
CHANGE_TICKS = 24  # a quarter: the recent ticks a tempo change is judged on (late deliveries do not move it)
TEMPO_JUMP = 0.05
OUTLIER_SPREADS = 4.0     # a tick further off the line than this many median distances is not fitted
OUTLIER_FLOOR_S = 0.002   # ... nor nearer than this (a clean clock's ticks sit within microseconds)
GAP_TICKS = 4             # intervals without a tick that say the clock stopped (or the transport located)
LOST_TICK = 1.6           # intervals since the last tick that say one was lost (or a cycle came late)
BUNCHED = 0.4             # ... and that say this tick came in the same late cycle as the one before
STEP_TICKS = 8            # the last ticks whose earliest arrival shows a step in the cycles' schedule
STEP_BAND = 96            # ... and at most this many ticks before them, whose band of offsets they left
STEP_S = 0.0012           # a step in the ticks' schedule larger than this ends the run


class ClockTempo:
    """Tempo from clock tick times (seconds): one slope fitted through the last ticks.

    A gap (the clock stopped, the transport located) starts a new run of ticks; the slope is pooled over
    the runs, each with its own offset, so the tempo stays as precise after a restart as before it.
    A tempo change forgets the runs before it.

    Ticks arrive stamped with the start of the MIDI process cycle that delivered them; a cycle can run
    late (a busy machine, a server without realtime scheduling) and hand over several ticks at once,
    and a tick can be lost on the way (two intervals between ticks: measured with JACK's dummy driver on
    a loaded machine, where a median over a span with a lost tick in it reads several percent slow).
    Either way the run ends there and a new one starts, so no slope spans a missing or bunched tick. A
    tempo change is judged by the median slope between the last quarter's ticks of the current run,
    which a few late ones do not move, and the fit leaves out ticks far off its line (more than four
    times the ticks' median distance from it: the period quantization stays in)."""

    def __init__(self, window: int = WINDOW_TICKS):
        self.window = window
        self.runs: list[list[float]] = []
        self.bpm: Optional[float] = None

    @staticmethod
    def _slope(runs) -> Optional[float]:
        """Seconds per tick, least squares pooled over runs of ``(index, time)`` pairs (one offset each)."""
        sxx = sxt = 0.0
        for run in runs:
            n = len(run)
            mean_x, mean_t = sum(x for x, _ in run) / n, sum(t for _, t in run) / n
            sxx += sum((x - mean_x) ** 2 for x, _ in run)
            sxt += sum((x - mean_x) * (t - mean_t) for x, t in run)
        return sxt / sxx if sxx > 0 and sxt > 0 else None

    @classmethod
    def _fit(cls, runs) -> Optional[float]:
        """BPM of the pooled fit through runs of consecutive ticks, refitted without the ticks far off
        the first line."""
        runs = [list(enumerate(run)) for run in runs if len(run) > 1]
        slope = cls._slope(runs)
        if slope is None:
            return None
        residuals = []
        for run in runs:
            mean_x, mean_t = sum(x for x, _ in run) / len(run), sum(t for _, t in run) / len(run)
            residuals.append([t - (mean_t + slope * (x - mean_x)) for x, t in run])
        spread = sorted(abs(r) for rs in residuals for r in rs)[sum(map(len, residuals)) // 2]
        limit = max(OUTLIER_FLOOR_S, OUTLIER_SPREADS * spread)
        kept = [[p for p, r in zip(run, rs) if abs(r) <= limit] for run, rs in zip(runs, residuals)]
        slope = cls._slope([run for run in kept if len(run) > 1]) or slope
        return 60.0 / (slope * TICKS_PER_QUARTER)

    @staticmethod
    def _median_bpm(times) -> Optional[float]:
        """BPM of the median slope between every two of ``times`` (consecutive ticks of one run)."""
        slopes = sorted((times[j] - times[i]) / (j - i) for i in range(len(times)) for j in range(i + 1, len(times)))
        slope = slopes[len(slopes) // 2]
        return 60.0 / (slope * TICKS_PER_QUARTER) if slope > 0 else None

    @staticmethod
    def _step(run, interval: Optional[float]) -> int:
        """Where the process cycles' schedule slipped in ``run``: the index of the first tick after the
        step, 0 when none.

        JACK's dummy driver on a busy machine lets a late cycle move its schedule for good (by a cycle, or
        by a millisecond or two) while its frames, and the clock's ticks counted in them, go on: the
        ticks arrive that much later from then on, and a line through ticks on both sides of the step
        reads slow (a 6.4 ms step 40 ticks before the end of the window: 123.79 BPM for 124). Offsets of
        the ticks from the line fitted through the :data:`STEP_BAND` ticks before the last
        :data:`STEP_TICKS`: the bottom of their band is the schedule (no tick comes before its cycle;
        quantization and late cycles only lift ticks). When the last ticks' bottom lies more than
        :data:`STEP_S` above or below it and :meth:`_slipped` says it is no wrap of the ticks' phase, the
        step is at the longest (or shortest) interval among the last ticks."""
        if not interval or len(run) < STEP_TICKS + STEP_BAND // 2:
            return 0
        ticks = run[-(STEP_TICKS + STEP_BAND):]
        interval = ClockTempo._slope([list(enumerate(ticks[:-STEP_TICKS]))]) or interval  # the band's own
        offsets = [t - i * interval for i, t in enumerate(ticks)]
        band, recent = sorted(offsets[:-STEP_TICKS]), offsets[-STEP_TICKS:]
        bottom = min(recent) - band[len(band) // 50]    # no tick comes early: the bottom is the schedule
        if abs(bottom) <= STEP_S:
            return 0
        sign = 1 if bottom > 0 else -1
        first = len(run) - STEP_TICKS
        gaps = [(run[i] - run[i - 1]) * sign for i in range(first, len(run))]
        step = first + gaps.index(max(gaps))
        slipped = ClockTempo._slipped(run[step] - run[step - 1], abs(bottom), ticks[:-STEP_TICKS])
        return step if slipped else 0

    @staticmethod
    def _slipped(gap: float, shift: float, times) -> bool:
        """Whether a step in phase by an interval of ``gap`` seconds is a slip of the cycles' schedule and
        not the slow drift of ticks through the cycle wrapping round, given ``times``, the ticks before it.

        Ticks delivered at cycle starts come whole cycles apart: at two lengths of interval (3 and 4
        cycles of 5.3 ms at 124 BPM). Where both lengths are common the ticks' phase in the cycle goes
        round within a few ticks, and the band of offsets they fill stays put: a step is a slip, even
        one of a whole cycle (a cycle the server skipped). Where one length is rare (a tempo near a whole
        number of cycles per tick) the phase drifts slowly and wraps round with a gap one cycle longer
        (or shorter): only a gap no whole number of cycles off the others is a slip then, and with one
        length seen so far the cycle is unknown and no gap is called a slip."""
        intervals = sorted(b - a for a, b in zip(times, times[1:]))
        clusters = [[intervals[0]]]
        for d in intervals[1:]:
            if d - clusters[-1][-1] > STEP_S / 2:
                clusters.append([d])
            else:
                clusters[-1].append(d)
        if len(clusters) < 2:
            return False
        sizes = sorted(map(len, clusters), reverse=True)
        centres = [c[len(c) // 2] for c in clusters]
        cycle = min(b - a for a, b in zip(centres, centres[1:]))
        if sizes[1] >= 0.1 * len(intervals) and shift >= 0.75 * cycle:
            return True
        cycles = (gap - centres[0]) / cycle
        return abs(cycles - round(cycles)) * cycle > STEP_S / 2

    def new_run(self) -> None:
        """The clock's phase may jump here (Start, Stop, Continue, Song Position): the next tick starts a run."""
        if self.runs and self.runs[-1]:
            self.runs.append([])

    def tick(self, t: float) -> Optional[float]:
        last = self.runs[-1] if self.runs else None
        interval = 60.0 / (self.bpm * TICKS_PER_QUARTER) if self.bpm else None
        if interval is None and last and len(last) >= 3:      # no tempo yet: the run's median interval
            interval = sorted(b - a for a, b in zip(last, last[1:]))[(len(last) - 1) // 2]
        if last is None or (last and interval and t - last[-1] > GAP_TICKS * interval):
            self.runs.append([t])
        elif last and interval and not BUNCHED < (t - last[-1]) / interval < LOST_TICK:
            self.runs.append([t])     # a tick lost, or one bunched behind a late cycle: a new run
        else:
            last.append(t)
            step = self._step(last, interval)
            if step:                            # the schedule slipped: the ticks since start a run
                self.runs[-1:] = [last[:step], last[step:]]
        while sum(len(r) for r in self.runs) > self.window:
            self.runs[0].pop(0)
            if not self.runs[0]:
                self.runs.pop(0)
        current = self.runs[-1]
        if len(current) >= CHANGE_TICKS:
            recent = self._median_bpm(current[-CHANGE_TICKS:])
            if self.bpm and recent and abs(recent / self.bpm - 1) > TEMPO_JUMP:
                self.runs = [current[-3:]]  # a real tempo change: forget the ticks before it
                self.bpm = recent
                return self.bpm
        if sum(len(r) for r in self.runs) >= MIN_TICKS_FOR_TEMPO:
            self.bpm = self._fit(self.runs) or self.bpm
        return self.bpm


class ClockPosition:
    """Position and play state from realtime messages; feeds a :class:`Transport`."""

    def __init__(self, transport: Transport):
        self.transport = transport
        self.tempo = ClockTempo()
        self.base = Fraction(0)  # quarters at the first clock after Start/Continue
        self.ticks = -1  # clocks since then (-1: the next clock is the base position)
        self.playing = False
        self.starting = False  # Start/Continue seen; the transport rolls with the next clock

    def handle(self, message: list, t: float, now: Optional[float] = None) -> None:
        """One MIDI message ``message`` whose arrival time on the MIDI clock is ``t`` seconds."""
        if not message:
            return
        status = message[0]
        now = time.monotonic() if now is None else now
        if status in (START, CONTINUE, STOP, SONG_POSITION):
            self.tempo.new_run()
        if status == CLOCK:
            bpm = self.tempo.tick(t)
            changes: dict = {}
            if bpm is not None and 20 <= bpm <= 999:
                changes["bpm"] = round(bpm, 2)
            if self.playing:
                self.ticks += 1
                changes["quarters"] = self.base + Fraction(self.ticks, TICKS_PER_QUARTER)
                if self.starting:
                    changes["playing"], self.starting = True, False
            if changes:
                self.transport.update(at=now, **changes)
        elif status == START:
            self.base, self.ticks, self.playing, self.starting = Fraction(0), -1, True, True
            self.transport.update(quarters=0, playing=False, at=now)
        elif status == CONTINUE:
            self.ticks, self.playing, self.starting = -1, True, True
        elif status == STOP:
            self.playing = self.starting = False
            self.transport.update(playing=False, at=now)
        elif status == SONG_POSITION and len(message) >= 3:
            sixteenths = message[1] | (message[2] << 7)
            self.base, self.ticks = Fraction(sixteenths, 4), -1
            self.transport.update(quarters=self.base, at=now)


def _jack_available() -> bool:
    import os

    return bool(os.environ.get("JACK_DEFAULT_SERVER")) or os.path.exists("/dev/shm/jack_default_0_0")


def open_midi_input(name: Optional[str], client_name: str = "stemd-bridge"):
    """An rtmidi MidiIn on the port called ``name``, else the one port whose name contains it (the same
    rule as the controller's ``--controller``: ``stemd.midi.ports.match_port``), on the first API that has
    it (JACK first when a JACK server runs); the first input there is when no name is given."""
    import rtmidi

    from stemd.midi.ports import PortMissing, _client, match_port, quiet_native_stderr

    apis = [api for api in rtmidi.get_compiled_api() if api != rtmidi.API_RTMIDI_DUMMY]
    if rtmidi.API_UNIX_JACK in apis and _jack_available():
        apis.remove(rtmidi.API_UNIX_JACK)
        apis.insert(0, rtmidi.API_UNIX_JACK)
    seen, ambiguous, tried = [], None, []
    for api in apis:
        system = rtmidi.get_api_display_name(api)
        try:
            midi_in = _client("input", api, client_name)
        except StemdError:  # this API has no server here
            tried.append(f"{system} (not running)")
            continue
        with quiet_native_stderr():
            ports = list(midi_in.get_ports())
        tried.append(f"{system} ({len(ports)} input{'s' if len(ports) != 1 else ''})")
        seen += ports
        try:
            port = match_port(name, ports, "input") if name else (ports[0] if ports else None)
        except PortMissing as e:
            port, ambiguous = None, (e if e.ambiguous else ambiguous)
        if port is not None:
            midi_in.ignore_types(sysex=True, timing=False, active_sense=True)
            midi_in.open_port(ports.index(port), "clock_in")
            return midi_in, port
        midi_in.delete()
    if ambiguous is not None:
        raise FollowError(f"{ambiguous} (use --midi-in NAME)")
    wanted = f"matching {name!r}" if name else "at all"
    raise FollowError(f"no MIDI input {wanted}; tried {', '.join(tried) or 'no MIDI system'}; inputs seen: "
                      f"{', '.join(seen) or 'none'} (use --midi-in NAME)")


class MidiClockFollower:
    def __init__(self, transport: Transport, port_name: Optional[str] = None, wait_s: float = 5.0):
        self.transport = transport
        self.position = ClockPosition(transport)
        self._t = 0.0
        self._lock = threading.Lock()
        deadline = time.monotonic() + wait_s
        while True:  # a port may appear a moment after we start (a DAW launching)
            try:
                self.midi_in, self.port = open_midi_input(port_name)
                break
            except FollowError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.25)
        self.midi_in.set_callback(self._on_message)

    def _on_message(self, event, _data=None) -> None:
        message, delta = event
        with self._lock:
            self._t += delta
            self.position.handle(message, self._t)

    def stop(self) -> None:
        try:
            self.midi_in.cancel_callback()
            self.midi_in.close_port()
            self.midi_in.delete()
        except Exception:
            pass
