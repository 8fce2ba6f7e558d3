"""What the diffusion engines share: a diffusers pipeline held warm, one call per take.

A diffusion model makes the whole take at once. The engine asks its pipeline for a canvas a little
longer than the take (models/diffusion/canvas.py: the take x 1.1 plus one bar, in whole latent frames;
a continuation keeps the selection's tail before it), in one batch for all variations, with one seeded
generator per variation: variation ``v`` of seed ``s`` is the pipeline's call with seed ``s + v``, so a
take is reproducible on its own. ``should_stop`` is checked and ``on_progress`` reported between
denoising steps (the pipelines' ``callback_on_step_end``). The canvas goes to the pipeline as one block;
the conform room finds its tempo and first downbeat, stretches it to the DAW's tempo, resamples it to
the DAW's rate and the chunker cuts exact bars, as for every engine.

The raw audio (before conform) is exactly what the diffusers pipeline returns for the same arguments:
tests/test_diffusion_engines.py holds both to 1e-5.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

from stemd.licenses import card_for_readme, describe
from stemd.models.diffusion.canvas import LatentFrames
from stemd.models.quiet import quiet_loading
from stemd.models.base import (Audio, AudioStream, Cancelled, Engine, EngineError, GenerationSpec, never_stop,
                               no_progress)
from stemd.protocol import random_seed

log = logging.getLogger("stemd.models.diffusion")


def pick_dtype(dtype: Optional[str], device):
    """bfloat16 on CUDA (where supported) and float16 on other GPUs; float32 on a CPU, where diffusers'
    audio autoencoders and the pipelines' noise are only tested in float32."""
    import torch

    from stemd.models.devices import gpu_dtype, named_dtype

    if dtype and dtype != "auto":
        return named_dtype(dtype)
    return gpu_dtype(device) or torch.float32


