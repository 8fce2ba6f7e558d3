"""``--follow midi-clock``: MIDI clock (24 per quarter), Start/Stop/Continue and Song Position Pointer.

Tempo is the slope of a least-squares line through the arrival times of the last
:data:`WINDOW_TICKS` clock ticks: MIDI delivery jitters (JACK hands events over at period starts, up to
5.3 ms late at 256 frames), a line through many ticks does not. A jump of more than
:data:`TEMPO_JUMP` restarts the fit so a real tempo change shows within half a beat; a stop and restart
does not (the runs before and after share one slope).

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
MIN_TICKS_FOR_TEMPO = 12  # half a quarter: enough to see a tempo change
TEMPO_JUMP = 0.05


class ClockTempo:
    """Tempo from clock tick times (seconds): one slope fitted through the last ticks.

    A gap (the clock stopped, the transport located) starts a new run of ticks; the slope is pooled over
    the runs, each with its own offset, so the tempo stays as precise after a restart as before it.
    A tempo change forgets the runs before it."""

    def __init__(self, window: int = WINDOW_TICKS):
        self.window = window
        self.runs: list[list[float]] = []
        self.bpm: Optional[float] = None

    @staticmethod
    def _sums(times) -> tuple[float, float]:
        n = len(times)
        mean_x, mean_t = (n - 1) / 2, sum(times) / n
        sxx = sum((x - mean_x) ** 2 for x in range(n))
        sxt = sum((x - mean_x) * (t - mean_t) for x, t in enumerate(times))
        return sxx, sxt

    @classmethod
    def _fit(cls, runs) -> Optional[float]:
        sxx = sxt = 0.0
        for run in runs:
            a, b = cls._sums(run)
            sxx, sxt = sxx + a, sxt + b
        return 60.0 / (sxt / sxx * TICKS_PER_QUARTER) if sxx > 0 and sxt > 0 else None

    def new_run(self) -> None:
        """The clock's phase may jump here (Start, Stop, Continue, Song Position): the next tick starts a run."""
        if self.runs and self.runs[-1]:
            self.runs.append([])

    def tick(self, t: float) -> Optional[float]:
        last = self.runs[-1] if self.runs else None
        if last is None or (last and self.bpm and t - last[-1] > 4 * 60.0 / (self.bpm * TICKS_PER_QUARTER)):
            self.runs.append([t])
        else:
            last.append(t)
        while sum(len(r) for r in self.runs) > self.window:
            self.runs[0].pop(0)
            if not self.runs[0]:
                self.runs.pop(0)
        current = self.runs[-1]
        if len(current) >= MIN_TICKS_FOR_TEMPO:
            recent = self._fit([current[-MIN_TICKS_FOR_TEMPO:]])
            if self.bpm and recent and abs(recent / self.bpm - 1) > TEMPO_JUMP:
                self.runs = [current[-3:]]  # a real tempo change: forget the ticks before it
                self.bpm = recent
                return self.bpm
        if sum(len(r) for r in self.runs) >= MIN_TICKS_FOR_TEMPO:
            self.bpm = self._fit([r for r in self.runs if len(r) > 1]) or self.bpm
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
