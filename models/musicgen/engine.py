"""The MusicGen engine: one checkpoint held warm, each request streamed as audio blocks.

Per request: the prompt (with tempo, meter and key) goes through T5 once, every layer's text K/V is
computed once, an optional continuation is encoded with EnCodec and prefilled, then tokens are
decoded one step at a time (``generate.py``) and turned into audio as they complete
(``streaming.py``). Blocks are ``(variations, channels, n)`` float32 at 32 kHz. Takes longer than
the model's 30 s window slide on: the last 10 s of tokens become the prompt of the next window.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from typing import Iterator, Optional

import numpy as np
import torch

from stemd.models.base import (AudioStream, Cancelled, Engine, EngineError, GenerationSpec, never_stop,
                               no_progress)
from stemd.models.devices import DTYPES, gpu_dtype, named_dtype, pick_device
from stemd.models.musicgen.generate import Generation, Sampling, iter_frames
from stemd.models.musicgen.loading import Checkpoint, load_checkpoint
from stemd.models.musicgen.streaming import StreamingDecoder
from stemd.models.registry import DECODE_BACKENDS

WINDOW_SECONDS = 30.0        # what MusicGen was trained on
KEEP_SECONDS = 10.0          # context carried into the next window of a long take
MARGIN = 1.1                 # generate 10% more than asked: conform may stretch
MAX_TEXT_TOKENS = 256
GUIDANCE = 3.0               # classifier-free guidance when a request names none (audiocraft's default)
BACKENDS = DECODE_BACKENDS  # auto picks one for the device: ``MusicGenEngine._choose``
log = logging.getLogger("stemd.models.musicgen")


def cpu_has_native_bf16() -> bool:
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def pick_dtype(dtype: Optional[str], device: torch.device) -> torch.dtype:
    """bfloat16 on GPUs and CPUs that compute in it natively (AVX512-BF16, AMX: half the memory traffic
    per step), float16 on other GPUs and on Apple silicon, float32 on other CPUs."""
    if dtype and dtype != "auto":
        return named_dtype(dtype)
    if device.type != "cpu":
        return gpu_dtype(device) or torch.float32
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def describe(spec: GenerationSpec) -> str:
    """The text MusicGen is conditioned on: the producer's prompt plus tempo, meter and key."""
    parts = [spec.prompt.strip()] if spec.prompt.strip() else []
    parts.append(f"{float(spec.grid.tempo.bpm):g} bpm")
    parts.append(f"{spec.grid.meter} time")
    if spec.extra.get("key"):
        parts.append(f"key of {spec.extra['key']}")
    return ", ".join(parts)


