"""The few OSC 1.0 pieces a Live Remote Script needs (Live's Python cannot import stemd): messages with
int32, float32, string, blob, int64, double, true/false/nil arguments. No bundles."""

import struct


def _pad(data):
    return data + b"\0" * (-len(data) % 4)


def _string(text):
    return _pad(text.encode("utf-8") + b"\0")


def encode(address, *args):
    tags, payload = ",", b""
    for arg in args:
        if arg is True or arg is False:
            tags += "T" if arg else "F"
        elif arg is None:
            tags += "N"
        elif isinstance(arg, int):
            if -2 ** 31 <= arg < 2 ** 31:
                tags, payload = tags + "i", payload + struct.pack(">i", arg)
            else:
                tags, payload = tags + "h", payload + struct.pack(">q", arg)
        elif isinstance(arg, float):
            tags, payload = tags + "f", payload + struct.pack(">f", arg)
        elif isinstance(arg, str):
            tags, payload = tags + "s", payload + _string(arg)
        elif isinstance(arg, (bytes, bytearray)):
            tags, payload = tags + "b", payload + struct.pack(">i", len(arg)) + _pad(bytes(arg))
        else:
            raise ValueError("OSC cannot carry %r" % (arg,))
    return _string(address) + _string(tags) + payload


def _read_string(data, pos):
    end = data.index(b"\0", pos)
    return data[pos:end].decode("utf-8"), pos + ((end - pos) // 4 + 1) * 4


def decode(data):
    """bytes -> (address, [args]); raises ValueError for anything else."""
    try:
        if not data.startswith(b"/"):
            raise ValueError("not an OSC message")
        address, pos = _read_string(data, 0)
        if pos >= len(data):
            return address, []
        tags, pos = _read_string(data, pos)
        args = []
        for tag in tags[1:]:
            if tag == "i":
                args.append(struct.unpack(">i", data[pos:pos + 4])[0])
                pos += 4
            elif tag == "f":
                args.append(struct.unpack(">f", data[pos:pos + 4])[0])
                pos += 4
            elif tag == "s" or tag == "S":
                value, pos = _read_string(data, pos)
                args.append(value)
            elif tag == "b":
                size = struct.unpack(">i", data[pos:pos + 4])[0]
                args.append(data[pos + 4:pos + 4 + size])
                pos += 4 + size + (-size % 4)
            elif tag == "h":
                args.append(struct.unpack(">q", data[pos:pos + 8])[0])
                pos += 8
            elif tag == "d":
                args.append(struct.unpack(">d", data[pos:pos + 8])[0])
                pos += 8
            elif tag in "TFN":
                args.append({"T": True, "F": False, "N": None}[tag])
            else:
                raise ValueError("unsupported OSC type %r" % tag)
        return address, args
    except (struct.error, IndexError, UnicodeDecodeError) as e:
        raise ValueError("malformed OSC message: %s" % e)
