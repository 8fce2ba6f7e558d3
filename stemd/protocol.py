"""The stemd OSC protocol: addresses, request fields, limits and error codes.

Requests are validated here, at the edge, when they are built: a :class:`GenerateRequest` that exists
is a request the daemon can run. Everything wrong with one raises :class:`ProtocolError` with a
stable ``code`` (sent back as ``/stemd/error <id> <code> <message>``) and a message a producer can act
on. docs/protocol.md is the reference for users; the tables below are the reference for code. Beside the
wire: the sampling defaults are ``stemd.sampling``, which keys each model family takes ``stemd.families``,
a take's sidecar ``stemd.sidecar``.
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass, field, fields
from fractions import Fraction
from typing import Any, Optional

import numpy as np

from stemd.errors import StemdError
from stemd.sampling import DEFAULT_SAMPLING, Sampling  # noqa: F401  (models import Sampling from here too)
from stemd.timing import Meter, Tempo, TimingError

VERSION = "0.1.0"
DEFAULT_PORT = 9130

# --- addresses -------------------------------------------------------------------------------
PING, PONG = "/stemd/ping", "/stemd/pong"
HELLO = "/stemd/hello"  # <token:s>: first message on TCP when the daemon requires a token
GENERATE, CANCEL, STATUS = "/stemd/generate", "/stemd/cancel", "/stemd/status"
ACCEPTED, QUEUED, PROGRESS = "/stemd/accepted", "/stemd/queued", "/stemd/progress"
CHUNK, TAKE, DONE, ERROR = "/stemd/chunk", "/stemd/take", "/stemd/done", "/stemd/error"
SIDECAR = "/stemd/sidecar"        # <id> <variation> <json>: the take's sidecar, before its /stemd/take
CHUNK_PART = "/stemd/chunk/part"   # a bar in parts, for clients with a smaller largest message (liblo: 32 KiB)
STATUS_REPLY = "/stemd/status/reply"
MODELS, MODELS_REPLY = "/stemd/models", "/stemd/models/reply"
CANCELLED = "/stemd/cancelled"
BYE = "/stemd/bye"  # the daemon is shutting down

# --- error codes (stable: clients may switch on them) ---------------------------------------
ERROR_CODES = {
    "bad_packet": "the bytes are not an OSC packet",
    "bad_framing": "the TCP stream cannot be framed as OSC 1.0 or SLIP",
    "too_large": "a packet, blob or take is over its size limit",
    "unknown_address": "no handler for this OSC address",
    "bad_arguments": "the arguments do not have the shape the address expects",
    "unknown_key": "a generate key stemd does not know",
    "wrong_type": "a value of the wrong OSC type for its key",
    "out_of_range": "a value outside what stemd accepts",
    "duplicate_id": "a request id that this client is already using",
    "unknown_request": "no request with this id",
    "busy": "the queue is full: try again later",
    "unauthorized": "the daemon requires a token and none (or a wrong one) was given",
    "tcp_only": "this needs a TCP connection",
    "unsupported_key": "a generate key this model does not have (strength on MusicGen, top_k on a diffusion model)",
    "model_not_found": "the model is not available on the daemon's machine",
    "unknown_model": "a model name this daemon does not serve",
    "engine_error": "the engine failed on this request",
    "io_error": "the daemon could not write the take (disk full, permissions)",
    "cancelled": "the request was cancelled",
    "shutting_down": "the daemon is stopping",
    "internal": "a bug in stemd: please report it with the daemon's log",
}

LIMITS = {
    "bars": (1, 256),
    "start_bar": (0, 1_000_000),
    "sample_rate": (8000, 192000),
    "channels": (1, 2),
    "variations": (1, 16),
    "seed": (0, 2 ** 63 - 1),
    "temperature": (0.01, 5.0),
    "top_k": (0, 2048),
    "top_p": (0.0, 1.0),
    "guidance": (0.0, 20.0),
    "steps": (1, 200),
    "strength": (0.0, 1.0),
    "guide_strength": (0.0, 1.0),
    "chords_chars": (0, 4096),
    "prompt_chars": (0, 2000),
    "key_chars": (0, 64),
    "continuation_path_chars": (0, 4096),
    "text_chars": (0, 256),          # any other string key
    "id_chars": (1, 128),
    "reply_port": (1, 65535),
    "max_message": (1024, 64 * 1024 * 1024 + 64 * 1024),
}
PRIORITIES = ("live", "offline")
MAX_CONTINUATION_BYTES = 64 * 1024 * 1024
MAX_SIDECAR_BYTES = 64 * 1024    # a /stemd/sidecar's JSON text at most, UTF-8 (stemd.sidecar keeps well under)
_ID = re.compile(r"[A-Za-z0-9_.:\-]+", re.ASCII)                 # (always fullmatch: no trailing newline)
_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _\-]{0,31}", re.ASCII)
#: a model's name in a daemon (``--model NAME=SOURCE``; the ``model`` generate key)
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}", re.ASCII)
_REPAINT = re.compile(r"\d{1,4}-\d{1,4}", re.ASCII)
#: keys that only some model families have (models refuse the ones they lack with ``unsupported_key``)
MODEL_KEYS = ("steps", "strength", "track", "extract", "repaint", "guide", "chords", "guide_strength")


class ProtocolError(StemdError, ValueError):
    def __init__(self, code: str, message: str, request_id: str = ""):
        assert code in ERROR_CODES, code
        super().__init__(message, code)
        self.message, self.request_id = message, request_id

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def random_seed(other_than: Optional[int] = None) -> int:
    """A seed for a request that named none (31 bits: what every MusicGen front end accepts), never
    ``other_than`` (a re-roll must not repeat its take)."""
    seed = secrets.randbelow(2 ** 31)
    while seed == other_than:
        seed = secrets.randbelow(2 ** 31)
    return seed


def check_request_id(value: Any) -> str:
    if not isinstance(value, str):
        raise ProtocolError("bad_arguments", "the request id must be a string")
    lo, hi = LIMITS["id_chars"]
    if not lo <= len(value) <= hi or not _ID.fullmatch(value):
        raise ProtocolError("bad_arguments",
                            f"request id must be 1-{hi} characters of letters, digits, _ . : -; got {value[:40]!r}")
    return value


def _int(key: str, value: Any, limit: Optional[str] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError("wrong_type", f"{key} must be an integer (OSC i or h), got {_osc_type(value)}")
    lo, hi = LIMITS[limit or key]
    if not lo <= value <= hi:
        raise ProtocolError("out_of_range", f"{key} must be {lo}..{hi}, got {value}")
    return value


def _float(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError("wrong_type", f"{key} must be a number (OSC f, d or i), got {_osc_type(value)}")
    value = float(value)
    lo, hi = LIMITS[key]
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ProtocolError("out_of_range", f"{key} must be {lo:g}..{hi:g}, got {value}")
    return value


def _osc_type(value: Any) -> str:
    names = {bool: "a bool (T/F)", int: "an integer", float: "a float", str: "a string", bytes: "a blob"}
    return names.get(type(value), type(value).__name__)


def parse_tempo(value: Any) -> Tempo:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ProtocolError("wrong_type", f"bpm must be a number or a string like \"275/2\", got {_osc_type(value)}")
    try:
        if isinstance(value, float):
            # a float32 from OSC: take the shortest decimal that survives float32 (137.5, 133.33)
            value = str(np.float32(value)) if math.isfinite(value) and abs(value) < 1e6 else value
        return Tempo(value)
    except TimingError as e:
        raise ProtocolError("out_of_range", str(e)) from None


@dataclass(frozen=True)
class GenerateRequest:
    """A validated ``/stemd/generate``; build it with :meth:`from_args` or keywords. Both go through
    the one table ``GENERATE_KEYS``: every field is checked (and normalised: ``bpm=120`` becomes a
    ``Tempo``, ``meter="7/8"`` a ``Meter``) when the request is built, and a wrong one raises the
    protocol's typed error naming it."""

    request_id: str
    prompt: str = ""
    bars: int = 4
    bpm: Tempo = field(default_factory=lambda: Tempo(120))
    meter: Meter = field(default_factory=lambda: Meter(4, 4))
    start_bar: int = 0
    sample_rate: int = 48000
    channels: int = 2
    variations: int = 1
    seed: Optional[int] = None
    temperature: float = DEFAULT_SAMPLING.temperature
    top_k: int = DEFAULT_SAMPLING.top_k
    top_p: float = DEFAULT_SAMPLING.top_p
    guidance: Optional[float] = DEFAULT_SAMPLING.guidance
    steps: Optional[int] = None                # diffusion: denoising steps (None: the model's own, 8)
    strength: Optional[float] = None           # Stable Audio 3: a variation of the given audio (0 keep, 1 new)
    track: str = ""                            # ACE-Step: add this part (drums, bass...) over the given audio
    extract: str = ""                          # ACE-Step: this stem of the given audio
    repaint: str = ""                          # ACE-Step: "FIRST-LAST" bars of the given take made again
    guide: Optional[bytes] = None              # a guide: Standard MIDI File bytes (stemd.guides)
    chords: str = ""                           # a guide: chord symbols per bar, "Am7 | F | C/E | G7sus4"
    guide_strength: Optional[float] = None     # ACE-Step: how much a cover follows its guide (0..1)
    priority: str = "live"
    model: str = ""                            # which of the daemon's models ("": its first)
    key: str = ""
    stem: str = ""                             # a label: names the take's files and its DAW track
    loop: bool = False
    continuation: Optional[bytes] = None       # float32 LE interleaved at continuation_rate
    continuation_path: str = ""                # a file on the daemon's host
    continuation_rate: int = 48000
    continuation_channels: int = 2
    reply_port: Optional[int] = None           # UDP: send replies here instead of the sender's port
    chunks: bool = True                        # TCP: stream /stemd/chunk (False: only /stemd/take at the end)
    max_message: Optional[int] = None          # TCP: the largest message the client takes; bars over it in parts

    def __post_init__(self):
        check_request_id(self.request_id)
        for f in fields(self)[1:]:
            value = getattr(self, f.name)
            if value is None and f.name in OPTIONAL_KEYS:
                continue
            checked = GENERATE_KEYS[f.name](f.name, value)
            if checked is not value:
                object.__setattr__(self, f.name, checked)
        if self.continuation is not None and len(self.continuation) % (4 * self.continuation_channels):
            raise ProtocolError("bad_arguments", "continuation must be whole float32 frames")
        if self.repaint:
            first, last = repaint_range(self.repaint)
            if not 1 <= first <= last <= self.bars:
                raise ProtocolError("out_of_range", f"repaint {self.repaint!r}: FIRST and LAST must be bars of the "
                                    f"take, 1..{self.bars}, with FIRST <= LAST")
        if self.guide is not None or self.chords:
            from stemd.guides import guide_notes

            guide_notes(self)       # a guide that cannot be used is refused here, before any work

    @property
    def sampling(self) -> Sampling:
        return Sampling(self.temperature, self.top_k, self.top_p, self.guidance)

    @property
    def seconds(self) -> Fraction:
        return self.bars * self.meter.bar_quarters * self.bpm.seconds_per_quarter

    def continuation_audio(self) -> Optional[np.ndarray]:
        """The continuation blob as float32 ``(channels, n)``."""
        if self.continuation is None:
            return None
        data = np.frombuffer(self.continuation, dtype="<f4")
        if not np.all(np.isfinite(data)):
            raise ProtocolError("out_of_range", "continuation audio contains NaN or infinity")
        return data.reshape(-1, self.continuation_channels).T.astype(np.float32)

    @classmethod
    def from_args(cls, args: tuple) -> "GenerateRequest":
        """``<request_id> [<key> <value>]...`` as received."""
        if not args:
            raise ProtocolError("bad_arguments", "generate needs a request id first")
        request_id = check_request_id(args[0])
        rest = args[1:]
        if len(rest) % 2:
            raise ProtocolError("bad_arguments", "after the request id, arguments come in key value pairs",
                                request_id)
        values: dict[str, Any] = {}
        for key, value in zip(rest[0::2], rest[1::2]):
            if not isinstance(key, str):
                raise ProtocolError("bad_arguments", f"expected a key string, got {_osc_type(key)}", request_id)
            if key not in GENERATE_KEYS:
                raise ProtocolError("unknown_key", f"unknown key {key!r}; known keys: {', '.join(GENERATE_KEYS)}",
                                    request_id)
            if key in values:
                raise ProtocolError("bad_arguments", f"key {key!r} given twice", request_id)
            values[key] = value
        try:
            return cls(request_id, **values)
        except ProtocolError as e:
            e.request_id = request_id
            raise

    def to_args(self) -> list:
        """The OSC arguments that make this request again (defaults left out)."""
        out: list = [self.request_id]
        for f in fields(self):
            if f.name == "request_id":
                continue
            value = getattr(self, f.name)
            default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
            if value == default or value is None:
                continue
            if isinstance(value, Tempo):
                value = f"{value.bpm.numerator}/{value.bpm.denominator}" if value.bpm.denominator != 1 else int(value.bpm)
            elif isinstance(value, Meter):
                value = str(value)
            elif isinstance(value, bool):
                value = int(value)
            out += [f.name, value]
        return out

    def describe(self) -> dict:
        """Every parameter, JSON-ready (for sidecars and logs)."""
        d = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "continuation":
                value = None if value is None else f"<{len(value)} bytes>"
            elif f.name == "guide" and value is not None:
                import hashlib

                value = f"<SMF of {len(value)} bytes, sha256 {hashlib.sha256(value).hexdigest()}>"
            elif isinstance(value, Tempo):
                value = float(value.bpm)
            elif isinstance(value, Meter):
                value = str(value)
            d[f.name] = value
        return d


