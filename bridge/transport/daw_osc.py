"""Following a DAW over its own OSC surface: Ardour, REAPER, Ableton Live (AbletonOSC or our Remote
Script) and Bitwig (DrivenByMoss). One UDP socket per follower: it sends the DAW whatever registers us
for feedback, and turns what comes back into :class:`Transport` updates.

    DAW       DAW listens   bridge listens   position from                      tempo from
    ardour    3819          any (Ardour answers the sender)  /position/samples, /position/bbt   derived
    reaper    8000          9000             /beat/str, /time                   /tempo/raw
    ableton   11000         11001            /live/song/get/current_song_time   /live/song/get/tempo
    bitwig    8000          9000             /beat/str                          /tempo/raw

Ardour does not send its tempo or meter. With ``--session`` (the session's folder or ``.ardour`` file)
the follower reads them from the session's tempo map, and again whenever the file is saved; without it,
the tempo comes from how far the BBT position moves per second of /position/samples while the transport
rolls (``--rate`` must be the session's rate), and the meter from ``--meter`` or from the beat count once a
whole bar has rolled. Until both are known the transport says so (``Transport.grid_known``) and the bridge
places no take.
"""

from __future__ import annotations

import re
import socket
import sys
import threading
import time
from collections import deque
from fractions import Fraction
from typing import Optional

import xml.etree.ElementTree as ET

from stemd import osc
from stemd.bridge.transport import FollowError, Transport
from stemd.errors import StemdError
from stemd.bridge.udp import receive
from stemd.timing import Meter

DEFAULTS = {"ardour": (3819, 0), "reaper": (8000, 9000), "ableton": (11000, 11001), "bitwig": (8000, 9000)}
ARDOUR_FEEDBACK = 16 | 32 | 1024  # master section (transport state), bar and beat, position in samples
ARDOUR_TICKS_PER_BEAT = 1920
REREGISTER_S = 5.0
JITTER_QUARTERS = Fraction(1, 8)  # DAW position reports closer than this to our clock are ignored
LATE_QUARTERS = Fraction(1, 2)    # Ardour: a report behind our clock by less than this is late, not a locate


def _truthy(args: tuple) -> Optional[bool]:
    if not args:
        return None
    value = args[0]
    if isinstance(value, str):
        return value.strip() not in ("0", "", "false", "False")
    return bool(value)


class OscFollower:
    """Base: a UDP socket, a reader thread, ``register()`` now and every few seconds, ``handle(message)``."""

    name = "daw"

    def __init__(self, transport: Transport, daw_host: str = "127.0.0.1", daw_port: Optional[int] = None,
                 listen_port: Optional[int] = None, sample_rate: int = 48000, meter: Optional[str] = None):
        default_daw, default_listen = DEFAULTS[self.name]
        self.transport = transport
        self.daw = (daw_host, daw_port or default_daw)
        self.sample_rate = sample_rate
        self.meter = Meter.parse(meter) if meter else None
        if self.meter:
            transport.update(meter=self.meter)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        port = default_listen if listen_port is None else listen_port
        try:
            self.sock.bind(("0.0.0.0", port))
        except OSError as e:
            raise FollowError(f"--follow {self.name}: cannot listen on UDP {port}: {e.strerror} "
                              f"(use --listen-port, and set the DAW to send there)") from None
        self.sock.settimeout(0.2)
        self.listen_port = self.sock.getsockname()[1]
        self.received = 0
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"stemd-follow-{self.name}", daemon=True)
        self._thread.start()

    def send(self, address: str, *args) -> None:
        try:
            self.sock.sendto(osc.encode_message(address, *args), self.daw)
        except OSError:
            pass  # the DAW is not there yet: registration is retried

    def register(self) -> None:
        """Ask the DAW for feedback (nothing for DAWs configured to send on their own)."""

    def handle(self, message: osc.Message) -> None:
        raise NotImplementedError

    def _maybe_register(self) -> None:
        now = time.monotonic()
        if now >= self._next_register:
            self.register()
            self._next_register = now + REREGISTER_S

    def _run(self) -> None:
        self._next_register = 0.0
        for packet, _peer in receive(self.sock, self._halt, self._maybe_register):
            if isinstance(packet, osc.OSCDecodeError):
                continue
            for message in osc.messages_in(packet):
                self.received += 1
                try:
                    self.handle(message)
                except (ValueError, TypeError, IndexError, ZeroDivisionError):
                    continue  # one odd message from the DAW never stops following

    def stop(self) -> None:
        self._halt.set()
        self._thread.join(timeout=1)
        self.sock.close()


