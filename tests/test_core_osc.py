import math
import re
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stemd import osc
from stemd.framing import (FramingError, LengthPrefixDecoder, StreamDecoder, frame_length_prefixed,
                           frame_slip)


def test_roundtrip_of_every_type_we_send():
    data = osc.encode_message("/stemd/chunk", "id-1", 0, 3, 2 ** 40, 1.5, b"\x00\x01\x02", True, False, None,
                              osc.Symbol("sym"), [1, "a"])
    msg = osc.decode(data)
    assert msg.address == "/stemd/chunk"
    assert msg.args == ("id-1", 0, 3, 2 ** 40, 1.5, b"\x00\x01\x02", True, False, None, "sym", [1, "a"])
    assert msg.tags == "siihfbTFNS[is]"


def test_reads_types_python_osc_cannot():
    # S (symbol), c (char), I (impulse), m (MIDI) as liblo may send them
    payload = (b"/x\0\0" + b",ScIm\0\0\0" + b"ab\0\0" + struct.pack(">i", ord("q")) + bytes([0x90, 60, 100, 0]))
    msg = osc.decode(payload)
    assert msg.args == ("ab", "q", math.inf, (0x90, 60, 100, 0))


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"/ab", "multiple of 4"),
    (b"xyz\0", "starts with '/'"),
    (b"/a\0\0,i\0\0", "ends inside"),
    (b"/a\0\0,b\0\0" + struct.pack(">i", 2 ** 31 - 1), "blob claims"),
    (b"/a\0\0,z\0\0", "unknown OSC type tag"),
    (b"/a\0\0,[\0\0", "never closed"),
    (b"/a\0\0i\0\0\0", "must start with ','"),
    (b"#bundle\0" + b"\0" * 8 + struct.pack(">i", 999), "bundle element claims"),
])
def test_malformed_packets_raise_a_decode_error_saying_why(data, reason):
    with pytest.raises(osc.OSCDecodeError, match=reason):
        osc.decode(data)


WIRE = {  # one argument's bytes by its wire type tag
    "i": lambda v: struct.pack(">i", v), "f": lambda v: struct.pack(">f", v), "s": osc._encode_string,
    "S": osc._encode_string, "b": osc._encode_blob, "h": lambda v: struct.pack(">q", v),
    "d": lambda v: struct.pack(">d", v), "t": lambda v: struct.pack(">Q", v), "c": lambda v: struct.pack(">i", ord(v)),
    "r": lambda v: struct.pack(">I", v), "m": bytes, "T": lambda v: b"", "F": lambda v: b"", "N": lambda v: b"",
    "I": lambda v: b"",
}


def _wire_args(tags, values, at: int, nans: list) -> bytes:
    """The arguments' bytes, consuming ``tags`` (an iterator) up to the ']' that closes this level."""
    out, values = b"", iter(values)
    for tag in tags:
        if tag == "]":
            break
        value = next(values)
        if tag == "f" and math.isnan(value):
            nans.append(at + len(out))
        out += _wire_args(tags, value, at + len(out), nans) if tag == "[" else WIRE[tag](value)
    return out


def rebuilds(packet, data: bytes) -> bool:
    """``data`` is exactly the bytes ``packet`` was read from, rebuilt from its wire type tags (not from the
    Python values' types, as ``osc.encode`` does: a 'c', 'r', 't', 'm' or 'I' goes back as itself). Two
    things a decoded packet cannot tell: whether a message with no arguments came with its ',' type tag
    string, and the signalling bit of a float32 NaN (a Python float is quiet)."""
    if isinstance(packet, osc.Bundle):
        rest = data[16:]
        if data[:16] != b"#bundle\0" + struct.pack(">Q", packet.timetag):
            return False
        for element in packet.elements:
            size = struct.unpack(">i", rest[:4])[0]
            if not rebuilds(element, rest[4:4 + size]):
                return False
            rest = rest[4 + size:]
        return rest == b""
    address = osc._encode_string(packet.address)
    if not packet.tags and data == address:
        return True
    head = address + osc._encode_string("," + packet.tags)
    nans: list = []
    rebuilt = bytearray(head + _wire_args(iter(packet.tags), packet.args, len(head), nans))
    expected = bytearray(data)
    for at in nans:
        expected[at + 1] |= 0x40  # the quiet bit
    return rebuilt == expected


#: a known-good request: a string, int32, float32, blob, int64, float64, symbol, true, nil, array, char
GOOD = osc.encode_message("/stemd/generate", "r1", "bars", 2, "bpm", 97.5, b"\x01\x02\x03", 2 ** 40, 1e300,
                          osc.Symbol("sym"), True, None, [7, "a"])
GOOD_LAYOUT = [  # (end offset, what a packet cut inside this field, or at its start, says)
    (16, "the address is not NUL-terminated"), (36, "the type tag string is not NUL-terminated"),
    (40, "a string argument is not NUL-terminated"), (48, "a string argument is not NUL-terminated"),
    (52, "packet ends inside an int32"), (56, "a string argument is not NUL-terminated"),
    (60, "packet ends inside a float32"), (64, "packet ends inside a blob size"), (68, "blob claims 3 bytes"),
    (76, "packet ends inside an int64"), (84, "packet ends inside a float64"),
    (88, "a symbol argument is not NUL-terminated"), (92, "packet ends inside an int32"),
    (96, "a string argument is not NUL-terminated"),
]


