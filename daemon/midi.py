"""``stemd serve --map FILE``: a MIDI controller on the daemon's own machine drives generation directly.

The controller is one more client of the daemon: each pad press becomes a ``/stemd/generate`` that goes
through the same dispatch, queue and worker as a request over OSC (so it waits its turn, can be
cancelled, and is refused with the same errors), and its replies come back here instead of over a
socket. Finished takes are written to ``--out`` with their sidecars, as for any client; pads light up
as takes are queued, generated and ready. There is no DAW transport here: tempo, meter and start bar
come from the map (``[defaults]`` or the slot), else 120 BPM 4/4 from bar 1.

Take actions work on the daemon's takes: re-roll (same slot, new seed), extend (the chosen variation's
file is the continuation, the new take starts where it ended), cancel, accept (the chosen file's sidecar
says ``accepted``), next/previous variation and audition (the chosen file plays on this machine's audio
output through PortAudio; ``--audition-device`` picks it).
"""

from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from stemd.daemon.dispatch import dispatch
from stemd.errors import StemdError
from stemd.osc import Message
from stemd.protocol import (ACCEPTED, CANCEL, CANCELLED, DONE, ERROR, GENERATE, PROGRESS, QUEUED, TAKE,
                            GenerateRequest, random_seed)
from stemd.takes import mark_sidecar, step_variation

log = logging.getLogger("stemd.midi")


@dataclass
class MidiTake:
    params: dict                      # the generate keys it was asked with
    state: str = "queued"             # queued generating ready playing accepted failed cancelled
    files: list = field(default_factory=list)
    variation: int = 0                # the chosen variation
    error: str = ""

    @property
    def file(self) -> Optional[str]:
        return self.files[self.variation] if 0 <= self.variation < len(self.files) else None


class DaemonTarget:
    """The daemon as a controller map's :class:`~stemd.midi.actions.ActionTarget`, and the client its
    requests come from (``key``, ``name``, ``stream`` and ``send`` are what the daemon needs of one)."""

    stream = False  # no chunks: the finished take is written to --out

    def __init__(self, call_on_loop: Callable[..., None], service: Any, audition_device: Optional[str] = None):
        self.call_on_loop, self.service = call_on_loop, service
        self.audition_device = audition_device
        self.key = ("midi", "controller")
        self.name = "midi"
        self.takes: dict[str, MidiTake] = {}
        self.on_state: Callable[[str, str], None] = lambda take_id, state: None  # the session's pad lights
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # --- the daemon's replies ----------------------------------------------------------------------
    def send(self, address: str, *args: Any) -> None:
        """Called on the event loop and the worker thread with what a client would receive."""
        take_id = str(args[0]) if args else ""
        take = self.takes.get(take_id)
        if take is None:
            return
        if address in (ACCEPTED, QUEUED):
            self._state(take_id, "queued")
        elif address == PROGRESS and take.state != "generating":
            self._state(take_id, "generating")
        elif address == TAKE and len(args) >= 3:
            take.files.append(str(args[2]))
        elif address == DONE:
            log.info("midi: take %s ready: %s", take_id, ", ".join(take.files))
            self._state(take_id, "ready")
        elif address == ERROR:
            take.error = " ".join(str(a) for a in args[1:])
            log.error("midi: take %s failed: %s", take_id, take.error)
            self._state(take_id, "failed")
        elif address == CANCELLED:
            self._state(take_id, "cancelled")

    def _state(self, take_id: str, state: str) -> None:
        self.takes[take_id].state = state
        try:
            self.on_state(take_id, state)
        except Exception as e:  # lights are best effort
            log.debug("midi: light for %s not set: %s", take_id, e)

    # --- actions (called on the MIDI thread) ----------------------------------------------------------
    def generate(self, slot: str, params: dict) -> str:
        values = dict(params)
        if values.get("seed") is None:
            values["seed"] = random_seed()  # fixed here, so a re-roll is a different take
        return self._submit(values)

    def reroll(self, take_id: str) -> str:
        params = dict(self._take(take_id).params)
        params.pop("continuation_path", None)
        params["seed"] = random_seed(other_than=params.get("seed"))
        return self._submit(params)

    def extend(self, take_id: str) -> str:
        take = self._finished(take_id, "extend")
        params = dict(take.params)
        params["start_bar"] = int(params.get("start_bar", 0)) + int(params.get("bars", 4))
        params["seed"] = random_seed()
        params["continuation_path"] = take.file
        return self._submit(params)

    def cancel(self, take_id: str) -> None:
        if self._take(take_id).state in ("queued", "generating"):
            self.call_on_loop(dispatch, self.service, self, Message(CANCEL, take_id))

    def accept(self, take_id: str) -> None:
        take = self._finished(take_id, "accept")
        mark_sidecar(Path(take.file), accepted=True)
        log.info("midi: take %s accepted: %s", take_id, take.file)
        self._state(take_id, "accepted")

    def next_variation(self, take_id: str) -> None:
        self._choose(take_id, +1)

    def previous_variation(self, take_id: str) -> None:
        self._choose(take_id, -1)

    def audition(self, take_id: str) -> None:
        take = self._finished(take_id, "audition")
        import soundfile

        try:
            import sounddevice
        except OSError as e:  # no PortAudio library
            raise StemdError(f"audition needs PortAudio (Debian: libportaudio2): {e}") from None
        data, rate = soundfile.read(take.file, dtype="float32", always_2d=True)
        device = self.audition_device
        device = int(device) if isinstance(device, str) and device.isdigit() else device
        try:
            sounddevice.play(data, rate, device=device)  # stops what was auditioned before
        except (sounddevice.PortAudioError, ValueError) as e:
            raise StemdError(f"cannot play on {device or 'the default output'}: {e}") from None
        log.info("midi: playing %s", take.file)
        if take.state != "accepted":
            self._state(take_id, "playing")

    # --- inside ------------------------------------------------------------------------------------
    def _submit(self, params: dict) -> str:
        with self._lock:
            take_id = f"midi-{next(self._ids)}"
        args: list = [take_id]
        for key, value in params.items():
            if value is not None:
                args += [key, value]
        GenerateRequest.from_args(tuple(args))  # a bad preset is refused here, on the MIDI thread, with its reason
        self.takes[take_id] = MidiTake(dict(params))
        self.call_on_loop(dispatch, self.service, self, Message(GENERATE, *args))
        return take_id

    def _take(self, take_id: str) -> MidiTake:
        take = self.takes.get(take_id)
        if take is None:
            raise StemdError(f"no take {take_id!r} from the controller")
        return take

    def _finished(self, take_id: str, what: str) -> MidiTake:
        take = self._take(take_id)
        if not take.file:
            raise StemdError(f"cannot {what} take {take_id}: it is {take.state}")
        return take

    def _choose(self, take_id: str, step: int) -> None:
        take = self._take(take_id)
        take.variation = step_variation(take_id, take.state, len(take.files), take.variation, step)
        log.info("midi: take %s: variation %d of %d", take_id, take.variation + 1, len(take.files))
        self.audition(take_id)