def parse_bbt(text: str) -> Optional[tuple[int, int, Fraction]]:
    """'003|02|0960' (Ardour), '3.2.50' (REAPER, hundredths of a beat) -> (bar, beat, fraction of a beat),
    bars and beats from 1, beats in the meter's unit."""
    text = str(text).strip()
    m = re.match(r"^\s*-?(\d+)\|(\d+)\|(\d+)", text)
    if m:
        return int(m.group(1)), int(m.group(2)), Fraction(int(m.group(3)), ARDOUR_TICKS_PER_BEAT)
    m = re.match(r"^\s*-?(\d+)\.(\d+)\.(\d+)", text)
    if m:
        digits = m.group(3)
        return int(m.group(1)), int(m.group(2)), Fraction(int(digits), 10 ** len(digits))
    return None


_DRIVENBYMOSS = re.compile(r"\s*(-?\d+)\.(\d+)\.(\d+):(\d+)\s*", re.ASCII)


def drivenbymoss_measure_quarters(meter: Meter) -> int:
    """The quarters of one DrivenByMoss "measure": ``4 * numerator / denominator`` in Java's integer
    arithmetic (its ``TransportImpl.formatAsBeats``), so 3 in 7/8, 2 in 5/8, 4 in 9/8: not the bar."""
    return 4 * meter.numerator // meter.denominator


def parse_drivenbymoss_beat(text: str, meter: Meter) -> Optional[Fraction]:
    """DrivenByMoss's ``/beat/str`` in ``meter`` (the one Bitwig reports) -> quarters from bar 1, beat 1.

    The text is ``measure.quarter.sixteenth:hundredths`` (its ``StringUtils.formatMeasuresLong``; the
    quarter and sixteenth are zero-padded to two digits in some versions): measure, quarter and sixteenth
    count from 1, hundredths of a sixteenth from 0, and a measure is
    :func:`drivenbymoss_measure_quarters`. Where that is 0 (a bar shorter than a quarter: 1/8, 3/16),
    Java's division by zero leaves the measure meaningless and the quarter counts from the start. A
    position before the start, or one that does not fit the meter, gives None."""
    m = _DRIVENBYMOSS.fullmatch(str(text))
    if m is None:
        return None
    measure, quarter, sixteenth, hundredths = (int(g) for g in m.groups())
    measure_quarters = drivenbymoss_measure_quarters(meter)
    if measure_quarters == 0:
        measure = 1
    if measure < 1 or not 1 <= sixteenth <= 4 or hundredths > 99 or quarter < 1 or \
            (measure_quarters and quarter > measure_quarters):
        return None
    return ((measure - 1) * measure_quarters + (quarter - 1) + Fraction(sixteenth - 1, 4)
            + Fraction(hundredths, 400))


class TempoFromMotion:
    """Tempo derived from (seconds, quarters) pairs while rolling: a line through the last few seconds."""

    def __init__(self, span_s: float = 3.0):
        self.points: deque = deque()
        self.span_s = span_s

    def reset(self) -> None:
        self.points.clear()

    def add(self, seconds: float, quarters: Fraction) -> Optional[float]:
        if self.points and (seconds <= self.points[-1][0] or quarters < self.points[-1][1]):
            self.points.clear()  # a locate or a loop jump
        self.points.append((seconds, float(quarters)))
        while self.points and seconds - self.points[0][0] > self.span_s:
            self.points.popleft()
        if len(self.points) < 3 or self.points[-1][0] - self.points[0][0] < 0.4:
            return None
        n = len(self.points)
        mt = sum(p[0] for p in self.points) / n
        mq = sum(p[1] for p in self.points) / n
        stt = sum((p[0] - mt) ** 2 for p in self.points)
        stq = sum((p[0] - mt) * (p[1] - mq) for p in self.points)
        return 60.0 * stq / stt if stt > 0 and stq > 0 else None


