"""The MusicGen engine: one checkpoint held warm, each request streamed as audio blocks.

Per request: the prompt (with tempo, meter and key) goes through T5 once, every layer's text K/V is
computed once, an optional continuation is encoded with EnCodec and prefilled, then tokens are
decoded one step at a time (``generate.py``) and turned into audio as they complete
(``streaming.py``). Blocks are ``(variations, channels, n)`` float32 at 32 kHz. Takes longer than
the model's 30 s window slide on: the last 10 s of tokens become the prompt of the next window.
"""

from __future__ import annotations

import logging
import math
from typing import Iterator, Optional

import numpy as np
import torch

from stemd.models.base import AudioStream, Cancelled, Engine, GenerationSpec, never_stop, no_progress
from stemd.models.conform.stream import first_heard_seconds
from stemd.models.devices import pick_device
from stemd.models.musicgen import decoding
from stemd.models.musicgen.decoding import Decoding
from stemd.models.musicgen.generate import EagerStep, Generation, iter_frames
from stemd.models.musicgen.loading import Checkpoint
from stemd.models.musicgen.streaming import StreamingDecoder
from stemd.protocol import Sampling

WINDOW_SECONDS = 30.0        # what MusicGen was trained on
KEEP_SECONDS = 10.0          # context carried into the next window of a long take
MARGIN = 1.1                 # generate 10% more than asked: conform may stretch
GUIDANCE = 3.0               # classifier-free guidance when a request names none (audiocraft's default)
log = logging.getLogger("stemd.models.musicgen")


def describe(spec: GenerationSpec) -> tuple[str, str]:
    """What MusicGen is conditioned on: the producer's words, and the grid in the form MusicGen was trained
    on (audiocraft's ``augment_music_info_description``: ``"<description>. bpm: 120.0. key: A minor"``; the
    meter, which audiocraft has no field for, as ``"7/8 time"``). The text encoder's token limit cuts
    only the words (``Checkpoint.text_ids``): the grid always reaches the model."""
    words = spec.prompt.strip().rstrip(".")
    grid = [f"{spec.grid.meter} time", f"bpm: {float(spec.grid.tempo.bpm)}"]
    if spec.extra.get("key"):
        grid.append(f"key: {spec.extra['key']}")
    return words, ". ".join(grid)


