"""Map files: which MIDI control does what, read from TOML and checked with the line of each mistake.

A map file (docs/midi.md is the reference; bridge/maps/ has examples)::

    [device]
    input = "MPD218"          # a port name or part of one
    output = "MPD218"         # where pad lights go (optional)
    channel = 10              # 1..16; bindings without their own channel use it (absent: any channel)

    [slots.drums]             # a slot: a preset of prompt, bars, stem and model parameters
    prompt = "tight funk drums, dry"
    bars = 4
    stem = "drums"
    temperature = 1.0

    [banks.dub.slots.drums]   # a bank overrides slot presets while it is selected
    prompt = "dub drums, lots of space"

    [[bind]]
    note = 36
    action = "generate"
    slot = "drums"

    [[bind]]
    cc = 21
    action = "param"
    param = "temperature"
    min = 0.5
    max = 1.5
    curve = "exp"

    [[bind]]
    program = 1
    action = "bank"
    bank = "dub"

    [feedback]                # note velocity / CC value sent for each slot state
    queued = 5

Everything wrong is reported as ``map.toml:LINE: what is wrong`` (all problems at once).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from stemd.midi.actions import ACTIONS, PARAMS, TAKE_STATES
from stemd.midi.curves import CURVES, knob_value
from stemd.errors import StemdError
from stemd.protocol import GENERATE_KEYS, LIMITS, ProtocolError
from stemd.takes import atomic_write

CONTROL_KINDS = ("note", "cc", "program")
SLOT_KEYS = ("prompt", "bars", "stem", "temperature", "guidance", "top_k", "top_p", "seed", "variations",
             "key", "loop", "priority", "bpm", "meter", "sample_rate", "channels")
BIND_KEYS = ("note", "cc", "program", "channel", "action", "slot", "param", "min", "max", "curve", "steps",
             "bank", "feedback")
#: where a knob goes when a map (or learn) gives no range
PARAM_DEFAULTS = {"temperature": (0.5, 1.5, "exp"), "guidance": (1.0, 8.0, "linear"),
                  "top_k": (25, 500, "exp"), "top_p": (0.0, 1.0, "linear"), "bars": (1, 16, "linear")}
#: default pad lights (velocities understood by many pad controllers: 0 off, 1 green, 3 red, 5 yellow;
#: +1 blinks on Akai APC-style pads); a map's [feedback] table overrides them
DEFAULT_FEEDBACK = {"idle": 0, "queued": 5, "generating": 6, "ready": 1, "playing": 2, "failed": 3}


class MapError(StemdError):
    """Problems in a map file, each with its line: ``str()`` is one ``file:line: message`` per line."""

    code = "bad_arguments"

    def __init__(self, path: str, errors: Sequence[tuple[int, str]]):
        self.path, self.errors = path, sorted(errors)
        super().__init__("\n".join(f"{path}:{line}: {msg}" for line, msg in self.errors))


@dataclass(frozen=True)
class Control:
    """A physical control: ``kind`` note/cc/program, its number, and a channel 1..16 (None: any)."""

    kind: str
    number: int
    channel: Optional[int] = None

    def overlaps(self, other: "Control") -> bool:
        return (self.kind == other.kind and self.number == other.number
                and (self.channel is None or other.channel is None or self.channel == other.channel))

    def describe(self) -> str:
        return f"{self.kind} {self.number}" + (f" on channel {self.channel}" if self.channel else "")


@dataclass(frozen=True)
class Binding:
    control: Control
    action: str
    line: int = 0
    slot: str = ""
    param: str = ""
    bank: str = ""
    lo: float = 0.0
    hi: float = 1.0
    curve: str = "linear"
    steps: tuple = ()
    feedback: bool = True

    def value(self, cc_value: int) -> Union[int, float]:
        """The parameter value for a knob at ``cc_value`` (param bindings)."""
        return knob_value(cc_value, self.lo, self.hi, self.curve, self.steps, PARAMS.get(self.param, False))

    def describe(self) -> str:
        what = self.slot or self.param or self.bank
        return f"{self.action} {what}".strip()


@dataclass
class MidiMap:
    path: str = "<map>"
    input: str = ""
    output: str = ""
    channel: Optional[int] = None
    defaults: dict[str, Any] = field(default_factory=dict)  # [defaults]: under every slot
    slots: dict[str, dict[str, Any]] = field(default_factory=dict)
    banks: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    bindings: list[Binding] = field(default_factory=list)
    feedback: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_FEEDBACK))

    def slot_params(self, slot: str, bank: str = "") -> dict[str, Any]:
        """The slot's preset over the map's defaults, with the bank's overrides when ``bank`` is selected."""
        params = dict(self.defaults)
        params.update(self.slots.get(slot, {}))
        params.update(self.banks.get(bank, {}).get(slot, {}))
        return params


