"""What a MIDI map holds: controls, bindings, slots and banks, and the map's defaults (read and checked
by ``mapfile``, written back by ``learn``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

from stemd.errors import StemdError
from stemd.midi.curves import knob_value
from stemd.midi.actions import PARAMS

CONTROL_KINDS = ("note", "cc", "program")
SLOT_KEYS = ("prompt", "model", "bars", "stem", "temperature", "guidance", "top_k", "top_p", "seed", "variations",
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
