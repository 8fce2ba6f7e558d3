"""The :class:`Bridge`: what the CLI, the OSC command port and MIDI mappings call.

    bridge = Bridge(client, transport, out_dir)
    take_id = bridge.generate(prompt="dusty drums", bars=4)   # starts on the next bar line
    bridge.subscribe(lambda e: print(e.take_id, e.state))     # queued, generating, ready, playing, ...
    bridge.reroll(take_id); bridge.extend(take_id); bridge.accept(take_id); bridge.cancel(take_id)
    bridge.next_variation(take_id); bridge.previous_variation(take_id); bridge.audition(take_id)

Every method returns at once; takes arrive on the client's reader thread and are delivered (written
to the folder, then handed to each extra delivery: live playback, a DAW timeline) on one worker
thread, in the order they finish.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from stemd.bridge.client import DaemonClient, Event, PendingTake
from stemd.bridge.delivery import DeliveredTake
from stemd.bridge.delivery.folder import FolderWriter
from stemd import lifecycle
from stemd.bridge.history import TakeHistory
from stemd.lifecycle import TakeRecord, params_of
from stemd.bridge.transport import Transport
from stemd.errors import StemdError
from stemd.protocol import LIMITS, GenerateRequest, ProtocolError, random_seed

MAX_EXTEND_CONTEXT_S = 30.0  # the end of a take sent back as the continuation of an extend


@dataclass
class TakeEvent:
    """A take changed state. ``bars`` counts bars received (for ``generating``)."""

    take_id: str
    state: str
    bars: int = 0
    total_bars: int = 0
    files: tuple = ()
    error: str = ""
    variation: int = 0  # the chosen variation (its file is files[variation])


Listener = Callable[[TakeEvent], None]


class Bridge:
    def __init__(self, client: DaemonClient, transport: Transport, out_dir: Path, *,
                 sample_rate: int = 48000, channels: int = 2, deliveries: tuple = (),
                 defaults: Optional[dict] = None, subtype: str = "float32"):
        self.client, self.transport = client, transport
        self.out_dir = Path(out_dir)
        self.sample_rate, self.channels = sample_rate, channels
        self.deliveries = list(deliveries)
        self.defaults = dict(defaults or {})
        self.history = TakeHistory(self.out_dir)
        self.writer = FolderWriter(self.out_dir, subtype)
        self._listeners: list[Listener] = []
        self._requests: dict[str, PendingTake] = {}
        self.delivery_errors: dict[str, list] = {}   # take id -> what a delivery (a DAW insert) said went wrong
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stemd-deliver")
        self._lock = threading.Lock()

    # --- the API ---------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> None:
        """``listener(TakeEvent)`` on every state change; called from bridge threads, keep it short."""
        self._listeners.append(listener)

    def generate(self, prompt: Optional[str] = None, bars: Optional[int] = None, *, start_bar: Optional[int] = None,
                 **params) -> str:
        """Ask for a take; returns its id. Tempo, meter and start bar come from the followed transport
        unless given (``bpm=``, ``meter=``, ``start_bar=``); other keys are generate keys (seed, variations...)."""
        values = dict(self.defaults)
        values.update({k: v for k, v in params.items() if v is not None})
        if prompt is not None:
            values["prompt"] = prompt
        if bars is not None:
            values["bars"] = bars
        if not self.transport.grid_known.is_set() and not ("bpm" in values and "meter" in values):
            raise StemdError("the followed DAW has not told its tempo and meter yet (Ardour sends neither: start "
                             "the bridge with --session <the session's folder>, or --meter and roll a bar); no take "
                             "is placed on a guessed grid", "bad_arguments")
        state = self.transport.now()
        values.setdefault("bpm", _bpm_arg(state.bpm))
        values.setdefault("meter", str(state.meter))
        values["start_bar"] = start_bar if start_bar is not None else values.get("start_bar", state.next_bar())
        values.setdefault("sample_rate", self.sample_rate)
        values.setdefault("channels", self.channels)
        if values.get("seed") is None:
            values["seed"] = random_seed()  # always sent, so the sidecar can re-render it
        return self._submit(values, kind="generate")

    def reroll(self, take_id: str, seed: Optional[int] = None) -> str:
        """The same request with a new seed; returns the new take's id."""
        return self._ask(lifecycle.reroll(self.history.get(take_id), seed))

    def extend(self, take_id: str, bars: Optional[int] = None, seed: Optional[int] = None) -> str:
        """Continue from the end of ``take_id``'s chosen variation: the new take starts on the bar after it ends."""
        return self._ask(lifecycle.extend(self.history.get(take_id), bars, seed))

    def accept(self, take_id: str) -> None:
        """Keep the take, in the variation chosen last (the first unless next/previous chose another):
        the history and that file's sidecar say ``accepted``."""
        record = self.history.accept(take_id)
        self._emit(TakeEvent(take_id, record.state, files=tuple(record.files), variation=record.variation))

    def cancel(self, take_id: str) -> None:
        record = self.history.get(take_id)
        if record.state in ("queued", "generating"):
            self.client.cancel(take_id)

    def audition(self, take_id: str) -> None:
        """Play a finished take's chosen variation through the live player (the default output unless
        ``--play`` chose one), from its bar if that is ahead, else from the next bar line. What the
        player auditioned before stops."""
        record = self.history.get(take_id)
        if not record.file:
            raise StemdError(f"take {take_id} has no file to play (it is {record.state})", "bad_arguments")
        from stemd.bridge.delivery.live import LivePlayer

        player = next((d for d in self.deliveries if isinstance(d, LivePlayer)), None)
        if player is None:
            player = self._audition_player = getattr(self, "_audition_player", None) or LivePlayer(self.transport)
        import soundfile

        data, rate = soundfile.read(record.file, dtype="float32", always_2d=True)
        player.play(DeliveredTake(take_id, record.request(), record.variation, Path(record.file), data.T, rate, 0),
                    replace=True)

    def select_variation(self, take_id: str, step: int) -> int:
        """Move the take's chosen variation ``step`` places (wrapping around); returns the new index."""
        record = self.history.get(take_id)
        chosen = self.history.set(take_id, variation=lifecycle.choose(record, step)).variation
        self._emit(TakeEvent(take_id, record.state, files=tuple(record.files), variation=chosen))
        return chosen

    def next_variation(self, take_id: str) -> str:
        """Choose the take's next variation and audition it; returns what happened, in words."""
        return self._step_variation(take_id, +1)

    def previous_variation(self, take_id: str) -> str:
        return self._step_variation(take_id, -1)

    def _step_variation(self, take_id: str, step: int) -> str:
        chosen = self.select_variation(take_id, step)
        record = self.history.get(take_id)
        said = f"{take_id}: variation {chosen + 1} of {len(record.files)} {record.file}"
        try:
            self.audition(take_id)
        except StemdError as e:  # no audio output here: the choice stands, accept keeps it
            return f"{said} (not played: {e})"
        return said

    def take(self, take_id: str) -> TakeRecord:
        return self.history.get(take_id)

    def wait(self, take_id: str, timeout: Optional[float] = None) -> TakeRecord:
        """Block until the take is delivered (ready), failed or cancelled."""
        done = threading.Event()

        def check(event: TakeEvent) -> None:
            if event.take_id == take_id and event.state in ("ready", "playing", "failed", "cancelled"):
                done.set()

        self.subscribe(check)
        try:
            if self.history.get(take_id).state in ("queued", "generating"):
                done.wait(timeout)
        finally:
            self._listeners.remove(check)
        return self.history.get(take_id)

    def close(self) -> None:
        self._worker.shutdown(wait=True)

    # --- inside ------------------------------------------------------------------------------
    def _ask(self, ask: lifecycle.Ask) -> str:
        """Ask for a re-roll or extension: the file it continues from goes as a continuation blob."""
        continuation = self._continuation_of(ask.continued_from) if ask.continued_from else None
        return self._submit(ask.params, kind=ask.kind, parent=ask.parent, continuation=continuation,
                            continued_from=ask.continued_from)

    def _continuation_of(self, path: str) -> tuple[bytes, int, int]:
        import soundfile

        try:
            data, rate = soundfile.read(path, dtype="float32", always_2d=True)
        except (OSError, RuntimeError) as e:
            raise StemdError(f"cannot read {path} to continue from: {e}", "bad_arguments") from None
        data = data[-int(MAX_EXTEND_CONTEXT_S * rate):]
        return np.ascontiguousarray(data, dtype="<f4").tobytes(), rate, data.shape[1]

    def _submit(self, params: dict, kind: str, parent: Optional[str] = None,
                continuation: Optional[tuple[bytes, int, int]] = None, continued_from: str = "") -> str:
        with self._lock:
            take_id = self.history.new_id()
            record = TakeRecord(take_id, {}, kind=kind, parent=parent, continued_from=continued_from)
            args = lifecycle.request_args(take_id, params)
            if continuation is not None:
                blob, rate, channels = continuation
                args += ["continuation", blob, "continuation_rate", rate, "continuation_channels", channels]
            request = GenerateRequest.from_args(tuple(args))  # raises ProtocolError for bad values
            record.params = params_of(request)
            self.history.add(record)
        self._emit(TakeEvent(take_id, "queued", total_bars=request.bars))
        try:
            handle = self.client.submit(request, lambda e: self._on_event(request, e))
        except StemdError as e:
            self._set(take_id, "failed", error=str(e))
            raise
        self._requests[take_id] = handle
        return take_id

    def _on_event(self, request: GenerateRequest, event: Event) -> None:
        take_id = request.request_id
        if event.kind == "chunk":
            bars = event.handle.bars_received(event.chunk.variation)
            self.history.takes[take_id].state = "generating"
            self._emit(TakeEvent(take_id, "generating", bars=bars, total_bars=request.bars))
        elif event.kind == "done":
            self._worker.submit(self._deliver, event.handle)
        elif event.kind == "error":
            message = _error_message(event.args)
            self._set(take_id, "failed", error=message)
        elif event.kind == "cancelled":
            self._set(take_id, "cancelled")

    def _deliver(self, handle: PendingTake) -> None:
        self._requests.pop(handle.id, None)
        take_id, request = handle.id, handle.request
        files = []
        try:
            variations = handle.variations or [0]
            for v in variations:
                audio, rate, start_sample = handle.audio(v)
                path = self.writer.write(take_id, request, v if len(variations) > 1 else None, audio, rate,
                                         handle.sidecars.get(v), f"{self.client.host}:{self.client.port}")
                files.append(str(path))
                delivered = DeliveredTake(take_id, request, v, path, audio, rate, start_sample)
                for delivery in self.deliveries:
                    try:
                        delivery.deliver(delivered)
                    except StemdError as e:
                        error = f"{type(delivery).__name__}: {e}"
                        self.delivery_errors.setdefault(take_id, []).append(error)
                        self._emit(TakeEvent(take_id, "ready", files=tuple(files), error=error))
        except (StemdError, OSError) as e:
            self._set(take_id, "failed", error=str(e), files=files)
            return
        self._set(take_id, "ready", files=files)
        for delivery in self.deliveries:
            state = getattr(delivery, "sets_state", None)  # live playback: the take is now playing
            if state:
                self._set(take_id, state)

    def _set(self, take_id: str, state: str, **changes) -> None:
        record = self.history.set(take_id, state=state, **changes)
        self._emit(TakeEvent(take_id, state, files=tuple(record.files), error=record.error,
                             total_bars=int(record.params.get("bars", 0)), variation=record.variation))

    def _emit(self, event: TakeEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # a listener's bug must not stop takes
                import traceback

                traceback.print_exc()


def _bpm_arg(bpm) -> object:
    """A Fraction tempo as a generate value: an int, or "n/d" so nothing is lost."""
    return int(bpm) if bpm.denominator == 1 else f"{bpm.numerator}/{bpm.denominator}"


def _error_message(args: tuple) -> str:
    if len(args) >= 3:
        return f"{args[1]}: {args[2]}"
    return " ".join(str(a) for a in args[1:]) or "the daemon reported an error"


__all__ = ["Bridge", "TakeEvent", "ProtocolError", "LIMITS"]