def _str(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ProtocolError("wrong_type", f"{key} must be a string, got {_osc_type(value)}")
    hi = LIMITS.get(f"{key}_chars", (0, LIMITS["text_chars"][1]))[1]
    if len(value) > hi:
        raise ProtocolError("out_of_range", f"{key} is over {hi} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:     # a lone surrogate: an OSC 'c' or 'S' argument can carry one
        raise ProtocolError("out_of_range", f"{key} is not valid text (it holds a lone surrogate)") from None
    return value


def _path(key: str, value: Any) -> str:
    if "\0" in _str(key, value):
        raise ProtocolError("out_of_range", f"{key} holds a NUL character: not a file name")
    return value


def _matching(pattern: re.Pattern, code: str, what: str):
    """A check for a string key that is "" (not given) or matches ``pattern``."""
    def check(key: str, value: Any) -> str:
        if _str(key, value) and not pattern.fullmatch(value):
            raise ProtocolError(code, f"{key} must be {what}, got {value[:40]!r}")
        return value
    return check


#: a stem or part name
_label = _matching(_STEM, "out_of_range", "1-32 letters, digits, spaces, _ or - starting with a letter or digit "
                   "(drums, bass, keys 2)")
_model = _matching(MODEL_NAME, "out_of_range", "a model name: 1-64 letters, digits, _ . - starting with a letter or "
                   "digit")
_repaint = _matching(_REPAINT, "bad_arguments", "'FIRST-LAST' bars of the take, like \"2-3\"")


def repaint_range(value: str) -> tuple[int, int]:
    """A checked ``repaint`` value, ``"2-3"``, as (2, 3): the first and last bar of the take made again, from 1."""
    first, last = value.split("-")
    return int(first), int(last)


def _tempo(key: str, value: Any) -> Tempo:
    return value if isinstance(value, Tempo) else parse_tempo(value)


def _meter(key: str, value: Any) -> Meter:
    if isinstance(value, Meter):
        return value
    try:
        return Meter.parse(_str(key, value))
    except TimingError as e:
        raise ProtocolError("out_of_range", str(e)) from None


def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ProtocolError("wrong_type", f"{key} must be T/F or 0/1, got {_osc_type(value)}")


def _bytes(key: str, value: Any, what: str, limit: int) -> bytes:
    """A blob key's bytes: ``what`` the blob must be (for the message), at most ``limit`` bytes."""
    if not isinstance(value, (bytes, bytearray)):
        raise ProtocolError("wrong_type", f"{key} must be a blob ({what}), got {_osc_type(value)}")
    if len(value) > limit:
        raise ProtocolError("too_large", f"{key} is {len(value)} bytes, over the {limit} it may be")
    return bytes(value)


def _blob(key: str, value: Any) -> bytes:
    return _bytes(key, value, "float32 LE interleaved", MAX_CONTINUATION_BYTES)


def _guide_blob(key: str, value: Any) -> bytes:
    from stemd.guides import MAX_GUIDE_BYTES

    return _bytes(key, value, "a Standard MIDI File", MAX_GUIDE_BYTES)


def _priority(key: str, value: Any) -> str:
    if _str(key, value) not in PRIORITIES:
        raise ProtocolError("out_of_range", f"{key} must be one of {', '.join(PRIORITIES)}, got {value[:40]!r}")
    return value


#: every generate key and its check: ``check(key, value)`` returns the value (normalised) or raises the
#: protocol's typed error naming the key. Requests built from OSC arguments and from keywords use it alike.
GENERATE_KEYS = {
    "prompt": _str,
    "bars": _int,
    "bpm": _tempo,
    "meter": _meter,
    "start_bar": _int,
    "sample_rate": _int,
    "channels": _int,
    "variations": _int,
    "seed": _int,
    "temperature": _float,
    "top_k": _int,
    "top_p": _float,
    "guidance": _float,
    "steps": _int,
    "strength": _float,
    "track": _label,
    "extract": _label,
    "repaint": _repaint,
    "guide": _guide_blob,
    "chords": _str,
    "guide_strength": _float,
    "priority": _priority,
    "model": _model,
    "key": _str,
    "stem": _label,
    "loop": _bool,
    "continuation": _blob,
    "continuation_path": _path,
    "continuation_rate": lambda k, v: _int(k, v, "sample_rate"),
    "continuation_channels": lambda k, v: _int(k, v, "channels"),
    "reply_port": _int,
    "chunks": _bool,
    "max_message": _int,
}
#: keys whose None means "not given" (the model's own, a random seed, the sender's port)
OPTIONAL_KEYS = ("seed", "guidance", "steps", "strength", "continuation", "reply_port", "max_message", "guide",
                 "guide_strength")


# --- chunks ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Chunk:
    """``/stemd/chunk <id> <variation> <bar_index> <start_sample> <sample_rate> <channels> <blob>``.

    ``bar_index`` counts bars within the take (0 = the take's first bar); ``start_sample`` is where
    the bar starts on the DAW's timeline at ``sample_rate`` (bar ``start_bar + bar_index``). The blob
    is float32 little-endian, interleaved, exactly one bar long.
    """

    request_id: str
    variation: int
    bar_index: int
    start_sample: int
    sample_rate: int
    channels: int
    audio: np.ndarray  # float32 (channels, n)

    def to_args(self) -> tuple:
        interleaved = np.ascontiguousarray(self.audio.T, dtype="<f4").tobytes()
        return (self.request_id, self.variation, self.bar_index, self.start_sample, self.sample_rate,
                self.channels, interleaved)

    def messages(self, max_message: Optional[int] = None) -> list[tuple[str, tuple]]:
        """The OSC messages that carry this bar: one ``/stemd/chunk``, or, when that message would be larger
        than ``max_message`` bytes, ``/stemd/chunk/part <id> <variation> <bar_index> <part> <parts>
        <start_sample> <sample_rate> <channels> <audio>`` messages of at most ``max_message`` bytes, each part's
        ``start_sample`` its own first sample on the timeline; the parts in order are the bar."""
        from stemd import osc

        whole = self.to_args()
        if max_message is None or len(osc.encode_message(CHUNK, *whole)) <= max_message:
            return [(CHUNK, whole)]
        frames = self.audio.shape[1]
        frame_bytes = 4 * self.channels
        # the largest a part's header can be: the biggest counts and sample position this bar has
        header = len(osc.encode_message(CHUNK_PART, self.request_id, self.variation, self.bar_index, frames, frames,
                                        self.start_sample + frames, self.sample_rate, self.channels, b""))
        per_part = (max_message - header) // frame_bytes    # max_message >= 1024: at least a hundred frames
        parts = -(-frames // per_part)
        out = []
        for part in range(parts):
            lo, hi = part * per_part, min(frames, (part + 1) * per_part)
            audio = np.ascontiguousarray(self.audio[:, lo:hi].T, dtype="<f4").tobytes()
            out.append((CHUNK_PART, (self.request_id, self.variation, self.bar_index, part, parts,
                                     self.start_sample + lo, self.sample_rate, self.channels, audio)))
        return out

    @classmethod
    def from_args(cls, args: tuple) -> "Chunk":
        if len(args) != 7 or not isinstance(args[6], bytes):
            raise ProtocolError("bad_arguments", "chunk: <id> <variation> <bar_index> <start_sample> <rate> <channels> <blob>")
        request_id, variation, bar_index, start_sample, rate, channels, blob = args
        if len(blob) % (4 * channels):
            raise ProtocolError("bad_arguments", "chunk blob is not whole float32 frames")
        audio = np.frombuffer(blob, dtype="<f4").reshape(-1, channels).T.copy()
        return cls(request_id, variation, bar_index, start_sample, rate, channels, audio)
