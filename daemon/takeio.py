"""A request in, take files out: a validated request becomes an engine spec; a finished take becomes files
with a sidecar (the daemon's worker and render both use it)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from stemd.models.base import Audio, Engine, GenerationSpec
from stemd.protocol import MAX_CONTINUATION_BYTES, MODEL_KEYS, GenerateRequest, ProtocolError
from stemd.takes import next_take_number, take_name, take_prefix, write_take
from stemd.timing import Grid


def spec_from_request(request: GenerateRequest, engine: Engine,
                      continuation_root: Optional[Path] = None) -> GenerationSpec:
    """Check the request against the engine's limits and build its spec."""
    if float(request.seconds) > engine.max_seconds:
        raise ProtocolError("out_of_range", f"{request.bars} bars at {request.bpm} BPM is "
                            f"{float(request.seconds):.0f} s; {engine.name} takes at most {engine.max_seconds:.0f} s",
                            request.request_id)
    if request.variations > engine.max_variations:
        raise ProtocolError("out_of_range", f"{engine.name} makes at most {engine.max_variations} variations",
                            request.request_id)
    continuation = None
    samples = request.continuation_audio()
    if samples is not None:
        continuation = Audio(samples, request.continuation_rate)
    elif request.continuation_path:
        continuation = _load_continuation(request, continuation_root)
    extra = {"key": request.key} if request.key else {}
    extra.update({k: getattr(request, k) for k in MODEL_KEYS if getattr(request, k) not in (None, "")})
    return GenerationSpec(
        grid=Grid(request.bpm, request.meter), bars=request.bars, prompt=request.prompt,
        start_bar=request.start_bar, sample_rate=request.sample_rate, channels=request.channels,
        variations=request.variations, seed=request.seed, sampling=request.sampling,
        continuation=continuation, loop=request.loop, extra=extra)


def _load_continuation(request: GenerateRequest, root: Optional[Path]) -> Audio:
    import soundfile

    from stemd.daemon.dispatch import check_continuation_path

    path = check_continuation_path(request, root)     # again: the file may have changed since
    try:
        info = soundfile.info(str(path))
        if info.frames * info.channels * 4 > MAX_CONTINUATION_BYTES:
            raise ProtocolError("too_large", f"the continuation is {info.frames / info.samplerate:.0f} s of "
                                f"{info.channels}-channel audio: over {MAX_CONTINUATION_BYTES // 2 ** 20} MiB as "
                                "float32", request.request_id)
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except ProtocolError:
        raise
    except Exception:  # soundfile raises several types for unreadable files
        raise ProtocolError("out_of_range", "continuation_path must name an audio file inside the daemon's "
                            "--input-root", request.request_id) from None
    return Audio(np.ascontiguousarray(data.T), rate)


def sidecar_for(request: GenerateRequest, engine: Engine, variation: int) -> dict:
    info = engine.info()
    meta = {"model": info.get("model", engine.name), "engine": info, **request.sidecar(variation)}
    meta["license"] = info.get("license") or {}
    meta["commercial_use"] = bool(meta["license"].get("commercial"))
    if info.get("weights_sha256"):
        meta["weights_sha256"] = info["weights_sha256"]
    if info.get("test_model"):
        meta["note"] = "made by a test model with random weights: noise, not music"
    return meta


def write_takes(folder: Path, request: GenerateRequest, engine: Engine, audio: np.ndarray,
                subtype: str = "float32") -> list[Path]:
    """One WAV + sidecar per variation of ``audio`` ``(variations, channels, n)``, numbered after the
    takes of the same prompt, stem and bar already in ``folder``."""
    prompt = request.prompt or engine.name
    take = next_take_number(folder, take_prefix(prompt, request.start_bar, request.stem))
    paths = []
    for v in range(audio.shape[0]):
        name = take_name(prompt, request.start_bar, take, v if audio.shape[0] > 1 else None, request.stem)
        paths.append(write_take(folder, name, audio[v], request.sample_rate,
                                sidecar_for(request, engine, v), subtype))
    return paths
