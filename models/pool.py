"""Several models held warm on one machine's devices, within a memory budget per device.

A :class:`ModelPool` knows every model a daemon serves by name (``--model NAME=SOURCE``; ``--models
FILE``) and which of them are loaded where. A model is found (its folder, family and footprint read
from disk) when the pool is made, so a missing one is reported at start; it loads on first use and
stays warm. When a device's budget cannot hold a request's model and working memory beside the
models already there, the least recently used models on that device are evicted first (logged:
which, why, bytes freed). A request that cannot fit even on an empty device is refused before any
work starts (:meth:`ModelPool.check`): ``too_large``, with the figures.

Placement (several devices): a model pinned to a device (``device`` in the models file) runs there;
otherwise it runs where it is loaded, and a model loaded nowhere goes to the first worker that asks
for work on a device whose budget can hold it (:meth:`ModelPool.claim`, called under the scheduler's
lock, so two workers never load one model twice).

Threads: each device's worker loads, evicts and resets only on its own device; the event loop reads
the pool's state for ``/stemd/models`` and ``too_large``. One lock guards the bookkeeping; loading
itself runs outside it.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from stemd.errors import StemdError
from stemd.models.backend_plan import planned_backend, planned_dtype
from stemd.models.base import Engine
from stemd.models.budgets import UNLIMITED
from stemd.models.devices import device_type
from stemd.models.entries import ModelEntry, ModelsFileError, derive_name, unique_entries
from stemd.models.memory import Footprint, footprint, gib
from stemd.protocol import ProtocolError

# daemon/cmd_serve.py and daemon/render/ import these from here; they live in entries, budgets and devices
from stemd.models.budgets import default_budget  # noqa: F401
from stemd.models.devices import resolve_devices  # noqa: F401
from stemd.models.entries import parse_model_arg, read_models_file  # noqa: F401

log = logging.getLogger("stemd.models.pool")


def locate(source: str) -> tuple[str, Optional[Path]]:
    """``(family, folder)`` of a model on this machine, without loading it; ModelNotFound otherwise."""
    if source == "click":
        return "click", None
    from stemd.models.diffusion.loading import find_pipeline

    found = find_pipeline(source)
    if found is not None:
        folder, family = found
        return family, folder
    from stemd.models.musicgen.loading import is_melody, resolve

    return "musicgen-melody" if is_melody(source) else "musicgen", resolve(source)


@dataclass(eq=False)
class Slot:
    """One model of the pool: what is known before it loads, and its engine once it has."""

    entry: ModelEntry
    family: str
    folder: Optional[Path]
    footprint: Footprint
    license: dict = field(default_factory=dict)
    test_model: bool = False
    dtype: str = ""                     # what it runs in (before it loads: what it will)
    holds: Optional[frozenset] = None   # the checkpoint's components (a diffusers pipeline's); None: not one
    max_seconds: float = math.inf       # the longest take (its engine's, a diffusion model's from its files)
    max_variations: int = Engine.max_variations
    engine: Optional[Engine] = None
    device: Optional[str] = None        # where it is loaded (or being loaded)
    held: int = 0                       # bytes its tensors hold on the device once loaded
    last_used: float = 0.0
    loads: int = 0

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def loaded(self) -> bool:
        return self.engine is not None

    def weights(self) -> int:
        return self.held if self.loaded else self.footprint.weights

    def describe(self) -> dict:
        """What ``/stemd/models`` says of it."""
        info = self.engine.info() if self.engine is not None else {}
        card = info.get("license") or self.license
        return {"name": self.name, "family": self.family, "loaded": self.loaded,
                "device": self.device or self.entry.device or "", "dtype": info.get("dtype", self.dtype),
                "bytes": self.held if self.loaded else 0, "estimated_bytes": self.footprint.weights,
                "license": card.get("name", ""), "commercial": bool(card.get("commercial")),
                "source": self.entry.source, "test_model": self.test_model,
                "weights_sha256": info.get("weights_sha256", "")}


def locate_slot(entry: ModelEntry, device: str) -> Slot:
    """What is known of ``entry`` before it loads: found on disk (ModelNotFound otherwise), its family,
    licence card, whether it is a test model, the dtype it will run in on its device (``entry.device``,
    else ``device``), its footprint, the components it holds and its longest take. Nothing loads."""
    from stemd.licenses import card_for_model, is_test_model
    from stemd.models.diffusion.loading import pipeline_parts
    from stemd.models.registry import engine_class

    family, folder = locate(entry.source)
    backend = planned_backend(family, entry.device or device, entry.backend, entry.dtype)
    dtype = planned_dtype(family, entry.device or device, entry.dtype, backend)
    test_model = folder is not None and is_test_model(folder)
    card = card_for_model(family, folder, test_model=test_model)
    longest = engine_class(family).max_seconds_in(folder)
    return Slot(entry, family, folder, footprint(family, folder, dtype, backend), card, test_model, dtype,
                pipeline_parts(folder), math.inf if longest is None else longest)


Loader = Callable[[ModelEntry, str], Engine]


def load_entry(entry: ModelEntry, device: str) -> Engine:
    from stemd.models.registry import load_engine

    return load_engine(entry.source, device=device, dtype=entry.dtype, backend=entry.backend)


class ModelPool:
    def __init__(self, entries: list[ModelEntry], devices: list[str], budgets: dict[str, int], *,
                 loader: Loader = load_entry, slots: Optional[list[Slot]] = None):
        """``devices``: where workers run (resolved names: cpu, cuda:0 ...); ``budgets``: bytes per device.
        ``slots`` (tests): models already located; otherwise each entry is located on disk now."""
        self.devices, self.budgets, self.loader = list(devices), dict(budgets), loader
        self._lock = threading.RLock()
        self.slots: dict[str, Slot] = {}
        for slot in slots if slots is not None else [locate_slot(e, self.devices[0]) for e in unique_entries(entries)]:
            if slot.entry.device and slot.entry.device not in self.devices:
                raise ModelsFileError(f"model {slot.name!r} is pinned to {slot.entry.device}, which this daemon "
                                      f"does not run on (--device: {', '.join(self.devices)})")
            self.slots[slot.name] = slot
        if not self.slots:
            raise ModelsFileError("no model to serve")

    @classmethod
    def of(cls, engine: Engine, name: Optional[str] = None, device: str = "cpu",
           budget: Optional[int] = None) -> "ModelPool":
        """A pool of one engine already loaded (tests, and programs that embed the daemon); its budget
        is unlimited unless given."""
        info = engine.info()
        family, folder, fp = info.get("family", "click"), None, Footprint("click", 0)
        try:
            family, folder = locate(engine.name)
            fp = footprint(family, folder, info.get("dtype", "float32"), info.get("decode_backend"))
        except (StemdError, OSError, ValueError, KeyError):
            pass                       # an engine of no checkpoint stemd can read: no estimate
        slot = Slot(ModelEntry(name or derive_name(engine.name), engine.name), family, folder, fp,
                    dict(info.get("license") or {}), bool(info.get("test_model")), holds=getattr(engine, "holds", None),
                    engine=engine, device=device, held=device_bytes(engine))
        return cls([], [device], {device: UNLIMITED if budget is None else budget}, slots=[slot])

    def preload(self, name: str = "") -> Engine:
        """Load a model now (the daemon loads its first before it listens), on its device or the first."""
        slot = self.slot(name)
        device = slot.entry.device or slot.device or self.devices[0]
        if not self.claim(device, slot.name):
            raise ModelsFileError(f"model {slot.name} ({gib(slot.footprint.weights)} of weights) does not fit the "
                                  f"{gib(self.budgets[device])} memory budget on {device}")
        return self.acquire(slot.name, device, 0.0, 1)

    # --- names -------------------------------------------------------------------------------------
    @property
    def default(self) -> Slot:
        return next(iter(self.slots.values()))

    def slot(self, name: str, request_id: str = "") -> Slot:
        if not name:
            return self.default
        slot = self.slots.get(name)
        if slot is None:
            raise ProtocolError("unknown_model", f"{name}: models here are {', '.join(self.slots)}", request_id)
        return slot

    # --- admission (the event loop) ----------------------------------------------------------------
    def candidates(self, slot: Slot) -> list[str]:
        if slot.entry.device:
            return [slot.entry.device]
        with self._lock:
            return [slot.device] if slot.device else list(self.devices)

    def check(self, name: str, seconds: float, variations: int, request_id: str = "") -> Slot:
        """The model's slot, or ``too_large`` when the request cannot fit on any device it may run on,
        with nothing else loaded there: weights + working memory against the budget."""
        slot = self.slot(name, request_id)
        fp = slot.footprint
        need = slot.weights() + fp.request(seconds, variations)
        devices = self.candidates(slot)
        budget = max(self.budgets[d] for d in devices)
        if need > budget:
            fitting = max((v for v in range(1, 17) if slot.weights() + fp.request(seconds, v) <= budget), default=0)
            hint = (f"at most {fitting} variation{'s' if fitting != 1 else ''} of this length fit"
                    if fitting else "not one variation of this length fits: fewer bars, or a larger budget")
            raise ProtocolError("too_large", f"model {slot.name} needs about {gib(need)} for this request "
                                f"(weights {gib(slot.weights())} + {gib(need - slot.weights())} for {variations} "
                                f"variation{'s' if variations != 1 else ''} of {seconds:.1f} s); the memory budget "
                                f"on {' or '.join(devices)} is {gib(budget)}: {hint}", request_id)
        return slot

    # --- placement (the scheduler's lock) ----------------------------------------------------------
    def allows(self, device: str, name: str) -> bool:
        slot = self.slot(name)
        if slot.entry.device:
            return slot.entry.device == device
        with self._lock:
            if slot.device:
                return slot.device == device
        return slot.footprint.weights <= self.budgets[device]

    def claim(self, device: str, name: str) -> bool:
        """``device``'s worker may take a request for ``name``: it becomes the model's home."""
        with self._lock:
            if not self.allows(device, name):
                return False
            slot = self.slot(name)
            slot.device = slot.device or device
            return True

    # --- the worker's side -------------------------------------------------------------------------
    def held(self, device: str) -> int:
        with self._lock:
            return sum(s.weights() for s in self.slots.values() if s.loaded and s.device == device)

    def acquire(self, name: str, device: str, seconds: float, variations: int) -> Engine:
        """The model's engine on ``device``, loaded if need be, with room made for the request's working
        memory by evicting the least recently used models there (``device``'s worker only)."""
        slot = self.slot(name)
        working = slot.footprint.request(seconds, variations)
        with self._lock:
            slot.device = slot.device or device
            need = working + (0 if slot.loaded else slot.footprint.weights)
            self._make_room(device, need, slot)
            slot.last_used = time.monotonic()
            if slot.engine is not None:
                return slot.engine
        started = time.perf_counter()
        try:
            engine = self.loader(slot.entry, device)
        except BaseException:
            with self._lock:
                slot.device = None if not slot.entry.device else slot.device
            raise
        engine.info()        # its provenance (the weights' hash) now, on this thread: later reads are cheap
        held = device_bytes(engine)
        with self._lock:
            slot.engine, slot.held, slot.loads = engine, held, slot.loads + 1
            slot.last_used = time.monotonic()
        log.info("loaded model %s (%s) on %s in %.2f s: %s held (estimated %s); %s of the %s budget held there now",
                 slot.name, slot.family, device, time.perf_counter() - started, gib(held),
                 gib(slot.footprint.weights), gib(self.held(device)), gib(self.budgets[device]))
        return engine

    def _make_room(self, device: str, need: int, for_slot: Slot) -> None:
        budget = self.budgets[device]
        while self.held(device) + need > budget:
            idle = [s for s in self.slots.values()    # (a model holding 0 bytes would free nothing)
                    if s.loaded and s.device == device and s is not for_slot and s.weights() > 0]
            if not idle:
                return      # admission said it fits alone: what is left is the estimate's margin
            victim = min(idle, key=lambda s: s.last_used)
            self.evict(victim, f"model {for_slot.name} needs {gib(need)} and {gib(self.held(device))} of the "
                               f"{gib(budget)} budget is held")

    def evict(self, slot: Slot, why: str) -> None:
        with self._lock:
            engine, freed, device = slot.engine, slot.held, slot.device
            slot.engine, slot.held = None, 0
            if not slot.entry.device:
                slot.device = None
        idle = time.monotonic() - slot.last_used
        close = getattr(engine, "close", None)
        if close:
            close()
        del engine
        release_memory(device or "")
        log.info("evicted model %s from %s (least recently used, idle %.1f s): %s; %s freed", slot.name, device,
                 idle, why, gib(freed))

    def recover(self, name: str, device: str) -> None:
        """After an out-of-memory error: the engine's caches go (the next request allocates afresh)."""
        slot = self.slot(name)
        engine = slot.engine
        if engine is not None:
            engine.reset()
        release_memory(device)
        if engine is not None:
            with self._lock:
                slot.held = device_bytes(engine)

    def describe(self) -> list[dict]:
        with self._lock:
            return [s.describe() for s in self.slots.values()]


def device_bytes(engine: Any) -> int:
    measure = getattr(engine, "device_bytes", None)
    return int(measure()) if measure else 0


def release_memory(device: str) -> None:
    gc.collect()
    if device_type(device) == "cuda":
        import torch

        torch.cuda.empty_cache()