# --- where things are in the source ------------------------------------------------------------
_HEADER = re.compile(r"^\s*(\[\[?)([^\[\]]+)\]\]?\s*(#.*)?$")


def _norm(name: str) -> str:
    return ".".join(part.strip().strip("\"'") for part in name.split("."))


class SourceLines:
    """Finds the line of a table or key in TOML text (tomllib gives lines only for syntax errors)."""

    def __init__(self, text: str):
        self.lines = text.splitlines()
        self.headers: list[tuple[int, bool, str]] = []  # (line, is_array, name)
        for i, line in enumerate(self.lines, 1):
            m = _HEADER.match(line)
            if m:
                self.headers.append((i, m.group(1) == "[[", _norm(m.group(2))))

    def array_item(self, name: str, index: int) -> int:
        """Line of the ``index``-th ``[[name]]`` header (0 when there is none)."""
        found = [line for line, arr, n in self.headers if arr and n == name]
        return found[index] if index < len(found) else 0

    def block_end(self, header_line: int) -> int:
        """The last line of the table that starts at ``header_line``."""
        later = [line for line, _a, _n in self.headers if line > header_line]
        return (later[0] - 1) if later else len(self.lines)

    def key(self, header_line: int, key: str) -> int:
        """Line of ``key = ...`` in the table at ``header_line`` (0: top level); the header if absent."""
        pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
        for i in range(header_line + 1, self.block_end(header_line) + 1 if header_line else len(self.lines) + 1):
            if header_line == 0 and any(h == i for h, _a, _n in self.headers):
                break
            if pattern.match(self.lines[i - 1]):
                return i
        return header_line or 1

    def path(self, *parts: str) -> int:
        """Line of the table or key at ``parts`` (e.g. "slots", "drums", "bars"), as near as it gets."""
        for cut in range(len(parts), 0, -1):
            header = [line for line, arr, n in self.headers if not arr and n == ".".join(parts[:cut])]
            if header:
                return self.key(header[0], parts[cut]) if cut < len(parts) else header[0]
        return self.key(0, parts[0]) if parts else 1


# --- reading ------------------------------------------------------------------------------------
def load(path: Union[str, os.PathLike]) -> MidiMap:
    path = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise StemdError(f"cannot read map file {path}: {e.strerror or e}") from None
    return parse(text, path)


