"""MIDI learn written back into the map file: the moved control bound to the action, the file's other
bindings and comments kept, written atomically, and never a map that does not load."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional, Union

from stemd.errors import StemdError
from stemd.midi.actions import ACTIONS, PARAMS
from stemd.midi.mapfile import parse
from stemd.midi.maptypes import PARAM_DEFAULTS, Control, MidiMap
from stemd.midi.tomllines import SourceLines
from stemd.takes import atomic_write

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
