import math
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


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_decode_is_total_over_random_bytes(data):
    try:
        osc.decode(data)
    except osc.OSCDecodeError:
        pass


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
