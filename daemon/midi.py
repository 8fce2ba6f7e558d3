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
from typing import Any, Callable, Optional

from stemd import lifecycle
from stemd.daemon.dispatch import dispatch
from stemd.errors import StemdError
from stemd.lifecycle import TakeRecord
from stemd.osc import Message
from stemd.protocol import (ACCEPTED, CANCEL, CANCELLED, DONE, ERROR, GENERATE, PROGRESS, QUEUED, TAKE,
                            GenerateRequest, random_seed)

log = logging.getLogger("stemd.midi")


class DaemonTarget:
    """The daemon as a controller map's :class:`~stemd.midi.actions.ActionTarget`, and the client its
    requests come from (``key``, ``name``, ``stream`` and ``send`` are what the daemon needs of one)."""

    stream = False  # no chunks: the finished take is written to --out

    def __init__(self, call_on_loop: Callable[..., None], service: Any, audition_device: Optional[str] = None):
        self.call_on_loop, self.service = call_on_loop, service
        self.audition_device = audition_device
        self.key = ("midi", "controller")
        self.name = "midi"
        self.input_root = getattr(getattr(service, "settings", None), "out", None)  # extends continue takes in --out
        self.takes: dict[str, TakeRecord] = {}
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
        return self._submit(lifecycle.Ask(values, "generate", ""))

    def reroll(self, take_id: str) -> str:
        return self._submit(lifecycle.reroll(self._take(take_id)))

    def extend(self, take_id: str) -> str:
        return self._submit(lifecycle.extend(self._take(take_id)))

    def cancel(self, take_id: str) -> None:
        if self._take(take_id).state in ("queued", "generating"):
            self.call_on_loop(dispatch, self.service, self, Message(CANCEL, take_id))

    def accept(self, take_id: str) -> None:
        take = self._take(take_id)
        lifecycle.accept(take)
        log.info("midi: take %s accepted: %s", take_id, take.file)
        self._state(take_id, "accepted")

    def next_variation(self, take_id: str) -> None:
        self._choose(take_id, +1)

    def previous_variation(self, take_id: str) -> None:
        self._choose(take_id, -1)

    def audition(self, take_id: str) -> None:
        take = self._take(take_id)
        take.finished_file("audition")
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
    def _submit(self, ask: lifecycle.Ask) -> str:
        """Send a generate: a take it continues from goes as ``continuation_path`` (a file in --out)."""
        with self._lock:
            take_id = f"midi-{next(self._ids)}"
        params = dict(ask.params)
        if ask.continued_from:
            params["continuation_path"] = ask.continued_from
        args = lifecycle.request_args(take_id, params)
        GenerateRequest.from_args(tuple(args))  # a bad preset is refused here, on the MIDI thread, with its reason
        self.takes[take_id] = TakeRecord(take_id, dict(ask.params), kind=ask.kind, parent=ask.parent or None,
                                         continued_from=ask.continued_from)
        self.call_on_loop(dispatch, self.service, self, Message(GENERATE, *args))
        return take_id

    def _take(self, take_id: str) -> TakeRecord:
        take = self.takes.get(take_id)
        if take is None:
            raise StemdError(f"no take {take_id!r} from the controller")
        return take

    def _choose(self, take_id: str, step: int) -> None:
        take = self._take(take_id)
        lifecycle.choose(take, step)
        log.info("midi: take %s: variation %d of %d", take_id, take.variation + 1, len(take.files))
        self.audition(take_id)
