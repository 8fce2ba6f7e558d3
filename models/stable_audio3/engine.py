"""The Stable Audio 3 engine: diffusers' StableAudio3 pipelines, 44.1 kHz stereo, held warm.

One loaded folder serves three calls, sharing its components:
- text to audio (``StableAudio3Pipeline``): the prompt with the grid's tempo and meter;
- continuation (``StableAudio3InpaintPipeline``): the DAW's selection's tail (models/diffusion/canvas.py:
  at most 10 s, whole latent frames) is kept and the canvas after it is inpainted; the tail is trimmed
  from the output;
- a variation of a take (``StableAudio3AudioToAudioPipeline``): the request's audio noised to
  ``strength`` (0: keep it, 1: ignore it) and denoised again.

With a guide (``chords`` or a ``guide`` SMF, rendered on the take's grid by models/guide_audio.py) the take is
audio-to-audio from the guide's audio: noised to ``strength`` (0.7 when not given) and denoised with the prompt.

The distilled checkpoints run 8 ping-pong steps with guidance 1 (off); ``steps`` and ``guidance`` are
passed through for the base checkpoints. Stable Audio 3 has no tempo input: the tempo is in the prompt
("97 BPM", as its training captions write it) and the conform room makes it exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from stemd.models.base import GenerationSpec
from stemd.models.diffusion.canvas import LatentFrames
from stemd.models.diffusion.engine import DiffusionEngine


def describe(spec: GenerationSpec) -> str:
    """The prompt with the grid: 'dusty drums, 97 BPM, 3/4 time, F# minor'."""
    parts = [spec.prompt.strip()] if spec.prompt.strip() else []
    parts.append(f"{float(spec.grid.tempo.bpm):g} BPM")
    parts.append(f"{spec.grid.meter} time")
    if spec.extra.get("key"):
        parts.append(str(spec.extra["key"]))
    return ", ".join(parts)


class StableAudio3Engine(DiffusionEngine):
    family = "stable-audio-3"
    #: how far a guide is noised when the request gives no strength
    GUIDE_STRENGTH = 0.7

    def __init__(self, pipe, *args, **kwargs):
        super().__init__(pipe, *args, **kwargs)
        self._calls: dict = {}

    def latent_frames(self, pipe) -> LatentFrames:
        # the duration conditioner's range is the model's longest canvas (120 s small, 384 s medium)
        return LatentFrames(int(pipe.vae.downsampling_ratio), self.sample_rate,
                            float(pipe.duration_embedder.config.max_val))

    @classmethod
    def longest_canvas_in(cls, folder) -> Optional[float]:
        """The duration conditioner's ``max_val`` from its config.json (what ``latent_frames`` reads once loaded)."""
        import json

        try:
            return float(json.loads((Path(folder) / "duration_embedder" / "config.json").read_text())["max_val"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def call(self, kind: str):
        """The pipeline for ``kind`` (text, inpaint, a2a) over this engine's components."""
        if kind not in self._calls:
            import diffusers

            cls = {"text": diffusers.StableAudio3Pipeline, "inpaint": diffusers.StableAudio3InpaintPipeline,
                   "a2a": diffusers.StableAudio3AudioToAudioPipeline}[kind]
            pipe = self.pipe if type(self.pipe) is cls else cls(**self.pipe.components)
            pipe.set_progress_bar_config(disable=True)
            self._calls[kind] = pipe
        return self._calls[kind]

    def kwargs(self, spec: GenerationSpec, callback) -> dict:
        """The arguments every call of a take shares."""
        out = dict(prompt=describe(spec), num_waveforms_per_prompt=spec.variations, generator=self.generators(spec),
                   callback_on_step_end=callback, num_inference_steps=self.steps(spec))
        if spec.sampling.guidance is not None:
            out["guidance_scale"] = spec.sampling.guidance
        return out

    def make(self, spec: GenerationSpec, callback):
        canvas = self.canvas_seconds(spec)
        strength = spec.extra.get("strength")
        guide = self.guide_audio(spec, canvas)
        if guide is not None:
            level = self.GUIDE_STRENGTH if strength is None else float(strength)
            return self.call("a2a")(duration=canvas, audio=guide[None], init_noise_level=level,
                                    **self.kwargs(spec, callback)).audios
        if strength is not None:     # over given audio (stemd/families.py refused it without)
            audio = self.source_audio(spec.continuation, canvas)[None]
            return self.call("a2a")(duration=canvas, audio=audio, init_noise_level=float(strength),
                                    **self.kwargs(spec, callback)).audios
        tail = self.continuation(spec, canvas) if spec.continuation is not None else None
        if tail is None:
            return self.call("text")(duration=canvas, **self.kwargs(spec, callback)).audios
        out = self.call("inpaint")(duration=tail.seconds, audio=tail.audio[None], mask_start_seconds=tail.mask_start,
                                   mask_end_seconds=tail.mask_end, **self.kwargs(spec, callback)).audios
        return tail.trim(out)