class DiffusionEngine(Engine):
    """One diffusers pipeline, held warm. Subclasses say which pipeline calls make a take."""

    family = ""

    def __init__(self, pipe, folder: Path, name: str, device, dtype, *, test_model: bool = False):
        self.pipe, self.folder, self.name = pipe, Path(folder), name
        self.device, self.dtype, self.test_model = device, dtype, test_model
        self.pipe.set_progress_bar_config(disable=True)
        self.latents = self.latent_frames(pipe)
        self.license = card_for_readme(self.folder / "README.md", self.family, test_model=test_model)
        self._weights_sha256: Optional[str] = None

    @classmethod
    def load(cls, model: str, folder: Path, *, device: Optional[str] = None,
             dtype: Optional[str] = None) -> "DiffusionEngine":
        import json

        import torch
        from diffusers import DiffusionPipeline

        from stemd.models.devices import pick_device

        dev = pick_device(device)
        dt = pick_dtype(dtype, dev)
        index = json.loads((folder / "model_index.json").read_text())
        try:
            with quiet_loading():
                pipe = DiffusionPipeline.from_pretrained(str(folder), dtype=dt, local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise EngineError(f"model {model!r}: diffusers could not load {folder}: {e}") from None
        pipe.to(dev)
        with torch.no_grad():
            engine = cls(pipe, folder, model, dev, dt, test_model=bool(index.get("stemd_test_model")))
        log.info("%s: %s on %s in %s; licence %s", model, type(pipe).__name__, dev, str(dt).replace("torch.", ""),
                 describe(engine.license))
        return engine

    # -- what every take needs ---------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return int(self.pipe.vae.config.sampling_rate)

    @property
    def weights_sha256(self) -> str:
        if self._weights_sha256 is None:
            from stemd.models.weights import weights_sha256

            self._weights_sha256 = weights_sha256(self.folder)
        return self._weights_sha256

    @property
    def holds(self) -> frozenset:
        """The pipeline's components this checkpoint has (an optional one may be left out): what stemd/families.py's
        NEEDS are checked against."""
        return frozenset(name for name, part in self.pipe.components.items() if part is not None)

    def latent_frames(self, pipe) -> LatentFrames:
        """The model's latent frames and its longest canvas."""
        raise NotImplementedError

    @classmethod
    def longest_canvas_in(cls, folder: Path) -> Optional[float]:
        """The longest canvas (seconds) of the checkpoint in ``folder``, read from its files without loading it (None:
        not known until it loads)."""
        raise NotImplementedError

    @classmethod
    def max_seconds_in(cls, folder) -> Optional[float]:
        """``max_seconds`` from the checkpoint's files: the longest take its longest canvas holds."""
        from stemd.models.diffusion.canvas import longest_take

        canvas = cls.longest_canvas_in(folder)
        return None if canvas is None else longest_take(canvas)

    @property
    def max_seconds(self) -> float:
        return self.latents.longest_take

    def canvas_seconds(self, spec: GenerationSpec) -> float:
        """The length the pipeline makes for ``spec`` (models/diffusion/canvas.py)."""
        return self.latents.canvas_seconds(float(spec.seconds), float(spec.grid.bar_seconds(spec.start_bar)))

    def continuation(self, spec: GenerationSpec, canvas: float):
        """The selection's tail before a canvas of ``canvas`` seconds (None: not one latent frame of it)."""
        return self.latents.continuation(self.source_audio(spec.continuation), canvas)

    def seeds(self, spec: GenerationSpec) -> list[int]:
        """Variation ``v`` is seed ``spec.seed + v`` (a random seed when the request named none)."""
        seed = spec.seed if spec.seed is not None else random_seed()
        return [(seed + v) % 2 ** 63 for v in range(spec.variations)]

    def generators(self, spec: GenerationSpec) -> list:
        import torch

        where = "cpu" if self.device.type == "mps" else self.device
        return [torch.Generator(where).manual_seed(s) for s in self.seeds(spec)]

    def step_callback(self, steps: int, should_stop: Callable[[], bool],
                      on_progress: Callable[[float], None]):
        """``callback_on_step_end``: cancel between denoising steps, report progress after each."""

        def callback(_pipe, step: int, _timestep, kwargs: dict) -> dict:
            if should_stop():
                raise Cancelled()
            on_progress(min(1.0, (step + 1) / max(1, steps)))
            return {}

        return callback

    def source_audio(self, audio: Audio, seconds: Optional[float] = None):
        """The DAW's audio as the pipeline wants it: float32 stereo ``(2, n)`` at the model's rate, cut or
        padded with silence to ``seconds`` when given."""
        import torch

        samples = np.asarray(audio.samples, dtype=np.float32)
        samples = samples[None] if samples.ndim == 1 else samples
        if audio.sample_rate != self.sample_rate:
            from stemd.models.conform import resample

            samples = resample(samples, audio.sample_rate, self.sample_rate)
        if samples.shape[0] == 1:
            samples = np.repeat(samples, 2, axis=0)
        samples = samples[:2]
        if seconds is not None:
            n = int(round(seconds * self.sample_rate))
            samples = samples[:, :n] if samples.shape[1] >= n else np.pad(samples, ((0, 0), (0, n - samples.shape[1])))
        return torch.from_numpy(np.ascontiguousarray(samples)).to(self.device, self.pipe.vae.dtype)

    def guide_audio(self, spec: GenerationSpec, seconds: float):
        """The spec's guide (``chords`` or a ``guide`` SMF) rendered on the take's grid at the model's rate
        (models/guide_audio.py), ``seconds`` long, as the pipeline takes audio: a ``(2, n)`` tensor; None without
        a guide. A guide is its own source audio: with ``continuation`` too it is refused (stemd/families.py)."""
        import torch

        from stemd.models.guide_audio import spec_guide_audio

        audio = spec_guide_audio(spec, self.sample_rate, seconds)
        if audio is None:
            return None
        return torch.from_numpy(audio).to(self.device, self.pipe.vae.dtype)

    # -- one request -------------------------------------------------------------------------------

    def stream(self, spec: GenerationSpec, *, should_stop=never_stop, on_progress=no_progress) -> AudioStream:
        from stemd.families import check_spec

        check_spec(spec, self.family, self.name, self.holds)   # the keys this family and checkpoint take: stemd/families.py
        return AudioStream(sample_rate=self.sample_rate, channels=2, blocks=self._blocks(spec, should_stop, on_progress),
                           on_grid=False, tempo_hint=float(spec.grid.tempo.bpm))

    def _blocks(self, spec: GenerationSpec, should_stop, on_progress) -> Iterator[np.ndarray]:
        if should_stop():
            raise Cancelled()
        yield self.raw(spec, should_stop=should_stop, on_progress=on_progress)

    def raw(self, spec: GenerationSpec, *, should_stop=never_stop, on_progress=no_progress) -> np.ndarray:
        """The pipeline's audio for ``spec`` before conform: float32 ``(variations, 2, n)`` at the model's rate;
        keys it cannot take together, or a task this checkpoint lacks a part for, refused first."""
        import torch

        from stemd.families import check_spec

        check_spec(spec, self.family, self.name, self.holds)     # (called alone too, not only through stream)
        with torch.no_grad():
            audio = self.make(spec, self.step_callback(self.steps(spec), should_stop, on_progress))
        if not torch.isfinite(audio).all():
            raise EngineError(f"{self.name} made audio with NaN or infinity (dtype {self.dtype}); try --dtype float32")
        return audio.float().cpu().numpy()

    def modules(self) -> list:
        import torch

        return [c for c in self.pipe.components.values() if isinstance(c, torch.nn.Module)]

    def steps(self, spec: GenerationSpec) -> int:
        return int(spec.extra.get("steps") or 8)

    def make(self, spec: GenerationSpec, callback):
        """The pipeline call(s) for ``spec``: a float tensor ``(variations, 2, n)`` at the model's rate."""
        raise NotImplementedError

    def info(self) -> dict:
        out = {"model": self.name, "family": self.family, "pipeline": type(self.pipe).__name__,
               "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
               "sample_rate": self.sample_rate, "channels": 2, "test_model": self.test_model,
               "license": dict(self.license), "weights_sha256": self.weights_sha256}
        if self.test_model:
            out["note"] = "test model with random weights: it makes noise, not music"
        return out