def parse(text: str, path: str = "<map>") -> MidiMap:
    """A checked :class:`MidiMap`, or :class:`MapError` listing every problem with its line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)", str(e))
        line = int(m.group(1)) if m else 1
        raise MapError(path, [(line, f"TOML syntax: {re.sub(r' [(]at line.*', '', str(e))}")]) from None
    return _Checker(data, SourceLines(text), path).run()


def _int_in(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


class _Checker:
    def __init__(self, data: dict, src: SourceLines, path: str):
        self.data, self.src, self.path = data, src, path
        self.errors: list[tuple[int, str]] = []
        self.map = MidiMap(path=path)

    def error(self, line: int, msg: str) -> None:
        self.errors.append((line, msg))

    def run(self) -> MidiMap:
        for key in self.data:
            if key not in ("device", "defaults", "slots", "banks", "bind", "feedback"):
                self.error(self.src.path(key), f"unknown table {key!r}; a map has device, defaults, slots, banks, "
                                               "bind, feedback")
        self.device(self.data.get("device", {}))
        self.map.defaults = self.preset(self.table(self.data.get("defaults", {}), ("defaults",)), ("defaults",),
                                        "defaults")
        self.map.slots = self.presets(self.data.get("slots", {}), ("slots",))
        for bank, body in self.table(self.data.get("banks", {}), ("banks",)).items():
            self.map.banks[bank] = self.presets(body.get("slots", {}), ("banks", bank, "slots"))
        self.feedback(self.data.get("feedback", {}))
        binds = self.data.get("bind", [])
        if not isinstance(binds, list):
            self.error(self.src.path("bind"), "bind must be an array of tables: write each one as [[bind]]")
            binds = []
        for i, body in enumerate(binds):
            self.binding(i, body)
        if self.errors:
            raise MapError(self.path, self.errors)
        return self.map

    def table(self, value: Any, where: tuple) -> dict:
        if not isinstance(value, dict):
            self.error(self.src.path(*where), f"{'.'.join(where)} must be a table")
            return {}
        return value

    def channel(self, value: Any, line: int) -> Optional[int]:
        if value is None:
            return None
        if not _int_in(value, 1, 16):
            self.error(line, f"channel {value!r} is outside 1..16")
            return None
        return value

    def device(self, dev: Any) -> None:
        dev = self.table(dev, ("device",))
        for key, value in dev.items():
            line = self.src.path("device", key)
            if key in ("input", "output"):
                if not isinstance(value, str):
                    self.error(line, f"device.{key} must be a port name (a string)")
                else:
                    setattr(self.map, key, value)
            elif key == "channel":
                self.map.channel = self.channel(value, line)
            else:
                self.error(line, f"unknown device key {key!r}; known: input, output, channel")

    def presets(self, slots: Any, where: tuple) -> dict[str, dict[str, Any]]:
        out = {}
        for name, body in self.table(slots, where).items():
            out[name] = self.preset(self.table(body, (*where, name)), (*where, name), f"slot {name}")
        return out

    def preset(self, body: dict, where: tuple, what: str) -> dict[str, Any]:
        """Generate keys, each checked as the daemon would check it."""
        preset = {}
        for key, value in body.items():
            line = self.src.path(*where, key)
            if key not in SLOT_KEYS:
                self.error(line, f"unknown slot key {key!r}; known: {', '.join(SLOT_KEYS)}")
                continue
            try:
                GENERATE_KEYS[key](key, value)
                preset[key] = value
            except ProtocolError as e:
                self.error(line, f"{what}: {e.message}")
        return preset

    def feedback(self, fb: Any) -> None:
        for state, value in self.table(fb, ("feedback",)).items():
            line = self.src.path("feedback", state)
            if state not in TAKE_STATES:
                self.error(line, f"unknown take state {state!r}; states: {', '.join(TAKE_STATES)}")
            elif not _int_in(value, 0, 127):
                self.error(line, f"feedback {state} = {value!r} is outside 0..127 (a velocity or CC value)")
            else:
                self.map.feedback[state] = value

    def binding(self, index: int, body: Any) -> None:
        header = self.src.array_item("bind", index) or self.src.path("bind")
        if not isinstance(body, dict):
            self.error(header, "each bind must be a table")
            return
        at = lambda key: self.src.key(header, key) if self.src.array_item("bind", index) else header  # noqa: E731
        for key in body:
            if key not in BIND_KEYS:
                self.error(at(key), f"unknown bind key {key!r}; known: {', '.join(BIND_KEYS)}")
        kinds = [k for k in CONTROL_KINDS if k in body]
        if len(kinds) != 1:
            self.error(header, "a bind needs exactly one of note, cc, program" + (f" (has {', '.join(kinds)})"
                                                                               if kinds else ""))
            return
        kind = kinds[0]
        number = body[kind]
        if not _int_in(number, 0, 127):
            self.error(at(kind), f"{kind} {number!r} is outside 0..127")
            return
        channel = self.channel(body.get("channel"), at("channel")) if "channel" in body else self.map.channel
        control = Control(kind, number, channel)
        action = body.get("action")
        if action not in ACTIONS:
            self.error(at("action") if "action" in body else header,
                       f"unknown action {action!r}; actions: {', '.join(ACTIONS)}" if action is not None
                       else f"bind has no action; actions: {', '.join(ACTIONS)}")
            return
        binding = self.action_fields(Binding(control, action, line=header), body, at)
        if binding is None:
            return
        for other in self.map.bindings:
            if other.control.overlaps(control):
                self.error(header, f"duplicate binding: {control.describe()} is already bound on line "
                                   f"{other.line} ({other.describe()})")
                return
        self.map.bindings.append(binding)

    def action_fields(self, b: Binding, body: dict, at) -> Optional[Binding]:
        fields: dict[str, Any] = {"feedback": bool(body.get("feedback", True))}
        if b.action == "generate" or (b.action in ("reroll", "accept", "extend", "cancel", "next_variation",
                                                   "previous_variation", "audition") and "slot" in body):
            slot = body.get("slot")
            if b.action == "generate" and slot is None:
                self.error(at("action"), "generate needs slot = \"NAME\" (a [slots.NAME] table)")
                return None
            if slot not in self.map.slots:
                self.error(at("slot"), f"unknown slot {slot!r}; slots: {', '.join(self.map.slots) or '(none)'}")
                return None
            fields["slot"] = slot
        elif b.action == "param":
            param = body.get("param")
            if param not in PARAMS:
                self.error(at("param") if "param" in body else at("action"),
                           f"param must be one of {', '.join(PARAMS)}, got {param!r}")
                return None
            if b.control.kind != "cc":
                self.error(at(b.control.kind), f"param {param} needs a knob: bind it to cc, not {b.control.kind}")
                return None
            lo, hi, curve = PARAM_DEFAULTS[param]
            lo, hi, curve = body.get("min", lo), body.get("max", hi), body.get("curve", curve)
            limit_lo, limit_hi = LIMITS[param]
            for key, v in (("min", lo), ("max", hi)):
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not limit_lo <= v <= limit_hi:
                    self.error(at(key), f"{key} {v!r} for {param} is outside {limit_lo:g}..{limit_hi:g}")
                    return None
            if curve not in CURVES:
                self.error(at("curve"), f"unknown curve {curve!r}; curves: {', '.join(CURVES)}")
                return None
            if curve == "exp" and (lo <= 0 or hi <= 0):
                self.error(at("curve"), f"curve exp needs min and max above 0 (got {lo:g}..{hi:g}); use linear")
                return None
            steps = body.get("steps", [])
            if not isinstance(steps, list) or not all(
                    not isinstance(s, bool) and isinstance(s, (int, float)) and limit_lo <= s <= limit_hi
                    for s in steps):
                self.error(at("steps"), f"steps must be a list of {param} values in {limit_lo:g}..{limit_hi:g}")
                return None
            if PARAMS[param] and not all(isinstance(s, int) for s in steps):
                self.error(at("steps"), f"steps for {param} must be whole numbers")
                return None
            fields.update(param=param, lo=lo, hi=hi, curve=curve, steps=tuple(steps))
        elif b.action == "bank":
            bank = body.get("bank", "")
            if bank != "" and bank not in self.map.banks:
                self.error(at("bank"), f"unknown bank {bank!r}; banks: {', '.join(self.map.banks) or '(none)'}"
                                       " (bank = \"\" selects the slots as written)")
                return None
            fields["bank"] = bank
        return Binding(b.control, b.action, line=b.line, **fields)


# --- writing back (MIDI learn) -----------------------------------------------------------------
def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def bind_text(control: Control, action: str, arg: str = "") -> list[str]:
    """The lines of a new ``[[bind]]`` table."""
    lines = ["[[bind]]", f"{control.kind} = {control.number}"]
    if control.channel:
        lines.append(f"channel = {control.channel}")
    lines.append(f"action = {_toml_str(action)}")
    if action == "param":
        lo, hi, curve = PARAM_DEFAULTS[arg]
        lines += [f"param = {_toml_str(arg)}", f"min = {lo!r}", f"max = {hi!r}", f"curve = {_toml_str(curve)}"]
    elif action in ("generate",) or (arg and action in ACTIONS and action != "bank"):
        lines.append(f"slot = {_toml_str(arg)}")
    elif action == "bank":
        lines.append(f"bank = {_toml_str(arg)}")
    return lines


def learn_into_text(text: str, control: Control, action: str, arg: str = "", path: str = "<map>") -> str:
    """``text`` with ``control`` bound to ``action`` (``arg``: its slot, param or bank).

    An existing binding for the same action and argument gets the new control (its other keys and the
    file's comments stay); a binding that used the control before loses it (its table is removed,
    comments kept). Otherwise a new ``[[bind]]`` table is appended.
    """
    current = parse(text, path)
    src = SourceLines(text)
    lines = list(src.lines)
    drop: set[int] = set()
    replaced = False
    for b in current.bindings:
        same = b.action == action and (b.slot or b.param or b.bank) == arg
        start, end = b.line, src.block_end(b.line)
        if same and not replaced:
            replaced = True
            for i in range(start + 1, end + 1):
                if re.match(r"^\s*(note|cc|program|channel)\s*=", lines[i - 1]):
                    drop.add(i)
            new = [f"{control.kind} = {control.number}"] + ([f"channel = {control.channel}"] if control.channel
                                                             else [])
            lines[start - 1] = lines[start - 1] + "\n" + "\n".join(new)
        elif b.control.overlaps(control):
            drop.update(i for i in range(start, end + 1)
                        if lines[i - 1].strip() and not lines[i - 1].lstrip().startswith("#"))
    out = [line for i, line in enumerate(lines, 1) if i not in drop]
    if not replaced:
        if out and out[-1].strip():
            out.append("")
        out += bind_text(control, action, arg)
    new_text = "\n".join(out) + "\n"
    parse(new_text, path)  # never write a map that does not load
    return new_text


def learn_into_file(path: Union[str, os.PathLike], control: Control, action: str, arg: str = "") -> MidiMap:
    """Write the learned binding into the map file (atomically) and return the new map."""
    path = str(path)
    text = Path(path).read_text(encoding="utf-8") if os.path.exists(path) else ""
    new_text = learn_into_text(text, control, action, arg, path)
    atomic_write(path, new_text)
    return parse(new_text, path)


def parse_learn_spec(spec: str, midimap: Optional[MidiMap] = None) -> tuple[str, str]:
    """``ACTION[:ARG]`` from ``--learn`` / OSC -> (action, arg), checked against the map."""
    action, _sep, arg = spec.partition(":")
    if action not in ACTIONS:
        raise StemdError(f"cannot learn {action!r}: actions are {', '.join(ACTIONS)}")
    if action == "generate" and not arg:
        raise StemdError("learn generate needs a slot: --learn generate:SLOT")
    if action == "param" and arg not in PARAMS:
        raise StemdError(f"learn param needs one of {', '.join('param:' + p for p in PARAMS)}")
    if midimap is not None:
        if arg and action not in ("param", "bank") and arg not in midimap.slots:
            raise StemdError(f"unknown slot {arg!r} in {midimap.path}; slots: {', '.join(midimap.slots) or '(none)'}")
        if action == "bank" and arg and arg not in midimap.banks:
            raise StemdError(f"unknown bank {arg!r} in {midimap.path}; banks: {', '.join(midimap.banks) or '(none)'}")
    return action, arg
