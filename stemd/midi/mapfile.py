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
from pathlib import Path
from typing import Any, Optional, Union

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from stemd.errors import StemdError
from stemd.midi.actions import ACTIONS, PARAMS, TAKE_STATES
from stemd.midi.curves import CURVES
from stemd.midi.maptypes import (BIND_KEYS, CONTROL_KINDS, PARAM_DEFAULTS, SLOT_KEYS, Binding, Control, MapError,
                                 MidiMap)
from stemd.midi.tomllines import SourceLines
from stemd.protocol import GENERATE_KEYS, LIMITS, ProtocolError

__all__ = ["Binding", "Control", "MapError", "MidiMap", "load", "parse"]


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


def param_value_ok(param: str, value: Any) -> bool:
    """A knob's end or step for ``param``, checked by the protocol's own table (a whole-number
    parameter's knob may end between whole numbers: its values are rounded)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        GENERATE_KEYS[param](param, round(value) if PARAMS[param] and value == value else value)
    except (ProtocolError, OverflowError, ValueError):
        return False
    return True


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
                if not param_value_ok(param, v):
                    self.error(at(key), f"{key} {v!r} for {param} is outside {limit_lo:g}..{limit_hi:g}")
                    return None
            if curve not in CURVES:
                self.error(at("curve"), f"unknown curve {curve!r}; curves: {', '.join(CURVES)}")
                return None
            if curve == "exp" and (lo <= 0 or hi <= 0):
                self.error(at("curve"), f"curve exp needs min and max above 0 (got {lo:g}..{hi:g}); use linear")
                return None
            steps = body.get("steps", [])
            if not isinstance(steps, list) or not all(param_value_ok(param, s) for s in steps):
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
