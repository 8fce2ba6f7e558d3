"""What a MIDI control can do, and the interface the thing that does it must offer.

The mapping (:mod:`stemd.midi.mapper`) turns MIDI into calls on an :class:`ActionTarget`: the
bridge in ``stemd bridge``, or anything else with these methods. Take-level actions name the take they
act on; the mapper remembers which take each slot last made, so a pad acts on its own slot's take.

Take states come back the other way (``Mapper.take_state(take_id, state)``) and light the pads.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, runtime_checkable

#: action name -> one line of help (the names used in map files and ``--learn``)
ACTIONS = {
    "generate": "generate a take from a slot (a preset of prompt, bars, stem and model parameters)",
    "reroll": "throw the take away and generate it again with a new seed",
    "accept": "keep the take (write it to the project)",
    "extend": "generate more bars that continue the take",
    "cancel": "stop generating the take",
    "next_variation": "audition the next variation of the take",
    "previous_variation": "audition the previous variation of the take",
    "audition": "play the take (again)",
    "param": "set a continuous parameter from a knob (temperature, guidance, top_k, top_p, bars)",
    "bank": "switch to a bank of slot presets (usually from a program change)",
}

#: actions that press like a button and act on a take (the mapper passes the take id)
TAKE_ACTIONS = ("reroll", "accept", "extend", "cancel", "next_variation", "previous_variation", "audition")

#: knob-controlled parameters -> integer?  (ranges come from stemd.protocol.LIMITS)
PARAMS = {"temperature": False, "guidance": False, "top_k": True, "top_p": False, "bars": True}

#: states a take goes through, as the bridge reports them; "idle" turns a pad's light off
TAKE_STATES = ("idle", "queued", "generating", "ready", "playing", "failed")


@runtime_checkable
class ActionTarget(Protocol):
    """What ``stemd bridge`` (or a test) implements to be driven from a controller.

    ``generate`` gets the slot's name and its parameters (GenerateRequest keys such as prompt, bars,
    temperature, guidance, top_k, top_p, seed, variations, plus ``stem``) and returns the new take's id.
    The take actions get the id of the take they act on. None of them may block for long: they are
    called from the MIDI thread.
    """

    def generate(self, slot: str, params: dict[str, Any]) -> str: ...

    def reroll(self, take_id: str) -> Optional[str]: ...

    def accept(self, take_id: str) -> None: ...

    def extend(self, take_id: str) -> Optional[str]: ...

    def cancel(self, take_id: str) -> None: ...

    def next_variation(self, take_id: str) -> None: ...

    def previous_variation(self, take_id: str) -> None: ...

    def audition(self, take_id: str) -> None: ...
