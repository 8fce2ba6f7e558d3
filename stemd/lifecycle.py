"""One take's life under a controller, the same for the bridge and the daemon's own MIDI controller:
the record of a take and what re-roll, extend, accept and next/previous variation do to it.

- **Re-roll**: the same generate keys with a new seed; a re-rolled extension still continues from the
  file its original continued from.
- **Extend**: continue from the end of the take's *chosen* variation (``next_variation`` chooses; the
  first until then); the new take starts on the bar after it.
- **Accept**: a finished take, in its chosen variation; that file's sidecar says ``accepted``.
- **Next / previous variation**: wraps around; an accepted take with several variations is fixed.

The caller turns an ``Ask`` into a request: the bridge sends the continuation file's audio as a blob,
the daemon passes the file as ``continuation_path``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from stemd.errors import StemdError
from stemd.protocol import GenerateRequest, random_seed
from stemd.sidecar import mark_delivery
from stemd.takes import step_variation

FINISHED = ("ready", "playing", "accepted")


@dataclass
class TakeRecord:
    id: str
    params: dict                     # generate keys -> values (JSON-able; no continuation blob)
    kind: str = "generate"           # generate | reroll | extend
    parent: Optional[str] = None
    state: str = "queued"            # queued generating ready playing accepted failed cancelled
    files: list = field(default_factory=list)  # one per variation, in variation order
    error: str = ""
    created: str = ""
    variation: int = 0               # the chosen variation (next/previous variation); accept keeps it
    continued_from: str = ""         # the take file this one continues (extend, and its re-rolls)

    @property
    def accepted(self) -> bool:
        return self.state == "accepted"

    @property
    def file(self) -> Optional[str]:
        """The chosen variation's file (None until the take is delivered)."""
        return self.files[self.variation] if 0 <= self.variation < len(self.files) else None

    def request(self, request_id: Optional[str] = None, **overrides) -> GenerateRequest:
        """The request this take was made with (no continuation), under ``request_id`` if given."""
        return GenerateRequest.from_args(tuple(request_args(request_id or self.id, dict(self.params, **overrides))))

    def finished_file(self, what: str) -> str:
        if not self.file:
            raise StemdError(f"cannot {what} take {self.id}: it is {self.state}", "bad_arguments")
        return self.file


@dataclass
class Ask:
    """A new take to ask for: its generate keys and where it continues from."""

    params: dict
    kind: str
    parent: str
    continued_from: str = ""


def params_of(request: GenerateRequest) -> dict:
    """The generate keys of ``request`` as JSON-able values (the continuation blob is left out)."""
    args = request.to_args()[1:]
    params = dict(zip(args[0::2], args[1::2]))
    params.pop("continuation", None)
    return params


def request_args(take_id: str, params: dict) -> list:
    """``/stemd/generate`` arguments: the id, then the keys that have a value."""
    args: list = [take_id]
    for key, value in params.items():
        if value is not None:
            args += [key, value]
    return args


def reroll(take: TakeRecord, seed: Optional[int] = None) -> Ask:
    params = dict(take.params)
    params["seed"] = seed if seed is not None else random_seed(other_than=params.get("seed"))
    return Ask(params, "reroll", take.id, take.continued_from)


def extend(take: TakeRecord, bars: Optional[int] = None, seed: Optional[int] = None) -> Ask:
    source = take.finished_file("extend")
    params = dict(take.params)
    params["start_bar"] = int(params.get("start_bar", 0)) + int(params.get("bars", 4))
    if bars is not None:
        params["bars"] = bars
    params["seed"] = seed if seed is not None else random_seed()
    return Ask(params, "extend", take.id, source)


def accept(take: TakeRecord) -> None:
    if take.state not in FINISHED:
        raise StemdError(f"take {take.id} is {take.state}: only a finished take can be accepted", "bad_arguments")
    mark_delivery(Path(take.finished_file("accept")), accepted=True)
    take.state = "accepted"


def choose(take: TakeRecord, step: int) -> int:
    """Step the chosen variation by ``step`` (wrapping); returns the new choice."""
    take.variation = step_variation(take.id, take.state, len(take.files), take.variation, step)
    return take.variation
