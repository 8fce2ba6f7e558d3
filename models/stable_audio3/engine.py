"""The Stable Audio 3 engine: diffusers' StableAudio3 pipelines, 44.1 kHz stereo, held warm.

One loaded folder serves three calls, sharing its components:
- text to audio (``StableAudio3Pipeline``): the prompt with the grid's tempo and meter;
- continuation (``StableAudio3InpaintPipeline``): the DAW's selection (its last ``KEEP_SECONDS``, whole
  latent frames) is kept and the canvas after it is inpainted; the selection is trimmed from the output;
- a variation of a take (``StableAudio3AudioToAudioPipeline``): the request's audio noised to
  ``strength`` (0: keep it, 1: ignore it) and denoised again.

The distilled checkpoints run 8 ping-pong steps with guidance 1 (off); ``steps`` and ``guidance`` are
passed through for the base checkpoints. Stable Audio 3 has no tempo input: the tempo is in the prompt
("97 BPM", as its training captions write it) and the conform room makes it exact.
"""

from __future__ import annotations

import math

from stemd.models.base import GenerationSpec
from stemd.models.diffusion.engine import DiffusionEngine

KEEP_SECONDS = 10.0       # the most of a continuation the inpaint call keeps


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
    accepts = frozenset({"steps", "guidance", "strength"})

    def __init__(self, pipe, *args, **kwargs):
        super().__init__(pipe, *args, **kwargs)
        self.latent_seconds = pipe.vae.downsampling_ratio / self.sample_rate
        # the duration conditioner's range is the model's longest take (120 s small, 384 s medium)
        longest = float(pipe.duration_embedder.config.max_val)
        self.max_seconds = max(1.0, (longest - 8.0) / 1.1)
        self._calls: dict = {}

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
        import torch

        canvas = self.canvas_seconds(spec)
        strength = spec.extra.get("strength")
        if strength is not None:
            if spec.continuation is None:
                from stemd.protocol import ProtocolError

                raise ProtocolError("bad_arguments", "strength makes a variation of given audio: send it as "
                                    "continuation or continuation_path")
            audio = self.source_audio(spec.continuation, canvas)[None]
            return self.call("a2a")(duration=canvas, audio=audio, init_noise_level=float(strength),
                                    **self.kwargs(spec, callback)).audios
        if spec.continuation is None:
            return self.call("text")(duration=canvas, **self.kwargs(spec, callback)).audios
        source = self.source_audio(spec.continuation)
        ratio = self.pipe.vae.downsampling_ratio
        keep = min(source.shape[-1] // ratio, math.floor(KEEP_SECONDS / self.latent_seconds)) * ratio
        if keep == 0:
            return self.call("text")(duration=canvas, **self.kwargs(spec, callback)).audios
        kept = keep / self.sample_rate
        total = kept + canvas
        audio = source[:, source.shape[-1] - keep:]
        audio = torch.nn.functional.pad(audio, (0, int(round(canvas * self.sample_rate))))[None]
        out = self.call("inpaint")(duration=total, audio=audio, mask_start_seconds=kept, mask_end_seconds=total,
                                   **self.kwargs(spec, callback)).audios
        return out[:, :, keep:]
