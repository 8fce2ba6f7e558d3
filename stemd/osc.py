"""OSC 1.0 messages and bundles: build and parse, nothing else.

Parsing is strict and total: any byte string either becomes a :class:`Message` / :class:`Bundle` or
raises :class:`OSCDecodeError` saying what is wrong. It reads every standard and common extended
type (i f s b h d t S c r m T F N I and arrays), which some libraries cannot.

Ours rather than python-osc's, where python-osc cannot serve: its parser lacks the S, c and I types
that liblo tools send and does not say what is wrong where (the daemon answers ``bad_packet`` with
the reason and offset); its TCP client frames SLIP only and its servers run a thread per connection,
while the daemon detects OSC 1.0 length-prefix or SLIP per connection on one asyncio loop
(``framing.py``). python-osc is a test dependency only: a third-party client the daemon must serve.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional, Union


class OSCDecodeError(ValueError):
    """Bytes that are not a well-formed OSC packet."""


class OSCEncodeError(ValueError):
    """A value that OSC cannot carry."""


class Symbol(str):
    """An OSC 'S' (alternate string) argument; compares equal to its text."""


@dataclass(frozen=True)
class Message:
    address: str
    args: tuple = ()
    #: the type tags read from the wire ("" for messages built in code until encoded)
    tags: str = ""

    def __init__(self, address: str, *args: Any, tags: str = ""):
        object.__setattr__(self, "address", address)
        object.__setattr__(self, "args", tuple(args))
        object.__setattr__(self, "tags", tags)


@dataclass(frozen=True)
class Bundle:
    timetag: int
    elements: tuple = field(default_factory=tuple)

    def messages(self) -> Iterator[Message]:
        for element in self.elements:
            if isinstance(element, Bundle):
                yield from element.messages()
            else:
                yield element


IMMEDIATELY = 1
INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1


def _pad(n: int) -> int:
    return (n + 3) & ~3


def _encode_string(text: str) -> bytes:
    data = text.encode("utf-8")
    if b"\0" in data:
        raise OSCEncodeError("OSC strings cannot contain NUL")
    data += b"\0"
    return data + b"\0" * (_pad(len(data)) - len(data))


def _encode_blob(data: bytes) -> bytes:
    return struct.pack(">i", len(data)) + data + b"\0" * (_pad(len(data)) - len(data))


def _encode_arg(value: Any) -> tuple[str, bytes]:
    if value is True:
        return "T", b""
    if value is False:
        return "F", b""
    if value is None:
        return "N", b""
    if isinstance(value, Symbol):
        return "S", _encode_string(str(value))
    if isinstance(value, int):
        if INT32_MIN <= value <= INT32_MAX:
            return "i", struct.pack(">i", value)
        if INT64_MIN <= value <= INT64_MAX:
            return "h", struct.pack(">q", value)
        raise OSCEncodeError(f"integer {value} does not fit in 64 bits")
    if isinstance(value, float):
        if not math.isfinite(value) or abs(value) < 3.4e38:  # float32 carries nan and inf too
            return "f", struct.pack(">f", value)
        return "d", struct.pack(">d", value)
    if isinstance(value, str):
        return "s", _encode_string(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "b", _encode_blob(bytes(value))
    if isinstance(value, (list, tuple)):
        tags, data = "[", b""
        for item in value:
            t, d = _encode_arg(item)
            tags += t
            data += d
        return tags + "]", data
    raise OSCEncodeError(f"OSC cannot carry a {type(value).__name__}")


def encode_message(address: str, *args: Any) -> bytes:
    if not address.startswith("/"):
        raise OSCEncodeError(f"OSC addresses start with '/', got {address!r}")
    tags, payload = ",", []
    for arg in args:
        t, d = _encode_arg(arg)
        tags += t
        payload.append(d)
    return _encode_string(address) + _encode_string(tags) + b"".join(payload)


def encode(packet: Union[Message, Bundle]) -> bytes:
    if isinstance(packet, Message):
        return encode_message(packet.address, *packet.args)
    parts = [b"#bundle\0", struct.pack(">Q", packet.timetag)]
    for element in packet.elements:
        data = encode(element)
        parts.append(struct.pack(">i", len(data)) + data)
    return b"".join(parts)


class _Reader:
    def __init__(self, data: bytes):
        self.raw = bytes(data)
        self.data, self.pos = memoryview(self.raw), 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise OSCDecodeError(f"packet ends inside {what} (needs {n} bytes at offset {self.pos})")
        chunk = bytes(self.data[self.pos: self.pos + n])
        self.pos += n
        return chunk

    def padding(self, start: int, what: str) -> None:
        """The bytes from ``start`` to the current position pad ``what``: OSC pads with NUL bytes only."""
        if self.raw[start: self.pos].strip(b"\0"):
            raise OSCDecodeError(f"{what} is padded with bytes other than NUL (offset {start})")

    def string(self, what: str) -> str:
        end = self.raw.find(b"\0", self.pos) - self.pos  # no copy of the rest: blobs may be 64 MiB
        if end < 0:
            raise OSCDecodeError(f"{what} is not NUL-terminated")
        raw = self.raw[self.pos: self.pos + end]
        start, self.pos = self.pos, self.pos + _pad(end + 1)
        if self.pos > len(self.data):
            raise OSCDecodeError(f"{what} padding runs past the end of the packet")
        self.padding(start + end + 1, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise OSCDecodeError(f"{what} is not valid UTF-8") from None


def _decode_args(reader: _Reader, tags: str) -> tuple:
    if len(tags) > MAX_ELEMENTS:
        raise OSCDecodeError(f"{len(tags)} type tags: a packet may hold at most {MAX_ELEMENTS} elements")
    stack: list[list] = [[]]
    for tag in tags:
        out = stack[-1]
        if tag == "i":
            out.append(struct.unpack(">i", reader.take(4, "an int32"))[0])
        elif tag == "f":
            out.append(struct.unpack(">f", reader.take(4, "a float32"))[0])
        elif tag == "s":
            out.append(reader.string("a string argument"))
        elif tag == "S":
            out.append(Symbol(reader.string("a symbol argument")))
        elif tag == "b":
            size = struct.unpack(">i", reader.take(4, "a blob size"))[0]
            if size < 0 or size > reader.remaining():
                raise OSCDecodeError(f"blob claims {size} bytes but only {reader.remaining()} remain")
            out.append(reader.take(size, "a blob"))
            reader.take(_pad(size) - size, "blob padding")
            reader.padding(reader.pos - _pad(size) + size, "a blob")
        elif tag == "h":
            out.append(struct.unpack(">q", reader.take(8, "an int64"))[0])
        elif tag == "d":
            out.append(struct.unpack(">d", reader.take(8, "a float64"))[0])
        elif tag == "t":
            out.append(struct.unpack(">Q", reader.take(8, "a timetag"))[0])
        elif tag == "c":
            code = struct.unpack(">i", reader.take(4, "a char"))[0]
            try:
                out.append(chr(code))
            except (ValueError, OverflowError):
                raise OSCDecodeError(f"char argument {code} is not a character") from None
        elif tag == "r":
            out.append(struct.unpack(">I", reader.take(4, "an RGBA colour"))[0])
        elif tag == "m":
            out.append(tuple(reader.take(4, "a MIDI message")))
        elif tag == "T":
            out.append(True)
        elif tag == "F":
            out.append(False)
        elif tag == "N":
            out.append(None)
        elif tag == "I":
            out.append(math.inf)
        elif tag == "[":
            if len(stack) > MAX_ARRAY_DEPTH:
                raise OSCDecodeError(f"arrays nested more than {MAX_ARRAY_DEPTH} deep")
            stack.append([])
        elif tag == "]":
            if len(stack) == 1:
                raise OSCDecodeError("type tags close an array that was never opened")
            inner = stack.pop()
            stack[-1].append(inner)
        else:
            raise OSCDecodeError(f"unknown OSC type tag {tag!r}")
    if len(stack) != 1:
        raise OSCDecodeError("type tags open an array that is never closed")
    return tuple(stack[0])


MAX_BUNDLE_DEPTH = 8
MAX_ARRAY_DEPTH = 4
#: messages, arguments and array items in one packet at most: what a packet may make the daemon hold
#: and answer is bounded by this, not by the packet's size (an empty array is 2 bytes of type tags)
MAX_ELEMENTS = 4096


def decode(data: bytes, _depth: int = 0, _count: Optional[list] = None) -> Union[Message, Bundle]:
    """Parse one OSC packet; raises OSCDecodeError for anything malformed or over the limits
    (``MAX_ELEMENTS``, ``MAX_ARRAY_DEPTH``, ``MAX_BUNDLE_DEPTH``)."""
    count = _count if _count is not None else [0]
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise OSCDecodeError("OSC packets are bytes")
    data = bytes(data)
    if len(data) == 0:
        raise OSCDecodeError("empty packet")
    if len(data) % 4:
        raise OSCDecodeError(f"packet size {len(data)} is not a multiple of 4")
    if data.startswith(b"#bundle\0"):
        if _depth >= MAX_BUNDLE_DEPTH:
            raise OSCDecodeError("bundles nested too deeply")
        reader = _Reader(data)
        reader.take(8, "the bundle header")
        timetag = struct.unpack(">Q", reader.take(8, "the bundle timetag"))[0]
        elements = []
        while reader.remaining():
            size = struct.unpack(">i", reader.take(4, "a bundle element size"))[0]
            if size <= 0 or size > reader.remaining():
                raise OSCDecodeError(f"bundle element claims {size} bytes, {reader.remaining()} remain")
            count[0] += 1
            if count[0] > MAX_ELEMENTS:
                raise OSCDecodeError(f"a packet may hold at most {MAX_ELEMENTS} elements")
            elements.append(decode(reader.take(size, "a bundle element"), _depth + 1, count))
        return Bundle(timetag, tuple(elements))
    if not data.startswith(b"/"):
        raise OSCDecodeError("an OSC message starts with '/' and a bundle with '#bundle'")
    reader = _Reader(data)
    address = reader.string("the address")
    if not reader.remaining():
        return Message(address, tags="")  # OSC 1.0 allows a missing type tag string
    tags = reader.string("the type tag string")
    if not tags.startswith(","):
        raise OSCDecodeError("the type tag string must start with ','")
    count[0] += len(tags) - 1
    if count[0] > MAX_ELEMENTS:
        raise OSCDecodeError(f"a packet may hold at most {MAX_ELEMENTS} elements")
    args = _decode_args(reader, tags[1:])
    if reader.remaining():
        raise OSCDecodeError(f"{reader.remaining()} bytes left over after the arguments")
    return Message(address, *args, tags=tags[1:])


def messages_in(packet: Union[Message, Bundle]) -> Iterable[Message]:
    return packet.messages() if isinstance(packet, Bundle) else (packet,)
