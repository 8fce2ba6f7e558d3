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
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from stemd.errors import StemdError
from stemd.models.base import Engine, EngineError
from stemd.models.memory import Footprint, footprint, gib
from stemd.protocol import MODEL_NAME, ProtocolError

log = logging.getLogger("stemd.models.pool")

#: kept free on a device when no --memory-budget is given: max(1 GiB, this share of what is free)
MARGIN_SHARE = {"cuda": 0.10, "mps": 0.25, "cpu": 0.20}
MIN_MARGIN = 2 ** 30
UNLIMITED = 2 ** 62


class ModelsFileError(EngineError):
    code = "bad_arguments"


@dataclass(frozen=True)
class ModelEntry:
    """One model a daemon serves: ``name`` (what requests say), ``source`` (``click``, a folder, a hub
    id), and optionally the device it must run on, its dtype and MusicGen's decoding backend."""

    name: str
    source: str
    device: Optional[str] = None
    dtype: Optional[str] = None
    backend: Optional[str] = None


def derive_name(source: str) -> str:
    """A model's name when none is given: ``click``; a folder's name; a hub id's repo part
    (facebook/musicgen-small -> musicgen-small), made fit for the protocol."""
    if source == "click":
        return "click"
    path = Path(source).expanduser()
    base = path.resolve().name if path.exists() else source.rstrip("/").rsplit("/", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9_.\-]+", "-", base).strip("-._")[:64] or "model"
    return name if name[0].isalnum() else "m" + name[:63]


def parse_model_arg(text: str) -> ModelEntry:
    """``--model SOURCE`` or ``--model NAME=SOURCE``."""
    name, sep, source = text.partition("=")
    if not sep or "/" in name or not name or Path(text).expanduser().exists():
        return ModelEntry(derive_name(text), text)
    return ModelEntry(check_name(name), source)


def check_name(name: str) -> str:
    if not MODEL_NAME.fullmatch(name):
        raise ModelsFileError(f"model name {name!r}: 1-64 letters, digits, _ . - starting with a letter or digit")
    return name


