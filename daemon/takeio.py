"""A request in, take files out: a validated request becomes an engine spec; a finished take becomes files
with a sidecar (the daemon's worker and render both use it)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Optional

import numpy as np

from stemd.models.base import Audio, Engine, GenerationSpec
from stemd.protocol import MAX_CONTINUATION_BYTES, MODEL_KEYS, GenerateRequest, ProtocolError
from stemd.sidecar import encode, take_sidecar
from stemd.takes import PartialFile, TakeClaims, atomic_write, take_name, take_prefix, wav_header
from stemd.timing import Grid


def check_limits(request: GenerateRequest, engine: Engine) -> None:
    """The engine's own limits: the longest take, the most variations."""
    if float(request.seconds) > engine.max_seconds:
        raise ProtocolError("out_of_range", f"{request.bars} bars at {request.bpm} BPM is "
                            f"{float(request.seconds):.0f} s; {engine.name} takes at most {engine.max_seconds:.0f} s",
                            request.request_id)
    if request.variations > engine.max_variations:
        raise ProtocolError("out_of_range", f"{engine.name} makes at most {engine.max_variations} variations",
                            request.request_id)


def spec_from_request(request: GenerateRequest, engine: Optional[Engine],
                      continuation_root: Optional[Path] = None) -> GenerationSpec:
    """Check the request against the engine's limits (``engine``: the engine, or the pool's slot of a model not
    loaded yet, which knows them from its files; None: its worker checks them) and build its spec."""
    if engine is not None:
        check_limits(request, engine)
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


class TakeStream:
    """One request's takes written to disk as its bars arrive (float32 WAV, one file per variation),
    so a take costs one bar of memory however long it is. Its take number is claimed first
    (``TakeClaims``: no other writer on the folder picks it); each WAV grows in a partial file of its
    own; ``finish`` writes the sizes into the headers, the sidecars (``stemd.sidecar``; their text kept in
    ``sidecars`` for the client), and gives the files their final names, sidecar and WAV one after the
    other, never over an existing file; ``abort`` removes what it
    wrote. A preempted request keeps its stream and goes on where it stopped."""

    def __init__(self, claims: TakeClaims, request: GenerateRequest, engine: Engine, variations: int,
                 channels: int, model_name: str = ""):
        self.request, self.engine, self.claims, self.model_name = request, engine, claims, model_name
        self.channels, self.frames = channels, 0
        folder = claims.folder
        prompt = request.prompt or engine.name
        self.prefix = take_prefix(prompt, request.start_bar, request.stem)

        def names(number: int) -> list:
            stems = [take_name(prompt, request.start_bar, number, v if variations > 1 else None, request.stem)
                     for v in range(variations)]
            kept = (".json", ".wav", ".mid") if request.guide is not None else (".json", ".wav")  # the guide SMF
            return [n + ext for n in stems for ext in kept]

        self.number, self.claim = claims.claim(self.prefix, names)
        self.paths = [folder / n for n in names(self.number) if n.endswith(".wav")]
        self.files: list[PartialFile] = []
        self.published: list[Path] = []    # final names ``finish`` gave, until the whole take has them
        self.sidecars: list[str] = []      # each take's sidecar as written, once finished (/stemd/sidecar)
        self.conform: tuple = ()           # per variation, how conform placed it (BarChunk.conform)
        try:
            for path in self.paths:
                f = PartialFile(path, replace=False)
                self.files.append(f)
                f.write(wav_header(channels, request.sample_rate, 0))
        except OSError:
            self.abort()
            raise

    def write(self, audio: np.ndarray) -> None:
        """One bar: ``(variations, channels, n)`` float32."""
        for f, variation in zip(self.files, audio):
            f.write(np.ascontiguousarray(variation.T, dtype="<f4").tobytes())
        self.frames += audio.shape[-1]

    def finish(self) -> list[Path]:
        header = wav_header(self.channels, self.request.sample_rate, self.frames)
        for f in self.files:
            f.file.seek(0)
            f.write(header)
        metas = [take_sidecar(self.request, v, self.engine.info(), self.model_name, file=path.name,
                              sample_rate=self.request.sample_rate, channels=self.channels, frames=self.frames,
                              format="float32", conform=self.conform[v] if v < len(self.conform) else None)
                 for v, path in enumerate(self.paths)]
        guide = self.request.guide
        for meta, path in zip(metas, self.paths):
            if guide is not None:               # the guide SMF is kept beside the take, so it can be made again
                meta["guide"]["file"] = path.with_suffix(".mid").name
        self.sidecars = [encode(meta) for meta in metas]   # all made before any is published
        for f, path, text in zip(self.files, self.paths, self.sidecars):
            if guide is not None:
                atomic_write(path.with_suffix(".mid"), guide, replace=False)
                self.published.append(path.with_suffix(".mid"))
            atomic_write(path.with_suffix(".json"), text, replace=False)
            self.published.append(path.with_suffix(".json"))
            f.publish()
            self.published.append(path)
        self.published = []             # whole: the files are the take's now, abort leaves them
        self.claim.unlink(missing_ok=True)
        return self.paths

    def abort(self) -> None:
        """Remove what this take wrote (its partial files, what a failed ``finish`` had published, its
        claim), each whatever happens to the others; what cannot go now (a file system that needs room to
        delete) is kept in ``LITTER`` and removed by a later ``LITTER.sweep``."""
        for f in self.files:
            try:
                f.discard()
            except OSError:
                LITTER.keep(f.partial)
        for path in [*self.published, self.claim]:
            LITTER.remove(path)
        self.published = []


class Litter:
    """Files a take could not remove when it ended (a full disk), removed as soon as the disk allows:
    the worker sweeps after every take and the server every few seconds (and ``stemd serve`` removes
    leftovers at start)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._paths: set[Path] = set()

    def keep(self, path: Path) -> None:
        with self._lock:
            self._paths.add(path)

    def remove(self, path: Path) -> bool:
        try:
            path.unlink(missing_ok=True)
            return True
        except OSError:
            self.keep(path)
            return False

    def sweep(self) -> None:
        with self._lock:
            paths, self._paths = self._paths, set()
        for path in paths:
            self.remove(path)


LITTER = Litter()