class ArdourFollower(OscFollower):
    """Ardour's OSC surface (Edit > Preferences > Control Surfaces > OSC, or the session file); tempo and
    meter from the session file (``session``) when given."""

    name = "ardour"

    def __init__(self, transport: Transport, *args, session=None, **kwargs):
        self.session_file = None
        if session:
            from pathlib import Path

            path = Path(session).expanduser()
            self.session_file = path / f"{path.name}.ardour" if path.is_dir() else path
            if not self.session_file.exists():
                raise FollowError(f"--follow ardour --session: no Ardour session file at {self.session_file}")
        self._session_mtime, self._warned, self._session_lock = None, False, threading.Lock()
        self.session_tempo: Optional[Fraction] = None
        self.samples: Optional[int] = None
        self.bbt: Optional[tuple[int, int, Fraction]] = None
        self.tempo = TempoFromMotion()
        self.playing = False
        self.tempo_known = self.meter_known = False
        self.beats_per_bar, self._most_beats, self._saw_downbeat = 4, 0, False
        transport.grid_known.clear()
        super().__init__(transport, *args, **kwargs)
        if self.meter:
            self.beats_per_bar, self.meter_known = self.meter.numerator, True
        self._read_session()
        self._mark_grid()

    def _read_session(self) -> None:
        """The session file's tempo and meter, read again when the file has changed (Ardour saved it).
        Called from the constructor and from the reader thread's registration: one at a time."""
        if self.session_file is None:
            return
        with self._session_lock:
            try:
                mtime = self.session_file.stat().st_mtime_ns
                if mtime == self._session_mtime:
                    return
                from stemd.bridge.delivery.ardour import ArdourSession

                bpm, meter = ArdourSession(self.session_file).tempo_map()
            except (OSError, ValueError, StemdError, ET.ParseError) as e:
                if self._session_mtime is None and not self._warned:   # mid-save: looked at again in a moment
                    self._warned = True
                    print(f"stemd bridge: cannot read the tempo map of {self.session_file} yet: {e}", file=sys.stderr)
                return
            if meter:
                self.meter = Meter.parse(meter)
                self.beats_per_bar, self.meter_known = self.meter.numerator, True
            if bpm:
                self.session_tempo, self.tempo_known = bpm, True
            if bpm or meter:
                self.transport.update(bpm=bpm, meter=self.meter if meter else None)
            self._session_mtime = mtime
            self._mark_grid()

    def _mark_grid(self) -> None:
        if self.tempo_known and self.meter_known:
            self.transport.grid_known.set()
        else:
            self.transport.grid_known.clear()

    def register(self) -> None:
        self.send("/set_surface/feedback", ARDOUR_FEEDBACK)
        self._read_session()

    def _learn_meter(self, bbt) -> None:
        """No --meter, no session file: the beats counted through one whole bar that rolled by."""
        previous = self.bbt
        if previous is not None and bbt[0] == previous[0]:
            self._most_beats = max(self._most_beats, bbt[1])
            return
        if previous is not None and self.playing and bbt[0] == previous[0] + 1 and self._saw_downbeat:
            self.beats_per_bar, self.meter_known = self._most_beats, True
            self.transport.update(meter=Meter(self.beats_per_bar, 4))
            self._mark_grid()
        self._most_beats, self._saw_downbeat = bbt[1], bbt[1] == 1

    def _quarters(self, bbt) -> Fraction:
        meter = self.meter or Meter(self.beats_per_bar, 4)
        bar, beat, frac = bbt
        return (bar - 1) * meter.bar_quarters + (beat - 1 + frac) * meter.unit_quarters

    def handle(self, message: osc.Message) -> None:
        address, args = message.address, message.args
        now = time.monotonic()
        if address == "/position/bbt" and args:
            bbt = parse_bbt(args[0])
            if bbt is None:
                return
            if not self.meter_known:
                self._learn_meter(bbt)
            self.bbt = bbt
            # Ardour's reports arrive late and unevenly: one that lags the extrapolation by less than a
            # beat is latency (a locate moves further), so the position never steps back a beat
            self.transport.update(quarters=self._quarters(bbt), at=now, tolerance=JITTER_QUARTERS,
                                  late=LATE_QUARTERS)
        elif address == "/position/samples" and args:
            # Ardour sends /position/bbt, then /position/samples of the same instant: fit the pair
            self.samples = int(float(args[0]))
            if self.playing and self.bbt is not None and self.session_tempo is None:
                bpm = self.tempo.add(self.samples / self.sample_rate, self._quarters(self.bbt))
                if bpm and 20 <= bpm <= 999:
                    self.transport.update(bpm=round(bpm, 2), at=now)
                    if not self.tempo_known:
                        self.tempo_known = True
                        self._mark_grid()
        elif address == "/transport_play":
            playing = _truthy(args)
            if playing is not None and playing != self.playing:
                self.playing = playing
                self.tempo.reset()
                self.transport.update(playing=playing, at=now)
        elif address == "/transport_stop":
            if _truthy(args) and self.playing:
                self.playing = False
                self.transport.update(playing=False, at=now)