def read_models_file(path: Path) -> list[ModelEntry]:
    """``--models FILE``: a TOML table of models, in the order they are served (the first is the default)::

        [models]
        drums = "/models/musicgen-drums"                        # NAME = SOURCE
        loops = { source = "stabilityai/stable-audio-3-small-music", device = "cuda:1", dtype = "bfloat16" }
        click = "click"
    """
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    try:
        data = tomllib.loads(Path(path).expanduser().read_text())
    except OSError as e:
        raise ModelsFileError(f"cannot read models file {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ModelsFileError(f"{path}: {e}") from None
    table = data.get("models")
    if not isinstance(table, dict) or not table:
        raise ModelsFileError(f"{path}: needs a [models] table of NAME = \"SOURCE\" (or NAME = {{ source = ... }})")
    out = []
    for name, value in table.items():
        check_name(name)
        if isinstance(value, str):
            value = {"source": value}
        if not isinstance(value, dict) or not isinstance(value.get("source"), str):
            raise ModelsFileError(f"{path}: model {name!r} needs a source (a folder, a hub id or click)")
        unknown = sorted(set(value) - {"source", "device", "dtype", "backend"})
        if unknown:
            raise ModelsFileError(f"{path}: model {name!r} has unknown keys {', '.join(unknown)} "
                                  "(it takes source, device, dtype, backend)")
        out.append(ModelEntry(name, value["source"], value.get("device"), value.get("dtype"), value.get("backend")))
    return out


def unique_entries(entries: list[ModelEntry]) -> list[ModelEntry]:
    seen: dict[str, ModelEntry] = {}
    for entry in entries:
        if entry.name in seen:
            raise ModelsFileError(f"two models are named {entry.name!r} ({seen[entry.name].source} and "
                                  f"{entry.source}): name one of them, --model NAME=SOURCE")
        seen[entry.name] = entry
    return list(seen.values())


def locate(source: str) -> tuple[str, Optional[Path]]:
    """``(family, folder)`` of a model on this machine, without loading it; ModelNotFound otherwise."""
    if source == "click":
        return "click", None
    from stemd.models.diffusion.loading import find_pipeline

    found = find_pipeline(source)
    if found is not None:
        folder, family = found
        return family, folder
    from stemd.models.musicgen.loading import resolve

    return "musicgen", resolve(source)


def resolve_devices(requested: list[str], sources: list[str]) -> list[str]:
    """The devices workers run on, by their canonical names (``cuda`` -> ``cuda``, ``cuda:1``); none
    asked: the best one here (the CPU, without importing torch, when every model is ``click``)."""
    if not requested and all(s == "click" for s in sources):
        return ["cpu"]
    import torch

    from stemd.models.devices import pick_device

    out = []
    for name in requested or [None]:
        try:
            device = str(pick_device(name))
        except RuntimeError as e:
            raise ModelsFileError(f"--device {name}: {e}") from None
        if device in out:
            raise ModelsFileError(f"--device {device} is given twice (several CPU workers: cpu:0, cpu:1)")
        if device_type(device) == "cuda":
            index = torch.device(device).index or 0
            if not torch.cuda.is_available() or index >= torch.cuda.device_count():
                raise ModelsFileError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA devices")
        out.append(device)
    return out


def planned_backend(family: str, device: str, asked: Optional[str], dtype: Optional[str] = None) -> Optional[str]:
    """MusicGen's decoding backend on ``device`` as the pool plans for it (None for other families):
    the one asked for, else $STEMD_DECODE_BACKEND, else auto, which on a CPU is planned as ``onnx-int8``
    (what it picks on CPUs with int8 dot products; the loaded engine's own bytes replace the estimate)."""
    if family != "musicgen":
        return None
    import torch

    from stemd.models.musicgen.decoding import auto_without_timing
    from stemd.models.registry import chosen_backend

    backend = chosen_backend(asked)[0]
    if backend == "auto":
        fixed = auto_without_timing(torch.device(device), dtype)
        return fixed[0] if fixed is not None else "onnx-int8"
    return backend


def planned_dtype(family: str, device: str, asked: Optional[str], backend: Optional[str] = None) -> str:
    """The dtype a model of ``family`` will run in on ``device`` (as its engine picks it), by name;
    ``backend``: MusicGen's planned backend (``planned_backend``): its CPU paths load float32."""
    if family == "click":
        return "float32"
    import torch

    if family == "musicgen":
        from stemd.models.musicgen.decoding import CPU_BACKENDS, pick_dtype

        if backend in CPU_BACKENDS and asked in (None, "auto"):
            return "float32"
    else:
        from stemd.models.diffusion.engine import pick_dtype
    return str(pick_dtype(asked, torch.device(device))).replace("torch.", "")


def device_type(device: str) -> str:
    return device.split(":", 1)[0]


def free_bytes(device: str) -> int:
    """What ``device`` has free now (a CPU: the memory the kernel says is available)."""
    kind = device_type(device)
    if kind == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    if kind == "mps":
        import torch

        return int(torch.mps.recommended_max_memory() - torch.mps.current_allocated_memory())
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def default_budget(device: str, sharing: int = 1) -> int:
    """What is free on ``device`` less a margin (max(1 GiB, 10% on CUDA, 20% on a CPU)), shared by
    ``sharing`` workers on the same memory (several CPU devices)."""
    free = free_bytes(device) // max(1, sharing)
    return max(0, free - max(MIN_MARGIN // max(1, sharing), int(free * MARGIN_SHARE.get(device_type(device), 0.2))))


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
    else ``device``) and its footprint. Nothing loads."""
    family, folder = locate(entry.source)
    backend = planned_backend(family, entry.device or device, entry.backend, entry.dtype)
    dtype = planned_dtype(family, entry.device or device, entry.dtype, backend)
    test_model = False
    if family != "click":
        from stemd.licenses import card_for_readme

        test_model = is_test_model(folder)
        card = card_for_readme(folder / "README.md", family, test_model=test_model)
    else:
        from stemd.licenses import card as family_card

        card = family_card("click")
    return Slot(entry, family, folder, footprint(family, folder, dtype, backend), card, test_model, dtype)


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
                    dict(info.get("license") or {}), bool(info.get("test_model")), engine=engine, device=device,
                    held=device_bytes(engine))
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
            idle = [s for s in self.slots.values() if s.loaded and s.device == device and s is not for_slot]
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


def is_test_model(folder: Path) -> bool:
    import json

    for name in ("model_index.json", "config.json"):
        try:
            if json.loads((folder / name).read_text()).get("stemd_test_model"):
                return True
        except (OSError, ValueError, AttributeError):
            continue
    return False