class MusicGenEngine(Engine):
    name = "musicgen"
    max_seconds = 600.0

    def __init__(self, checkpoint: Checkpoint, device: torch.device, dtype: torch.dtype, backend: str = "eager",
                 *, reason: Optional[str] = None, eager_dtype: Optional[torch.dtype] = None):
        """``backend``: one of ``BACKENDS``; ``auto`` chooses here (``eager_dtype``: the dtype eager decoding
        would run in, which ``auto`` times against ONNX Runtime on a CPU); ``reason`` is what ``info()``
        says about the choice when the caller made it."""
        if backend not in BACKENDS:
            raise EngineError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        self.ck, self.device, self.dtype = checkpoint, device, dtype
        self.step_backend = None
        self.onnx = None                  # fast.choose.OnnxDecoding when decoding in ONNX Runtime
        self.codec = None                 # fast.choose.CodecChoice: who decodes the chunks (None: torch)
        self.backend_rates: Optional[dict] = None
        self.measured = None              # fast.choose.Measured when auto measured at this start
        self.backend_reason = reason or "asked for"
        if backend == "auto":
            backend = self._choose(eager_dtype or dtype)
        self.backend = backend
        if backend == "onnx" and self.onnx is None:
            self._setup_onnx()
        elif backend not in ("eager", "onnx"):   # models/musicgen/fast: compiled or CUDA-graph steps
            from stemd.models.musicgen.fast.backends import make_backend

            try:
                self.step_backend = make_backend(backend, device)
            except ValueError as e:
                raise EngineError(str(e)) from None
        self.name = checkpoint.name
        self.sample_rate = checkpoint.sample_rate
        self.channels = checkpoint.audio_channels
        self.hop = checkpoint.sample_rate // checkpoint.frame_rate
        self.max_variations = 16 if device.type == "cuda" else 8

    def _setup_onnx(self) -> None:
        if self.device.type != "cpu" or self.dtype != torch.float32:
            raise EngineError(f"the onnx decoding backend runs float32 on the CPU, not "
                              f"{str(self.dtype).replace('torch.', '')} on {self.device}")
        try:
            from stemd.models.musicgen.fast.choose import setup_onnx
        except ImportError as e:
            raise EngineError(f"the onnx decoding backend needs onnx, onnxscript and onnxruntime "
                              f"(pip install 'stemd[daemon]'): {e}") from None
        self.onnx = setup_onnx(self.ck)
        self.codec = self.onnx.codec

    def _setup_codec(self) -> None:
        """EnCodec's decoder in ONNX Runtime where it measures faster than torch (any decoding backend)."""
        from stemd.models.musicgen.fast.choose import setup_codec

        self.codec = setup_codec(self.ck)

    def _choose(self, eager_dtype: torch.dtype) -> str:
        """``auto``: CUDA graphs on CUDA; on a CPU, whichever of ONNX Runtime (float32) and the eager loop
        (in ``eager_dtype``) decodes faster here, timed now; eager elsewhere."""
        if self.device.type == "cuda":
            self.backend_reason = "auto: a CUDA device, so decoding steps replay as CUDA graphs"
            return "cuda-graph"
        if self.device.type != "cpu":
            self.backend_reason = f"auto: no faster backend than eager on {self.device.type}"
            return "eager"
        if self.dtype != torch.float32:
            self.backend_reason = (f"auto: ONNX Runtime decodes float32 and this model is loaded in "
                                   f"{str(self.dtype).replace('torch.', '')}, so eager")
            return "eager"
        try:
            from stemd.models.musicgen.fast.choose import measure_cpu
        except ImportError as e:
            self.backend_reason = f"auto: ONNX Runtime is not installed ({e}), so eager"
            return "eager"
        self.measured = m = measure_cpu(self, eager_dtype)
        self.backend_rates, self.backend_reason = m.rates, "auto: " + m.reason
        self.codec = m.onnx.codec            # the chunk decoder's own verdict, whichever step won
        if m.backend == "onnx":
            self.onnx = m.onnx
        elif eager_dtype != self.dtype:       # eager in bfloat16 won: decode with the cast copy it was timed on
            self.ck = dataclasses.replace(self.ck, lm=m.eager_lm)
            self.dtype = eager_dtype
        return m.backend

    @classmethod
    def load(cls, model: str, *, device: Optional[str] = None, dtype: Optional[str] = None,
             backend: Optional[str] = None) -> "MusicGenEngine":
        """``backend``: one of ``BACKENDS`` (default eager); None reads STEMD_DECODE_BACKEND. ``onnx``
        and a CPU ``auto`` load the model in float32 unless another dtype is asked for; ``auto`` keeps its
        measured verdict on disk (``fast.choose``) and reuses it on the next start."""
        dev = pick_device(device)
        source = "asked for" if backend else "from STEMD_DECODE_BACKEND" if os.environ.get(
            "STEMD_DECODE_BACKEND") else "the default"
        backend = backend or os.environ.get("STEMD_DECODE_BACKEND") or "eager"
        if backend not in BACKENDS:
            raise EngineError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        if backend == "cuda-graph" and dev.type != "cuda":
            raise EngineError(f"the cuda-graph decoding backend needs a CUDA device, not {dev}")
        if backend == "onnx" and dev.type != "cpu":
            raise EngineError(f"the onnx decoding backend runs on the CPU, not {dev}")
        asked_float32 = dtype in (None, "auto") or DTYPES.get(dtype) == torch.float32
        dt = pick_dtype(dtype, dev)
        eager_dt, key, cached = None, None, None
        if backend == "onnx":
            if not asked_float32:
                raise EngineError(f"the onnx decoding backend runs float32, not {dtype}")
            dt = torch.float32
        elif backend == "auto" and dev.type == "cpu" and asked_float32:
            eager_dt, dt = dt, torch.float32        # ONNX Runtime needs the float32 weights; eager may cast
            key, cached = cls._kept_decision(model, eager_dt)
            if cached:
                backend = cached["backend"]
                dt = torch.float32 if backend == "onnx" else eager_dt
                rates = ", ".join(f"{k} {v:.2f}" for k, v in cached["rates"].items())
                source = f"auto: measured {cached['measured']} (kept on disk), steps/s: {rates} -> {backend}"
        with torch.inference_mode(False), torch.no_grad():
            checkpoint = load_checkpoint(model, dev, dt)
            engine = cls(checkpoint, dev, dt, backend=backend, reason=source, eager_dtype=eager_dt)
        if cached:
            engine.backend_rates = dict(cached["rates"])
            if engine.codec is None:      # auto kept eager: the chunks still go where they decode faster
                engine._setup_codec()
        if engine.measured is not None and key is not None:
            from stemd.models.musicgen.fast.choose import save_decision

            save_decision(key, engine.measured)
        engine.measured = None            # the timed copies are not needed any more
        log.info("decoding backend %s (%s); EnCodec chunks decoded by %s", engine.backend, engine.backend_reason,
                 engine.info()["codec_decode"])
        return engine

    @staticmethod
    def _kept_decision(model: str, eager_dtype: torch.dtype) -> tuple[Optional[str], Optional[dict]]:
        """The key of ``auto``'s verdict for this model, machine and versions, and the verdict if one was kept."""
        try:
            from stemd.models.musicgen.fast.choose import decision_key, load_decision
        except ImportError:          # no ONNX Runtime: auto is eager, nothing to keep
            return None, None
        from stemd.models.musicgen.loading import resolve

        key = decision_key(resolve(model), eager_dtype)
        return key, load_decision(key)

    def info(self) -> dict:
        out = {"model": self.name, "device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
               "decode_backend": self.backend, "decode_backend_reason": self.backend_reason,
               "codec_decode": "onnx" if self.codec is not None and self.codec.run is not None else "torch",
               "sample_rate": self.sample_rate, "channels": self.channels, "test_model": self.ck.test_model}
        if self.backend_rates:
            out["decode_steps_per_s"] = dict(self.backend_rates)
        if self.codec is not None:
            out["codec_decode_reason"] = self.codec.reason
        if self.ck.test_model:
            out["note"] = "test model with random weights: it makes noise, not music"
        out.update(self.provenance())
        return out

    def provenance(self) -> dict:
        """The licence card and weights fingerprint every take's sidecar carries (computed once)."""
        if getattr(self, "_provenance", None) is None:
            from stemd.licenses import card_for_readme
            from stemd.models.musicgen.loading import resolve
            from stemd.models.weights import weights_sha256

            folder = resolve(self.ck.name)
            self._provenance = {"family": "musicgen",
                                "license": card_for_readme(folder / "README.md", "musicgen",
                                                           test_model=self.ck.test_model),
                                "weights_sha256": weights_sha256(folder)}
        return self._provenance

    # -- one request --------------------------------------------------------------------------------

    def stream(self, spec: GenerationSpec, *, should_stop=never_stop, on_progress=no_progress) -> AudioStream:
        from stemd.protocol import MODEL_KEYS, ProtocolError

        lacking = [k for k in MODEL_KEYS if spec.extra.get(k) not in (None, "")]
        if lacking:
            raise ProtocolError("unsupported_key", f"MusicGen has no {', '.join(lacking)} (a diffusion model's keys); "
                                "it takes temperature, top_k, top_p, guidance")
        if spec.variations > self.max_variations:
            raise EngineError(f"at most {self.max_variations} variations per request on {self.device.type}")
        return AudioStream(sample_rate=self.sample_rate, channels=self.channels,
                           blocks=self._blocks(spec, should_stop, on_progress), on_grid=False,
                           tempo_hint=float(spec.grid.tempo.bpm))

    def frames_for(self, seconds: float) -> int:
        return math.ceil(seconds * self.ck.frame_rate)

    @torch.no_grad()
    def encode_text(self, text: str, variations: int, guided: bool) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.ck.tokenizer([text], return_tensors="pt", truncation=True, max_length=MAX_TEXT_TOKENS)
        ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
        hidden = self.ck.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        hidden, mask = hidden.expand(variations, -1, -1), mask.expand(variations, -1)
        if guided:  # the unconditional half: no text at all
            hidden = torch.cat([hidden, torch.zeros_like(hidden)])
            mask = torch.cat([mask, torch.zeros_like(mask)])
        return hidden, mask

    @torch.no_grad()
    def encode_audio(self, audio) -> torch.Tensor:
        """A continuation (the DAW's selection) -> EnCodec codes ``(K, P)``: its last whole frames, at most
        ``KEEP_SECONDS``, so that the generated audio starts exactly where the selection ends."""
        samples = np.asarray(audio.samples, dtype=np.float32)
        if samples.ndim == 1:
            samples = samples[None]
        if audio.sample_rate != self.sample_rate:
            import soxr

            samples = soxr.resample(samples.T, audio.sample_rate, self.sample_rate, quality="HQ").T
        if self.channels == 1:
            samples = samples.mean(axis=0, keepdims=True)
        elif samples.shape[0] == 1:
            samples = np.repeat(samples, 2, axis=0)
        else:
            samples = samples[:2]
        frames = min(samples.shape[-1] // self.hop, self.frames_for(KEEP_SECONDS))
        if frames == 0:
            return torch.zeros(self.ck.lm.args.num_codebooks, 0, dtype=torch.long)
        x = torch.from_numpy(np.ascontiguousarray(samples[:, samples.shape[-1] - frames * self.hop:]))
        x = x.to(self.device)
        codec = self.ck.codec
        k = self.ck.lm.args.num_codebooks // self.channels
        per_channel = [codec.encode(x[c][None, None]).audio_codes[0, 0, :k] for c in range(x.shape[0])]
        if self.channels == 2:  # interleave: left codebook i at 2i, right at 2i + 1
            codes = torch.stack(per_channel, dim=1).reshape(-1, per_channel[0].shape[-1])
        else:
            codes = per_channel[0]
        return codes[:, :frames]

    def generation(self, variations: int, params: Sampling, max_seq: int, prompt: Optional[torch.Tensor] = None,
                   seed: Optional[int] = None) -> Generation:
        """A request's decoding state, stepped by this engine's backend (the caches must be set up)."""
        lm, keep = self.ck.lm, self.frames_for(KEEP_SECONDS)
        if self.onnx is not None:
            from stemd.models.musicgen.fast.onnx_step import OnnxGeneration

            return OnnxGeneration(lm, variations, params, max_seq, step=self.onnx.step, prompt=prompt, seed=seed,
                                  keep_frames=keep)
        if self.step_backend is not None:
            from stemd.models.musicgen.fast.backends import FastGeneration

            return FastGeneration(lm, variations, params, max_seq, prompt=prompt, seed=seed, keep_frames=keep,
                                  backend=self.step_backend)
        return Generation(lm, variations, params, max_seq, prompt=prompt, seed=seed, keep_frames=keep)

    def streaming_decoder(self, skip_frames: int = 0) -> StreamingDecoder:
        """Chunks of frames to audio, in ONNX Runtime when this engine measured it faster than torch."""
        run = self.codec.run if self.codec is not None else None
        return StreamingDecoder(self.ck.codec, self.channels, self.hop, skip_frames=skip_frames, run=run)

    def _blocks(self, spec: GenerationSpec, should_stop, on_progress) -> Iterator[np.ndarray]:
        with torch.no_grad():
            yield from self._generate(spec, should_stop, on_progress)

    def _generate(self, spec: GenerationSpec, should_stop, on_progress) -> Iterator[np.ndarray]:
        if should_stop():
            raise Cancelled()
        lm, args = self.ck.lm, self.ck.lm.args
        params = Sampling(guidance=GUIDANCE if spec.guidance is None else spec.guidance, temperature=spec.temperature, top_k=spec.top_k,
                          top_p=spec.top_p)
        prompt = self.encode_audio(spec.continuation) if spec.continuation is not None else None
        p = 0 if prompt is None else prompt.shape[-1]
        new_frames = self.frames_for(float(spec.seconds) * MARGIN) + 1
        total = p + new_frames
        max_delay = max(1, args.num_codebooks // args.audio_channels) - 1
        window = min(self.frames_for(WINDOW_SECONDS) + max_delay + 2, args.max_positions)
        max_seq = min(window, 64 * math.ceil((total + max_delay + 2) / 64))
        variations = spec.variations
        text, mask = self.encode_text(describe(spec), variations, params.guided)
        max_text = 64 * math.ceil(text.shape[1] / 64)
        lm.setup_caches(text.shape[0], max_seq, max_text)
        lm.set_conditioning(text, mask)
        gen = self.generation(variations, params, max_seq, prompt=prompt, seed=spec.seed)
        decoder = self.streaming_decoder(skip_frames=p)

        def progress(ready: int) -> None:
            on_progress(max(0.0, min(1.0, (ready - p) / new_frames)))

        for frames in iter_frames(gen, total, should_stop, progress):
            audio = decoder.push(frames)
            if audio.shape[-1]:
                yield audio
        audio = decoder.flush()
        if audio.shape[-1]:
            yield audio