class MusicGenEngine(Engine):
    name = "musicgen"
    family = "musicgen"          # melody checkpoints: MelodyEngine (melody.py)
    max_seconds = 600.0

    def __init__(self, checkpoint: Checkpoint, decoding: Optional[Decoding] = None):
        """``decoding``: the backend chosen at load (``decoding.load``); None: eager."""
        self.ck = checkpoint
        self.decoding = decoding or Decoding("eager", EagerStep())
        self.device, self.dtype = checkpoint.device, checkpoint.lm.layer_norm.weight.dtype
        self.name = checkpoint.name
        self.sample_rate = checkpoint.sample_rate
        self.channels = checkpoint.audio_channels

    @property
    def backend(self) -> str:
        return self.decoding.backend

    @classmethod
    def load(cls, model: str, *, device: Optional[str] = None, dtype: Optional[str] = None,
             backend: Optional[str] = None) -> "MusicGenEngine":
        """``backend``: one of ``registry.DECODE_BACKENDS`` (None: $STEMD_DECODE_BACKEND, else auto);
        ``auto`` measures on a CPU and keeps its verdict on disk (``decoding.load``)."""
        from stemd.models.registry import chosen_backend

        backend, reason = chosen_backend(backend)
        ck, chosen = decoding.load(model, pick_device(device), dtype, backend, reason)
        if ck.melody is not None and cls is MusicGenEngine:
            from stemd.models.musicgen.melody import MelodyEngine

            cls = MelodyEngine
        engine = cls(ck, chosen)
        log.info("decoding backend %s (%s); EnCodec chunks decoded by %s", engine.backend, chosen.reason,
                 chosen.info()["codec_decode"])
        return engine

    def info(self) -> dict:
        out = {"model": self.name, "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
               **self.decoding.info(), "sample_rate": self.sample_rate, "channels": self.channels,
               "test_model": self.ck.test_model}
        if self.ck.test_model:
            out["note"] = "test model with random weights: it makes noise, not music"
        out.update(self.provenance())
        return out

    def modules(self) -> list:
        return [self.ck.lm, self.ck.text_encoder, self.ck.codec]

    def device_bytes(self) -> int:
        """torch's tensors, and the ONNX Runtime sessions' weights where a CPU path runs in them."""
        return super().device_bytes() + self.decoding.session_bytes()

    def reset(self) -> None:
        self.ck.lm.clear_caches()

    def provenance(self) -> dict:
        """The licence card and weights fingerprint every take's sidecar carries (computed once)."""
        if getattr(self, "_provenance", None) is None:
            from stemd.licenses import card_for_readme
            from stemd.models.musicgen.loading import resolve
            from stemd.models.weights import weights_sha256

            folder = resolve(self.ck.name)
            self._provenance = {"family": self.family,
                                "license": card_for_readme(folder / "README.md", "musicgen",
                                                           test_model=self.ck.test_model),
                                "weights_sha256": weights_sha256(folder)}
        return self._provenance

    # -- one request --------------------------------------------------------------------------------

    def stream(self, spec: GenerationSpec, *, should_stop=never_stop, on_progress=no_progress) -> AudioStream:
        from stemd.families import check_spec

        check_spec(spec, self.family, self.name)     # the keys this family takes: stemd/families.py's table
        asked = [0]      # samples the consumer asked for (AudioStream.need), read between steps
        return AudioStream(sample_rate=self.sample_rate, channels=self.channels,
                           blocks=self._blocks(spec, should_stop, on_progress, asked), on_grid=False,
                           tempo_hint=float(spec.grid.tempo.bpm),
                           need=lambda samples: asked.__setitem__(0, max(asked[0], int(samples))))

    def frames_for(self, seconds: float) -> int:
        return math.ceil(seconds * self.ck.frame_rate)

    def generation(self, variations: int, params: Sampling, max_seq: int, prompt: Optional[torch.Tensor] = None,
                   seed: Optional[int] = None) -> Generation:
        """A request's decoding state, stepped by this engine's backend (the caches must be set up)."""
        return Generation(self.ck.lm, variations, params, max_seq, prompt=prompt, seed=seed,
                          keep_frames=self.frames_for(KEEP_SECONDS), step=self.decoding.step)

    def streaming_decoder(self, skip_frames: int = 0, first: int = 0) -> StreamingDecoder:
        """Chunks of frames to audio, in ONNX Runtime when this engine measured it faster than torch;
        ``first``: the frames of the first piece (``StreamingDecoder``)."""
        codec = self.decoding.codec
        return StreamingDecoder(self.ck.codec, self.channels, self.ck.hop, skip_frames=skip_frames, first=first,
                                run=codec.run if codec is not None else None)

    def window(self, total: int, max_delay: int, positions: int) -> int:
        """The token window (``max_seq``) of a request of ``total`` frames: the model's 30 s, at most ``positions``."""
        window = min(self.frames_for(WINDOW_SECONDS) + max_delay + 2, positions)
        return min(window, 64 * math.ceil((total + max_delay + 2) / 64))

    def condition(self, spec: GenerationSpec, params: Sampling, total: int, max_delay: int) -> int:
        """Set up the caches and the request's conditioning (the words and the grid through T5, every layer's
        text K/V); returns the token window."""
        lm = self.ck.lm
        max_seq = self.window(total, max_delay, lm.args.max_positions)
        words, grid = describe(spec)
        text, mask = self.ck.encode_text(words, spec.variations, params.guided, grid=grid)
        lm.setup_caches(text.shape[0], max_seq, 64 * math.ceil(text.shape[1] / 64))
        lm.set_conditioning(text, mask)
        return max_seq

    def _blocks(self, spec: GenerationSpec, should_stop, on_progress, asked) -> Iterator[np.ndarray]:
        with torch.no_grad():
            yield from self._generate(spec, should_stop, on_progress, asked)

    def _generate(self, spec: GenerationSpec, should_stop, on_progress, asked) -> Iterator[np.ndarray]:
        if should_stop():
            raise Cancelled()
        lm, args = self.ck.lm, self.ck.lm.args
        params = spec.sampling.with_guidance(GUIDANCE)
        prompt = (self.ck.encode_audio(spec.continuation, self.frames_for(KEEP_SECONDS))
                  if spec.continuation is not None else None)
        p = 0 if prompt is None else prompt.shape[-1]
        new_frames = self.frames_for(float(spec.seconds) * MARGIN) + 1
        total = p + new_frames
        max_delay = max(1, args.num_codebooks // args.audio_channels) - 1
        max_seq = self.condition(spec, params, total, max_delay)
        gen = self.generation(spec.variations, params, max_seq, prompt=prompt, seed=spec.seed)
        # the first piece is what conform waits for before bar 1 can leave, decoded once it exists
        decoder = self.streaming_decoder(skip_frames=p, first=self.frames_for(first_heard_seconds(spec)))

        def progress(ready: int) -> None:
            on_progress(max(0.0, min(1.0, (ready - p) / new_frames)))

        for frames in iter_frames(gen, total, should_stop, progress):
            decoder.ask(math.ceil(asked[0] / self.ck.hop))
            audio = decoder.push(frames)
            if audio.shape[-1]:
                yield audio
        audio = decoder.flush()
        if audio.shape[-1]:
            yield audio
