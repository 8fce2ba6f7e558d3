"""MIDI bytes -> :class:`MidiMessage`, for streams that are not always well formed.

Ports deliver events as byte lists; most hold one whole message, but a hardware interface bridged into
JACK or ALSA may send running status (data bytes whose status byte came in an earlier event), sysex
split over events, real-time bytes in the middle of a message, undefined status bytes, or a flood of
sysex. :class:`MidiDecoder` keeps the state across events, turns all of that into whole messages,
and counts (never raises on) what it had to drop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

MAX_SYSEX = 4096  # bytes; longer sysex is dropped whole (we never act on sysex)

# data bytes after the status byte, for channel messages (by high nibble) and system common
_CHANNEL_LEN = {0x80: 2, 0x90: 2, 0xA0: 2, 0xB0: 2, 0xC0: 1, 0xD0: 1, 0xE0: 2}
_COMMON_LEN = {0xF1: 1, 0xF2: 2, 0xF3: 1, 0xF6: 0}
_REALTIME = {0xF8, 0xFA, 0xFB, 0xFC, 0xFE, 0xFF}


_TYPES = {0x80: "note_off", 0x90: "note_on", 0xA0: "polytouch", 0xB0: "control_change", 0xC0: "program_change",
          0xD0: "aftertouch", 0xE0: "pitchwheel"}
_SYSTEM = {0xF0: "sysex", 0xF1: "quarter_frame", 0xF2: "songpos", 0xF3: "song_select", 0xF6: "tune_request",
           0xF8: "clock", 0xFA: "start", 0xFB: "continue", 0xFC: "stop", 0xFE: "active_sensing", 0xFF: "reset"}


@dataclass(frozen=True)
class MidiMessage:
    """One whole MIDI message, with the attribute names mido uses (so mido messages work too).

    ``channel`` counts from 0; ``note``/``velocity``, ``control``/``value`` and ``program`` are set
    for the messages that have them, None otherwise; a note_on with velocity 0 stays a note_on
    (the mapper reads it as a release), as mido keeps it.
    """

    type: str
    bytes: tuple
    channel: int = 0
    note: Optional[int] = None
    velocity: Optional[int] = None
    control: Optional[int] = None
    value: Optional[int] = None
    program: Optional[int] = None

    @classmethod
    def from_bytes(cls, data: "list[int]") -> "MidiMessage":
        status = data[0]
        if status >= 0xF0:
            return cls(_SYSTEM[status], tuple(data))
        kind, channel = _TYPES[status & 0xF0], status & 0x0F
        if kind in ("note_on", "note_off", "polytouch"):
            return cls(kind, tuple(data), channel, note=data[1], velocity=data[2])
        if kind == "control_change":
            return cls(kind, tuple(data), channel, control=data[1], value=data[2])
        if kind == "program_change":
            return cls(kind, tuple(data), channel, program=data[1])
        return cls(kind, tuple(data), channel, value=data[1] if kind == "aftertouch" else data[1] | data[2] << 7)

    @property
    def data(self) -> tuple:
        """A sysex message's bytes between F0 and F7."""
        return self.bytes[1:-1] if self.type == "sysex" else ()

    def hex(self) -> str:
        return " ".join(f"{b:02X}" for b in self.bytes)


@dataclass
class DecodeStats:
    messages: int = 0
    running_status: int = 0   # messages completed with an earlier status byte
    dropped_bytes: int = 0    # stray data bytes, undefined status bytes, broken messages
    sysex: int = 0            # sysex messages (passed on when short, dropped when too long)
    sysex_too_long: int = 0


class MidiDecoder:
    def __init__(self, max_sysex: int = MAX_SYSEX):
        self.max_sysex = max_sysex
        self.stats = DecodeStats()
        self._running = 0      # the running status (channel messages only), 0 = none
        self._buf: list[int] = []
        self._need = 0
        self._sysex: list[int] | None = None
        self._sysex_len = 0

    def feed(self, data: Iterable[int]) -> list[MidiMessage]:
        out: list[MidiMessage] = []
        for byte in data:
            if not isinstance(byte, int) or not 0 <= byte <= 255:
                self.stats.dropped_bytes += 1
                continue
            if byte >= 0xF8:
                if byte in _REALTIME:
                    self._emit([byte], out)
                else:
                    self.stats.dropped_bytes += 1  # 0xF9, 0xFD: undefined
                continue
            if self._sysex is not None:
                if byte == 0xF7:
                    self._end_sysex(out)
                    continue
                if byte < 0x80:
                    self._sysex_len += 1
                    if self._sysex_len <= self.max_sysex:
                        self._sysex.append(byte)
                    continue
                self._abandon_sysex()  # a status byte ends an unterminated sysex
            if byte >= 0x80:
                self._status(byte, out)
            else:
                self._data(byte, out)
        return out

    def _status(self, byte: int, out: list) -> None:
        if self._buf:
            self.stats.dropped_bytes += len(self._buf)  # an incomplete message, cut short
        self._buf = []
        if byte == 0xF0:
            self._running, self._sysex, self._sysex_len = 0, [], 0
        elif byte < 0xF0:
            self._running, self._need, self._buf = byte, _CHANNEL_LEN[byte & 0xF0], [byte]
        elif byte in _COMMON_LEN:
            self._running = 0
            if _COMMON_LEN[byte] == 0:
                self._emit([byte], out)
            else:
                self._need, self._buf = _COMMON_LEN[byte], [byte]
        else:  # 0xF4, 0xF5 undefined; a stray 0xF7
            self._running = 0
            self.stats.dropped_bytes += 1

    def _data(self, byte: int, out: list) -> None:
        if not self._buf:
            if not self._running:
                self.stats.dropped_bytes += 1
                return
            self._buf = [self._running]
            self.stats.running_status += 1
        self._buf.append(byte)
        if len(self._buf) == self._need + 1:
            message, self._buf = self._buf, []
            self._emit(message, out)

    def _end_sysex(self, out: list) -> None:
        self.stats.sysex += 1
        if self._sysex_len > self.max_sysex:
            self.stats.sysex_too_long += 1
        else:
            self._emit([0xF0, *self._sysex, 0xF7], out)  # type: ignore[misc]
        self._sysex = None

    def _abandon_sysex(self) -> None:
        self.stats.dropped_bytes += self._sysex_len + 1
        self._sysex = None

    def _emit(self, message: list[int], out: list) -> None:
        out.append(MidiMessage.from_bytes(message))
        self.stats.messages += 1