class BeatStringFollower(OscFollower):
    """DAWs that send /tempo/raw, /beat/str and /play (REAPER's default pattern, DrivenByMoss)."""

    def handle(self, message: osc.Message) -> None:
        address, args = message.address, message.args
        now = time.monotonic()
        if address == "/tempo/raw" and args:
            self.transport.update(bpm=round(float(args[0]), 3), at=now)
        elif address == "/beat/str" and args:
            bbt = parse_bbt(args[0])
            if bbt:
                meter = self.meter or self.transport.last().meter
                bar, beat, frac = bbt
                self.transport.update(quarters=(bar - 1) * meter.bar_quarters + (beat - 1 + frac) * meter.unit_quarters,
                                      at=now, tolerance=JITTER_QUARTERS)
        elif address == "/play":
            playing = _truthy(args)
            if playing is not None:
                self.transport.update(playing=playing, at=now)
        elif address == "/stop" and _truthy(args):
            self.transport.update(playing=False, at=now)
        elif address == "/time/signature" and args and not self.meter:
            self.transport.update(meter=Meter.parse(str(args[0])), at=now)


class ReaperFollower(BeatStringFollower):
    """REAPER's OSC control surface with the default pattern config (Default.ReaperOSC)."""

    name = "reaper"


class AbletonFollower(OscFollower):
    """AbletonOSC, or our Remote Script (plugin_host/ableton/stemd_live), which speaks the same addresses."""

    name = "ableton"
    PROPERTIES = ("tempo", "is_playing", "current_song_time", "signature_numerator", "signature_denominator")

    def register(self) -> None:
        for prop in self.PROPERTIES:
            self.send(f"/live/song/start_listen/{prop}")
            self.send(f"/live/song/get/{prop}")

    def handle(self, message: osc.Message) -> None:
        address, args = message.address, message.args
        if not address.startswith("/live/song/get/") or not args:
            return
        prop, value, now = address.rsplit("/", 1)[1], args[-1], time.monotonic()
        if prop == "tempo":
            self.transport.update(bpm=round(float(value), 3), at=now)
        elif prop == "is_playing":
            self.transport.update(playing=bool(value), at=now)
        elif prop == "current_song_time":
            self.transport.update(quarters=Fraction(str(round(float(value), 6))), at=now, tolerance=JITTER_QUARTERS)
        elif prop in ("signature_numerator", "signature_denominator") and not self.meter:
            meter = self.transport.last().meter
            n, d = (int(value), meter.denominator) if prop == "signature_numerator" else (meter.numerator, int(value))
            self.transport.update(meter=Meter(n, d), at=now)


class BitwigFollower(BeatStringFollower):
    """Bitwig Studio with DrivenByMoss's OSC extension (its default ports: receive 8000, send 9000). Its
    ``/beat/str`` counts DrivenByMoss's own measures, whose length depends on the meter Bitwig runs
    (``parse_drivenbymoss_beat``), so the follower keeps the last ``/time/signature`` (``"4 / 4"``) to read
    it, even where ``--meter`` sets the bars the bridge counts. (Its insertFile track index counts from the
    current bank page, not the project.)"""

    name = "bitwig"

    def __init__(self, *args, **kwargs):
        self.daw_meter: Optional[Meter] = None
        super().__init__(*args, **kwargs)

    def register(self) -> None:
        self.send("/refresh")

    def handle(self, message: osc.Message) -> None:
        if message.address == "/time/signature" and message.args:
            self.daw_meter = Meter.parse(str(message.args[0]))
        elif message.address == "/beat/str" and message.args:
            meter = self.daw_meter or self.meter or self.transport.last().meter
            quarters = parse_drivenbymoss_beat(message.args[0], meter)
            if quarters is not None:
                self.transport.update(quarters=quarters, at=time.monotonic(), tolerance=JITTER_QUARTERS)
            return
        super().handle(message)


FOLLOWERS = {"ardour": ArdourFollower, "reaper": ReaperFollower, "ableton": AbletonFollower,
             "bitwig": BitwigFollower}


def follower(name: str, transport: Transport, args) -> OscFollower:
    extra = {"session": getattr(args, "session", None)} if name == "ardour" else {}
    return FOLLOWERS[name](transport, getattr(args, "daw_host", "127.0.0.1"), getattr(args, "daw_port", None),
                           getattr(args, "listen_port", None), getattr(args, "rate", 48000),
                           getattr(args, "meter", None), **extra)
