"""Stems: each take separated with Demucs (htdemucs), every stem exactly as long as the take.

``--stems-model`` names the separator:

- a Demucs checkpoint file (``955717e8-8726e21a.th``: a dict of ``klass``, ``args``, ``kwargs``,
  ``state``), as Demucs writes and downloads them;
- a folder of them with a bag file (``htdemucs.yaml``: ``models: [955717e8]``), like Demucs's
  ``--repo`` folders;
- a bag name (``htdemucs``, ``htdemucs_ft``) already downloaded into torch's hub cache by Demucs
  (``python -c "from demucs.pretrained import get_model; get_model('htdemucs')"`` on a machine
  with network). stemd never downloads.

A take goes to the model's rate and channel count (soxr), through ``demucs.apply.apply_model``
(split into overlapping segments, normalised like ``demucs.separate``), and each stem comes back at
the take's rate and channel count, trimmed or padded to the take's exact frame count, so it sits on
the same bars as the mix. The tests build a small random-weight HTDemucs in the same checkpoint format
(tests/test_render_stems.py; it separates nothing musical).
"""

from __future__ import annotations

import hashlib
import inspect
import re
import sys
from fractions import Fraction
from pathlib import Path
from typing import Optional

import numpy as np

from stemd.models.base import EngineError, ModelNotFound

SOURCES = ["drums", "bass", "other", "vocals"]


def _classes():
    from demucs.demucs import Demucs
    from demucs.hdemucs import HDemucs
    from demucs.htdemucs import HTDemucs

    return {c.__name__: c for c in (HTDemucs, HDemucs, Demucs)}


def _read_package(path: Path) -> dict:
    """The checkpoint dict; unpickled with torch's weights-only loader, the Demucs classes allowed."""
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals([*_classes().values(), Fraction]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # official checkpoints may carry training arguments of other types: load them as Demucs does
        print(f"stemd render: {path.name} needs a full unpickle ({str(e).splitlines()[0][:80]}); "
              "loading it as Demucs does: use only checkpoints you trust", file=sys.stderr)
        return torch.load(path, map_location="cpu", weights_only=False)


def load_checkpoint(path: Path):
    """One Demucs model from a ``.th`` checkpoint, checking the checksum in its name when there is one."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFound(f"no Demucs checkpoint {path}")
    expected = path.stem.rsplit("-", 1)[-1]
    if "-" in path.stem and re.fullmatch(r"[0-9a-f]{8}", expected):  # Demucs names files <sig>-<sha256[:8]>.th
        actual = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
        if actual != expected:
            raise EngineError(f"{path.name} is corrupt: its sha256 starts {actual}, its name says {expected}")
    try:
        package = _read_package(path)
    except Exception as e:  # torch raises several types for a file that is not a checkpoint
        raise EngineError(f"cannot read Demucs checkpoint {path}: {str(e).splitlines()[0][:200]}") from None
    if not isinstance(package, dict) or not {"klass", "args", "kwargs", "state"} <= set(package):
        raise EngineError(f"{path} is not a Demucs checkpoint (no klass/args/kwargs/state)")
    klass = package["klass"]
    if getattr(klass, "__name__", None) not in _classes():
        raise EngineError(f"{path} holds a {klass!r}, not a Demucs model")
    if package["state"].get("__quantized"):
        raise EngineError(f"{path} is a quantized (diffq) checkpoint; stemd loads the full-precision ones")
    known = inspect.signature(klass).parameters
    model = klass(*package["args"], **{k: v for k, v in package["kwargs"].items() if k in known})
    model.load_state_dict({k: v.float() for k, v in package["state"].items()})
    return model.eval()


def _bag(yaml_file: Path, folders: list[Path]):
    import yaml
    from demucs.apply import BagOfModels

    bag = yaml.safe_load(yaml_file.read_text())
    models = []
    for sig in bag["models"]:
        found = [f for d in folders if d.is_dir() for f in sorted(d.glob(f"{sig}*.th"))]
        if not found:
            raise ModelNotFound(f"{yaml_file.stem} needs model {sig}, not found in {', '.join(map(str, folders))}")
        models.append(load_checkpoint(found[0]))
    return BagOfModels(models, bag.get("weights"), bag.get("segment"))


def load_demucs(spec: str):
    """A Demucs model or bag from a checkpoint file, a folder, or a bag name in the hub cache."""
    path = Path(spec).expanduser()
    if path.is_file():
        return load_checkpoint(path)
    if path.is_dir():
        bags = sorted(path.glob("*.yaml"))
        if bags:
            return _bag(bags[0], [path])
        files = sorted(path.glob("*.th"))
        if len(files) == 1:
            return load_checkpoint(files[0])
        raise ModelNotFound(f"{path} has no bag file (*.yaml) and not exactly one checkpoint (*.th)")
    import demucs
    import torch

    remote = Path(demucs.__file__).parent / "remote" / f"{spec}.yaml"
    if not remote.is_file():
        raise ModelNotFound(f"no Demucs model {spec!r}: give a .th checkpoint, a folder, or a bag name "
                            "such as htdemucs")
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    try:
        return _bag(remote, [cache])
    except ModelNotFound:
        raise ModelNotFound(f"Demucs {spec!r} is not downloaded into {cache}; on a machine with network run "
                            f"python -c \"from demucs.pretrained import get_model; get_model('{spec}')\"") from None


class DemucsSeparator:
    """``separate(audio, rate)`` -> ``{stem: audio}``, each stem shaped exactly like ``audio``."""

    def __init__(self, model, device: Optional[str] = None):
        import torch

        self.model = model
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.sources = list(model.sources)

    def separate(self, audio: np.ndarray, sample_rate: int) -> dict:
        import soxr
        import torch
        from demucs.apply import apply_model

        channels, frames = audio.shape
        rate, want = self.model.samplerate, self.model.audio_channels
        x = audio if channels == want else np.repeat(audio.mean(axis=0, keepdims=True), want, axis=0)
        if sample_rate != rate:
            x = soxr.resample(x.T, sample_rate, rate, quality="HQ").T
        mix = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        ref = mix.mean(0)
        centre, scale = ref.mean(), ref.std().clamp_min(1e-8)
        with torch.no_grad():
            out = apply_model(self.model, ((mix - centre) / scale)[None], device=self.device, shifts=0,
                              split=True, overlap=0.25, progress=False)[0]
        out = (out * scale + centre).cpu().numpy()  # (sources, want, n at model rate)
        stems = {}
        for name, stem in zip(self.sources, out):
            if sample_rate != rate:
                stem = soxr.resample(stem.T, rate, sample_rate, quality="HQ").T
            if stem.shape[0] != channels:
                stem = stem.mean(axis=0, keepdims=True) if channels == 1 else np.repeat(stem, channels, axis=0)
            exact = np.zeros((channels, frames), np.float32)
            n = min(frames, stem.shape[1])
            exact[:, :n] = stem[:, :n]
            stems[name] = exact
        return stems


def load_separator(spec: str, device: Optional[str] = None) -> DemucsSeparator:
    try:
        import demucs.apply  # noqa: F401
    except ImportError as e:
        raise EngineError(f"--stems needs Demucs (pip install 'stemd[daemon]'): {e}") from None
    return DemucsSeparator(load_demucs(spec), device)
