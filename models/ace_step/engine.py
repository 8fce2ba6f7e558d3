"""The ACE-Step 1.5 engine: diffusers' AceStepPipeline, 48 kHz stereo, held warm.

ACE-Step is told the grid: ``bpm`` (whole BPM), ``timesignature`` (the meter's beats per bar: "3" for
3/4, as its metadata writes it) and ``keyscale`` (the request's ``key``, "F# minor"). It is instrumental
here (no lyrics). Its tasks map onto request keys, each over the request's audio (``continuation`` or
``continuation_path``):
- continuation alone: the selection's tail (models/diffusion/canvas.py: at most 10 s, whole latent frames)
  is kept and the canvas after it is repainted (the tail is trimmed from the output);
- ``repaint "A-B"``: bars A to B of the given take (counted from 1) are made again, the rest kept;
- ``track NAME``: "lego", a NAME part (drums, bass, ...) made to play over the given audio;
- ``extract NAME``: the NAME stem of the given audio.

With a guide (``chords`` or a ``guide`` SMF, rendered on the take's grid by models/guide_audio.py) the guide's
audio is the source: alone, a ``cover`` of it (``guide_strength``: ACE-Step's ``audio_cover_strength``, 1 by
default); with ``track NAME``, the lego task over it, a NAME part that fits the guide (the guide's own audio is
not in the take).

The turbo checkpoints have guidance distilled in (8 steps, guidance off); ``guidance`` applies to base
checkpoints, as ACE-Step's adaptive projected guidance.
"""

from __future__ import annotations

from typing import Optional

from stemd.models.base import GenerationSpec
from stemd.models.diffusion.canvas import LatentFrames
from stemd.models.diffusion.engine import DiffusionEngine
from stemd.protocol import repaint_range

LONGEST_CANVAS = 600.0    # ACE-Step 1.5 makes up to ten minutes


class AceStepEngine(DiffusionEngine):
    family = "ace-step"

    def latent_frames(self, pipe) -> LatentFrames:
        return LatentFrames(round(self.sample_rate / pipe.latents_per_second), self.sample_rate, LONGEST_CANVAS)

    @classmethod
    def longest_canvas_in(cls, folder) -> float:
        return LONGEST_CANVAS

    def kwargs(self, spec: GenerationSpec, callback) -> dict:
        """The arguments of one call: the caption once per variation, the grid as ACE-Step's metadata."""
        variations = spec.variations
        guidance = spec.sampling.with_guidance(1.0 if self.pipe.is_turbo else 7.0).guidance
        key = spec.extra.get("key") or None
        return dict(prompt=[spec.prompt.strip()] * variations, lyrics=[""] * variations,
                    bpm=int(round(float(spec.grid.tempo.bpm))), timesignature=str(spec.grid.meter.numerator),
                    keyscale=key, generator=self.generators(spec), num_inference_steps=self.steps(spec),
                    guidance_scale=guidance, callback_on_step_end=callback)

    def task(self, spec: GenerationSpec) -> tuple[str, Optional[str]]:
        """(ACE-Step task type, track name) for the request's keys (one task at most, over given audio:
        stemd/families.py's refuse_clashes checked them before)."""
        track, extract, repaint = spec.extra.get("track"), spec.extra.get("extract"), spec.extra.get("repaint")
        if track:
            return "lego", track
        if extract:
            return "extract", extract
        if repaint:
            return "repaint", None
        return ("repaint", None) if spec.continuation is not None else ("text2music", None)

    def make(self, spec: GenerationSpec, callback):
        import torch

        canvas = self.canvas_seconds(spec)
        guide = self.guide_audio(spec, canvas)
        if guide is not None:
            return self.follow(spec, guide, canvas, callback)
        task, track = self.task(spec)
        args = self.kwargs(spec, callback)
        if task == "text2music":
            return self.pipe(audio_duration=canvas, **args).audios
        # the autoencoder samples its latent: seed it too, so a take with given audio is reproducible
        torch.manual_seed(args["generator"][0].initial_seed())   # the seed drawn once for this take
        if task in ("lego", "extract"):
            return self.pipe(task_type=task, track_name=track, src_audio=self.source_audio(spec.continuation, canvas),
                             audio_duration=canvas, **args).audios
        if spec.extra.get("repaint"):
            first, last = repaint_range(spec.extra["repaint"])   # bars of the take: the request checked them
            origin = spec.grid.bar_start_seconds(spec.start_bar)
            start = float(spec.grid.bar_start_seconds(spec.start_bar + first - 1) - origin)
            end = float(spec.grid.bar_start_seconds(spec.start_bar + last) - origin)
            return self.pipe(task_type="repaint", src_audio=self.source_audio(spec.continuation, canvas),
                             repainting_start=start, repainting_end=end, audio_duration=canvas, **args).audios
        # continuation: keep the selection's tail, repaint the canvas after it, trim the tail off
        tail = self.continuation(spec, canvas)
        if tail is None:
            return self.pipe(audio_duration=canvas, **args).audios
        out = self.pipe(task_type="repaint", src_audio=tail.audio, repainting_start=tail.mask_start, repainting_end=-1,
                        audio_duration=tail.seconds, **args).audios
        return tail.trim(out)

    def follow(self, spec: GenerationSpec, guide, canvas: float, callback):
        """A take that follows its guide: ``cover`` of the guide's audio (which needs the audio tokenizer: NEEDS in
        stemd/families.py), or with ``track NAME`` the lego task over it."""
        import torch

        args = self.kwargs(spec, callback)
        torch.manual_seed(args["generator"][0].initial_seed())   # the autoencoder samples its latent: seed it too
        track = spec.extra.get("track")
        if track:
            return self.pipe(task_type="lego", track_name=track, src_audio=guide, audio_duration=canvas,
                             **args).audios
        strength = spec.extra.get("guide_strength")
        return self.pipe(task_type="cover", src_audio=guide, audio_duration=canvas,
                         audio_cover_strength=1.0 if strength is None else float(strength), **args).audios
