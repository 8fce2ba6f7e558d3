"""One batch on one device: engine -> conform -> bar-exact take -> loudness -> stems -> files in memory.

A :class:`BatchRenderer` holds one engine warm (and a stem separator, if the job asks for stems)
and turns a :class:`~stemd.daemon.render.job.Batch` into one :class:`TakeFiles` per variation. It
is the same object locally and inside a Ray worker; only where the files are written differs.
"""

from __future__ import annotations

import platform
import time
from typing import Optional

from stemd.daemon.takeio import spec_from_request
from stemd.daemon.render.files import TakeFiles, audio_bytes
from stemd.daemon.render.job import Batch, RenderJob
from stemd.models.base import Engine
from stemd.models.pipeline import render_take
from stemd.models.registry import load_engine
from stemd.families import check_keys
from stemd.sidecar import take_sidecar


class BatchRenderer:
    def __init__(self, job: RenderJob, engines: Optional[dict] = None):
        self.job = job
        self._engines: dict[str, Engine] = dict(engines or {})
        self._separator = None

    def engine(self, model: str) -> Engine:
        """``model``: SOURCE or NAME=SOURCE. One model warm at a time: the matrix runs model by model, so
        each loads once."""
        if model not in self._engines:
            from stemd.models.pool import parse_model_arg

            self._engines.clear()
            self._engines[model] = load_engine(parse_model_arg(model).source, device=self.job.device,
                                              dtype=self.job.dtype, backend=self.job.backend)
        return self._engines[model]

    def separator(self):
        if self._separator is None:
            from stemd.daemon.render.stems import load_separator

            self._separator = load_separator(self.job.stems_model, device=self.job.device)
        return self._separator

    def render(self, batch: Batch) -> list[TakeFiles]:
        job, request = self.job, batch.request
        engine = self.engine(batch.model)
        check_keys(request, engine.info().get("family", ""), batch.model_name,   # as the daemon's dispatch does
                   getattr(engine, "holds", None))
        started = time.perf_counter()
        conform: list = []
        audio = render_take(engine, spec_from_request(request, engine), conform=conform)  # (variations, channels, n)
        seconds = time.perf_counter() - started
        out = []
        for take in batch.takes:
            mix = audio[take.variation]
            meta = take_sidecar(request, take.variation, engine.info(), batch.model_name,
                                file=f"{take.name}.{take.extension}", sample_rate=request.sample_rate,
                                channels=int(mix.shape[0]), frames=int(mix.shape[1]), format=job.format,
                                conform=conform[take.variation] if take.variation < len(conform) else None)
            # what only a render knows, under one key: the take's key in the job, where and how fast it was made
            render = meta["render"] = {"key": take.key, "name": take.name, "source": batch.entry.source,
                                       "seconds": round(seconds, 4), "batch_variations": request.variations,
                                       "host": platform.node()}
            if job.lufs is not None:
                from stemd.daemon.render.loudness import normalise

                mix, render["loudness"] = normalise(mix, request.sample_rate, job.lufs, pcm=job.format != "float32")
            stems = {}
            if job.stems:
                separated = self.separator().separate(mix, request.sample_rate)
                stems = {name: audio_bytes(separated[name], request.sample_rate, job.format) for name in job.stems}
                render["stems_model"] = job.stems_model
            if request.guide is not None:       # the guide SMF is kept beside the take
                meta["guide"]["file"] = f"{take.name}.mid"
            out.append(TakeFiles(take.name, take.extension, audio_bytes(mix, request.sample_rate, job.format),
                                 meta, stems, guide=request.guide))
        return out

