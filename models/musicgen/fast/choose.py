"""Which decoding path an engine runs: the ONNX Runtime pieces it sets up, and the ``auto`` choice.

``setup_onnx`` loads (or exports once, ``onnx_cache``) the step and EnCodec's decoder; ``setup_codec`` keeps
the ONNX decoder only if a chunk window decodes faster in it than in torch on this machine. ``measure_cpu``
times a few decoding steps of the ONNX step, of the eager loop (in the dtype eager decoding would
run in) and of the eager loop on int8 weights (``int8.py``), and says which is fastest;
``load_decision``/``save_decision`` keep that verdict on disk per model files, CPU model, threads and
versions, so an engine starts without measuring again (and a machine of another kind measures).
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from stemd.models.devices import cpu_name
from stemd.models.musicgen.fast.onnx_cache import runtime_versions
from stemd.models.musicgen.fast.onnx_codec import OnnxCodec, cached_codec, torch_decode, window_ms
from stemd.models.musicgen.fast.onnx_step import OnnxStep, cached_int8_step, cached_step
from stemd.models.musicgen.generate import Generation, Sampling
from stemd.models.weights import cache_root
from stemd.takes import atomic_write

log = logging.getLogger("stemd.models.musicgen")
DECISION_FORMAT = 5      # 3: int8 and onnx-int8 are candidates; 4: the ONNX step's format 3; 5: its format 4
PROBE_TEXT = "stemd backend probe, 120 bpm"


@dataclass
class CodecChoice:
    """Who decodes the chunks: ``run`` is the ONNX decoder, or None for torch; ``reason`` the figures."""

    run: Optional[OnnxCodec]
    reason: str
    ms: dict = field(default_factory=dict)


@dataclass
class OnnxDecoding:
    step: OnnxStep
    codec: CodecChoice


def codec_window(ck) -> torch.Tensor:
    """Random codes shaped like one steady-state chunk window of ``StreamingDecoder``: ``(K, channels, n)``."""
    from stemd.models.musicgen.streaming import StreamingDecoder

    d = StreamingDecoder(ck.codec, ck.audio_channels, ck.sample_rate // ck.frame_rate)
    k = ck.lm.args.num_codebooks // ck.audio_channels
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, ck.lm.args.vocab_size, (k, ck.audio_channels, d.left + d.chunk + d.right), generator=gen)


def setup_codec(ck) -> CodecChoice:
    """EnCodec's decoder in ONNX Runtime (loaded, or exported once) if it decodes a chunk window faster
    than torch here, else torch."""
    path, new = cached_codec(ck.codec, ck.lm.args.num_codebooks // ck.audio_channels)
    run = OnnxCodec(path, ck.codec)
    window = codec_window(ck)
    ms = {"torch": round(window_ms(lambda c: torch_decode(ck.codec, c), window), 2),
          "onnx": round(window_ms(run, window), 2)}
    faster = ms["onnx"] < ms["torch"]
    reason = (f"chunk window of {window.shape[-1]} frames: ONNX Runtime {ms['onnx']:.1f} ms, torch {ms['torch']:.1f} ms"
              f" -> {'onnx' if faster else 'torch'}")
    log.info("EnCodec decoder %s (%s); %s", path.parent.name, "exported now" if new else "from the cache", reason)
    return CodecChoice(run if faster else None, reason, ms)


def setup_onnx(ck, int8: bool = False, codec: Optional[CodecChoice] = None) -> OnnxDecoding:
    """The step's session (``int8``: its weight-only int8 form) and the chunk decoder's choice
    (``setup_codec``, unless ``codec`` is given)."""
    t0 = time.perf_counter()
    step_path, new = (cached_int8_step if int8 else cached_step)(ck.lm)
    step = OnnxStep(step_path)
    log.info("ONNX Runtime step %s (%s) in %.1f s", step_path.parent.name, "exported now" if new else "from the cache",
             time.perf_counter() - t0)
    return OnnxDecoding(step, codec if codec is not None else setup_codec(ck))


def _rate(gen, steps: int) -> float:
    gen.decode_n_tokens(2)                       # warm-up
    t0 = time.perf_counter()
    gen.decode_n_tokens(steps)
    return steps / (time.perf_counter() - t0)


@dataclass
class Measured:
    backend: str                     # "onnx", "onnx-int8", "eager" or "int8"
    eager_dtype: torch.dtype
    rates: dict                      # steps/s per candidate, best of the rounds
    codec: CodecChoice               # who decodes the chunks (measured once, whichever step wins)

    @property
    def reason(self) -> str:
        figures = ", ".join(f"{k} {v:.2f}" for k, v in self.rates.items())
        return f"measured at start, steps/s at batch 1 with guidance: {figures} -> {self.backend}"


def measure_cpu(ck, eager_dtype: torch.dtype, steps: int = 8, rounds: int = 2) -> Measured:
    """Steps/s of the ONNX step (float32 and weight-only int8), of the eager loop in ``eager_dtype`` and
    of the eager loop on int8 weights, from a float32 checkpoint (batch 1, guidance 3, top-k 250, from
    position 1; the best of ``rounds``). One candidate at a time: each is built, timed and dropped before
    the next, so a first start holds the float32 model and one candidate at most (the caller builds the
    winner again, as from a kept verdict)."""
    from stemd.models.musicgen.fast import int8

    codec = setup_codec(ck)
    lm = ck.lm
    params = Sampling(guidance=3.0, temperature=1.0, top_k=250)
    text, mask = ck.encode_text(PROBE_TEXT, 1, guided=True)
    candidates = [("onnx float32", "onnx", lambda: (lm, setup_onnx(ck, codec=codec).step)),
                  ("onnx int8", "onnx-int8", lambda: (lm, setup_onnx(ck, int8=True, codec=codec).step)),
                  (f"eager {str(eager_dtype).replace('torch.', '')}", "eager",
                   lambda: (lm if eager_dtype == torch.float32 else copy.deepcopy(lm).to(eager_dtype), None))]
    if int8.available():
        candidates.append(("int8", "int8", lambda: (int8.quantize(lm), None)))
    rates = {}
    with torch.no_grad():
        for name, _, build in candidates:
            model, step = build()
            best = 0.0
            for r in range(rounds):
                model.setup_caches(2, 256, 64)
                model.set_conditioning(text, mask)
                best = max(best, _rate(Generation(model, 1, params, 256, seed=r, step=step), steps))
            rates[name] = round(best, 2)
            model.clear_caches()
            del model, step
            gc.collect()
    best = max(candidates, key=lambda c: rates[c[0]])   # ties: the earlier (onnx, then eager)
    return Measured(best[1], eager_dtype, rates, codec)


# -- the verdict kept on disk -----------------------------------------------------------------------

def decision_key(model_folder: Path, eager_dtype: torch.dtype) -> str:
    """Model files (names, sizes, modification times), this CPU (model name, vector ISA, native
    bfloat16), cores, torch's threads, versions."""
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(model_folder).iterdir()
                   if p.is_file())
    from stemd.models.musicgen.decoding import cpu_has_native_bf16

    # the CPU by name and by what it computes natively (a VM's name can hide the model)
    cpu = [cpu_name(), torch.backends.cpu.get_cpu_capability(), cpu_has_native_bf16()]
    parts = {"format": DECISION_FORMAT, "model": str(Path(model_folder).resolve()), "files": files,
             "cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
             "eager_dtype": str(eager_dtype), **runtime_versions()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _decision_path(key: str) -> Path:
    return cache_root() / "decisions" / f"{key}.json"


def load_decision(key: str) -> Optional[dict]:
    try:
        d = json.loads(_decision_path(key).read_text())
    except (OSError, ValueError):
        return None
    ok = (isinstance(d, dict) and d.get("backend") in ("onnx", "onnx-int8", "eager", "int8")
          and isinstance(d.get("rates"), dict)
          and isinstance(d.get("measured"), str))
    return d if ok else None


def save_decision(key: str, measured: Measured) -> None:
    path = _decision_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({"backend": measured.backend, "rates": measured.rates,
                                   "onnx_codec": measured.codec.run is not None,
                                   "measured": time.strftime("%Y-%m-%d %H:%M")}))