def test_the_known_good_packet_reads_back_as_sent():
    message = osc.decode(GOOD)
    assert message.tags == "ssisfbhdSTN[is]" and rebuilds(message, GOOD) and len(GOOD) == GOOD_LAYOUT[-1][0]
    assert message.args == ("r1", "bars", 2, "bpm", 97.5, b"\x01\x02\x03", 2 ** 40, 1e300, "sym", True, None, [7, "a"])


@pytest.mark.parametrize("length", range(len(GOOD)))
def test_every_cut_of_a_known_good_packet_says_where_it_ends(length):
    cut = GOOD[:length]
    if length == 0:
        reason = "empty packet"
    elif length % 4:
        reason = f"packet size {length} is not a multiple of 4"
    elif length == 16:   # the address alone: OSC 1.0 allows a message without type tags
        message = osc.decode(cut)
        assert (message.address, message.args) == ("/stemd/generate", ()) and rebuilds(message, cut)
        return
    else:
        reason = next(what for end, what in GOOD_LAYOUT if length < end)
    with pytest.raises(osc.OSCDecodeError, match=re.escape(reason)):
        osc.decode(cut)


@pytest.mark.parametrize("offset, byte, outcome", [
    (0, b"x", "an OSC message starts with '/'"),
    (2, b"\0", "the address is padded with bytes other than NUL"),   # '/s' NUL, then 'e' where padding goes
    (15, b"!", "the type tag string must start with ','"),         # the address runs on to the next NUL
    (16, b"x", "the type tag string must start with ','"),
    (17, b"z", "unknown OSC type tag 'z'"),
    (28, b"]", "type tags close an array that was never opened"),  # the array's '[' made ']'
    (31, b"i", "packet ends inside an int32 (needs 4 bytes at offset 96)"),  # ']' made 'i': one more int32
    (31, b"T", "type tags open an array that is never closed"),
    (34, b"\x01", "the type tag string is padded with bytes other than NUL"),
    (36, b"\xff", "a string argument is not valid UTF-8"),
    (39, b"\x01", "a string argument is padded with bytes other than NUL"),
    (60, b"\x7f", "blob claims 2130706435 bytes"),                  # the blob's size, huge
    (67, b"\x01", "a blob is padded with bytes other than NUL"),
    (51, b"\x03", ("r1", "bars", 3)),                               # the int32 2 made 3: still a packet
    (36, b"R", ("R1",)),
    (38, b"\x01", ("r1\x01",)),                                     # its NUL made a char: the padding's NUL ends it
])
def test_each_mutation_of_a_known_good_packet_gives_exactly_its_outcome(offset, byte, outcome):
    mutated = GOOD[:offset] + byte + GOOD[offset + 1:]
    if isinstance(outcome, str):
        with pytest.raises(osc.OSCDecodeError, match=re.escape(outcome)):
            osc.decode(mutated)
    else:
        message = osc.decode(mutated)
        assert message.args[:len(outcome)] == outcome and rebuilds(message, mutated)


def _mutations(draw_from: bytes):
    return st.lists(st.tuples(st.integers(0, len(draw_from) - 1), st.integers(0, 255)), max_size=4).map(
        lambda edits: bytes(_edit(draw_from, edits)))


def _edit(data: bytes, edits) -> bytearray:
    out = bytearray(data)
    for at, value in edits:
        out[at] = value
    return out


BUNDLE = osc.encode(osc.Bundle(5, (osc.Message("/a", 1.5, "x"), osc.Bundle(1, (osc.Message("/b"),)))))


@settings(max_examples=600, deadline=None)
@given(st.one_of(st.binary(max_size=200), _mutations(GOOD), _mutations(BUNDLE),
                 st.builds(lambda n, tail: GOOD[:n] + tail, st.integers(0, len(GOOD)), st.binary(max_size=12))))
def test_any_bytes_decode_to_the_packet_they_spell_or_a_decode_error(data):
    """Random bytes, random edits of two known-good packets and their cuts with random tails: each is
    either exactly the packet it spells (rebuilt from what was read, it gives back the same bytes) or
    a decode error, never another exception."""
    try:
        packet = osc.decode(data)
    except osc.OSCDecodeError as e:
        assert str(e)
        return
    assert rebuilds(packet, data), (data, packet)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(-2 ** 63, 2 ** 63 - 1), st.text(max_size=20).filter(lambda s: "\0" not in s),
                          st.binary(max_size=50), st.booleans(), st.none())))
def test_roundtrip_property(args):
    assert osc.decode(osc.encode_message("/p", *args)).args == tuple(args)


def test_bundles_nest_and_flatten_to_messages():
    inner = osc.Bundle(osc.IMMEDIATELY, (osc.Message("/a", 1),))
    packet = osc.encode(osc.Bundle(osc.IMMEDIATELY, (inner, osc.Message("/b", "x"))))
    assert [m.address for m in osc.decode(packet).messages()] == ["/a", "/b"]


def test_stream_decoder_detects_length_prefix_and_slip_per_connection():
    packets = [osc.encode_message("/stemd/ping"), osc.encode_message("/x", b"\xc0\xdb" * 3)]
    for frame in (frame_length_prefixed, frame_slip):
        stream = b"".join(frame(p) for p in packets)
        decoder, got = StreamDecoder(), []
        for i in range(0, len(stream), 3):  # arrives in small pieces
            got += decoder.feed(stream[i:i + 3])
        assert got == packets
        assert decoder.frame(packets[0]) == frame(packets[0])


def test_a_2gb_length_header_is_refused_before_buffering():
    decoder = LengthPrefixDecoder(max_packet=1 << 20)
    with pytest.raises(FramingError) as e:
        decoder.feed(struct.pack(">I", 2 * 1024 ** 3) + b"/x\0\0")
    assert e.value.code == "too_large"
