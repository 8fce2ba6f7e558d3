"""MIDI bytes -> mido messages, for streams that are not always well formed.

Ports deliver events as byte lists; most hold one whole message, but a hardware interface bridged into
JACK or ALSA may send running status (data bytes whose status byte came in an earlier event), sysex
split over events, real-time bytes in the middle of a message, undefined status bytes, or a flood of
sysex. :class:`MidiDecoder` keeps the state across events, turns all of that into whole messages
(``mido.Message``: mido's types and attribute names), and counts (never raises on) what it had to drop.

The framing is our own because ``mido.Parser`` (mido 1.3) does not serve these streams: it has no
running status (a data byte after a complete message is dropped) and a real-time byte inside a
channel message resets it (the message is lost); nor does it bound sysex or count what it drops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import mido
from mido.messages.specs import SPEC_BY_STATUS

MAX_SYSEX = 4096  # bytes; longer sysex is dropped whole (we never act on sysex)

# data bytes after each status byte, and the real-time statuses: mido's own message specs
_DATA_LEN = {status: spec["length"] - 1 for status, spec in SPEC_BY_STATUS.items() if 0x80 <= status < 0xF8
             and status != 0xF0}
_REALTIME = {status for status in SPEC_BY_STATUS if status >= 0xF8}


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

    def feed(self, data: Iterable[int]) -> list[mido.Message]:
        out: list[mido.Message] = []
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
            self._running, self._need, self._buf = byte, _DATA_LEN[byte], [byte]
        elif byte in _DATA_LEN:  # system common
            self._running = 0
            if _DATA_LEN[byte] == 0:
                self._emit([byte], out)
            else:
                self._need, self._buf = _DATA_LEN[byte], [byte]
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
        out.append(mido.Message.from_bytes(message))
        self.stats.messages += 1
