"""OSC over a byte stream: OSC 1.0 length-prefix framing and OSC 1.1 SLIP framing.

liblo's TCP sends OSC 1.0 (a big-endian int32 size before each packet); python-osc's TCP defaults
to OSC 1.1 (SLIP: packets between END bytes 0xC0). :class:`StreamDecoder` detects which one a
connection speaks from its first byte and then sticks to it. Both decoders refuse packets larger
than ``max_packet`` before buffering them, so a 2 GB size header costs nothing.
"""

from __future__ import annotations

import struct
from typing import Optional

SLIP_END, SLIP_ESC, SLIP_ESC_END, SLIP_ESC_ESC = 0xC0, 0xDB, 0xDC, 0xDD

DEFAULT_MAX_PACKET = 64 * 1024 * 1024


class FramingError(ValueError):
    """The byte stream cannot be framed any more: the connection must be closed."""

    def __init__(self, message: str, code: str = "bad_framing"):
        super().__init__(message)
        self.code = code


def frame_length_prefixed(packet: bytes) -> bytes:
    return struct.pack(">I", len(packet)) + packet


def frame_slip(packet: bytes) -> bytes:
    body = packet.replace(bytes([SLIP_ESC]), bytes([SLIP_ESC, SLIP_ESC_ESC]))
    body = body.replace(bytes([SLIP_END]), bytes([SLIP_ESC, SLIP_ESC_END]))
    return bytes([SLIP_END]) + body + bytes([SLIP_END])


class LengthPrefixDecoder:
    name = "osc1.0"

    def __init__(self, max_packet: int = DEFAULT_MAX_PACKET):
        self.max_packet = max_packet
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        packets = []
        while len(self._buf) >= 4:
            (size,) = struct.unpack(">I", self._buf[:4])
            if size > self.max_packet:
                raise FramingError(f"packet of {size} bytes is over the {self.max_packet}-byte limit",
                                   code="too_large")
            if len(self._buf) < 4 + size:
                break
            packets.append(bytes(self._buf[4: 4 + size]))
            del self._buf[: 4 + size]
        return packets

    @property
    def buffered(self) -> int:
        return len(self._buf)


class SlipDecoder:
    name = "osc1.1-slip"

    def __init__(self, max_packet: int = DEFAULT_MAX_PACKET):
        self.max_packet = max_packet
        self._buf = bytearray()
        self._escaped = False

    def feed(self, data: bytes) -> list[bytes]:
        """Split on END bytes with bytes.find (no per-byte Python loop: a 64 MiB blob costs milliseconds)."""
        packets = []
        data = bytes(data)
        start = 0
        while start <= len(data):
            end = data.find(bytes([SLIP_END]), start)
            self._append(data[start: len(data) if end < 0 else end])
            if end < 0:
                break
            if self._escaped:
                raise FramingError(f"bad SLIP escape 0x{SLIP_END:02x}")
            if self._buf:
                packets.append(bytes(self._buf))
                self._buf.clear()
            start = end + 1
        return packets

    def _append(self, piece: bytes) -> None:
        if not piece:
            return
        parts = piece.split(bytes([SLIP_ESC]))
        if self._escaped:  # the previous piece ended with ESC
            parts.insert(0, b"")
            self._escaped = False
        self._buf += parts[0]
        for i, part in enumerate(parts[1:], 1):
            if not part:
                if i == len(parts) - 1:
                    self._escaped = True  # ESC is the piece's last byte: the next piece finishes it
                    break
                raise FramingError(f"bad SLIP escape 0x{SLIP_ESC:02x}")
            code = part[0]
            if code == SLIP_ESC_END:
                self._buf.append(SLIP_END)
            elif code == SLIP_ESC_ESC:
                self._buf.append(SLIP_ESC)
            else:
                raise FramingError(f"bad SLIP escape 0x{code:02x}")
            self._buf += part[1:]
        if len(self._buf) > self.max_packet:
            raise FramingError(f"SLIP packet over the {self.max_packet}-byte limit", code="too_large")

    @property
    def buffered(self) -> int:
        return len(self._buf)


class StreamDecoder:
    """Frames a TCP connection, detecting OSC 1.0 or 1.1 (SLIP) from its first byte."""

    def __init__(self, max_packet: int = DEFAULT_MAX_PACKET):
        self.max_packet = max_packet
        self.inner: Optional[LengthPrefixDecoder | SlipDecoder] = None

    @property
    def framing(self) -> Optional[str]:
        return self.inner.name if self.inner else None

    def feed(self, data: bytes) -> list[bytes]:
        if not data:
            return []
        if self.inner is None:
            self.inner = SlipDecoder(self.max_packet) if data[0] == SLIP_END else LengthPrefixDecoder(self.max_packet)
        return self.inner.feed(data)

    def limit(self, max_packet: int) -> None:
        """Change the largest packet accepted (a connection's limit grows once it has authenticated)."""
        self.max_packet = max_packet
        if self.inner is not None:
            self.inner.max_packet = max_packet

    def release(self) -> None:
        """Let go of a half-received packet (the connection is gone); replies keep their framing."""
        if self.inner is not None:
            self.inner = type(self.inner)(self.max_packet)

    def frame(self, packet: bytes) -> bytes:
        """Frame a reply the way this connection frames its requests."""
        if isinstance(self.inner, SlipDecoder):
            return frame_slip(packet)
        return frame_length_prefixed(packet)
