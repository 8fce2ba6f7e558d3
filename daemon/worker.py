"""One thread per device: it owns that device's models and runs one job at a time on it.

It takes the jobs the scheduler lets it run, gets the job's model from the pool (loaded if need be,
evicting the least recently used ones to make room) and runs each through ``models.pipeline.bar_chunks`` with a
``should_stop`` that reads the job's cancel and preempt flags, so a cancel or a waiting live request
is noticed between decoding steps. Each bar leaves the moment it exists, unless the client's replies
(or all clients' together) are at their limit: then the worker waits between bars while the client
reads (``wait_for_room``; a client that takes nothing for a while is dropped by the server, and a
cancel or a preemption ends the wait). When the last bar is in, the take is written to disk first,
then ``/stemd/sidecar`` and ``/stemd/take`` for each variation and ``/stemd/done`` go out.

Out of memory: a job whose allocation fails anyway ends with ``engine_error`` naming it; the engine's
caches are reset and the device's cached memory released, so the next request allocates afresh.

Preemption: a preempted offline job keeps the bars it already delivered and goes back to the head of
its client's queue. When it runs again, the engine starts the take over with the same seed and the
bars already delivered are not sent again (the engine repeats their work; deterministic engines make
the same audio, so the take is seamless).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np

from stemd.daemon.takeio import LITTER, TakeStream, check_limits, spec_from_request
from stemd.daemon.scheduler import Job
from stemd.daemon.service import Service
from stemd.errors import StemdError
from stemd.models.base import AudioStream, Cancelled, Engine, GenerationSpec, is_out_of_memory, never_stop, no_progress
from stemd.models.memory import gib
from stemd.models.pipeline import bar_chunks
from stemd.protocol import PROGRESS, Chunk

log = logging.getLogger("stemd.daemon")

PROGRESS_INTERVAL = 0.25  # seconds between progress messages from inside a bar


class Worker(threading.Thread):
    def __init__(self, service: Service, device: str):
        super().__init__(name=f"stemd-worker-{device}", daemon=True)
        self.service, self.device = service, device

    def engine_for(self, job: Job) -> Engine:
        """The job's model on this device (loaded and room made if need be); paced under --pace."""
        request = job.request
        engine = self.service.pool.acquire(job.model, self.device, float(request.seconds), request.variations)
        return PacedEngine(engine, self.service.settings.pace) if self.service.settings.pace > 0 else engine

    def run(self) -> None:
        scheduler = self.service.scheduler
        while True:
            job = scheduler.next_job(device=self.device)
            if job is None:
                return
            try:
                self.run_job(job)
            except Exception as e:  # never let one request take the worker down, nor stay unended
                log.exception("worker failed on %s", job.id)
                if job.state == "running":
                    self.service.failed(job, "internal", f"{type(e).__name__}: {e}"[:300])
            finally:
                scheduler.finished(job, self.device)
                LITTER.sweep()      # what an earlier take could not remove on a full disk

    def run_job(self, job: Job) -> None:
        if job.cancel_reason:
            return self._stopped(job)
        client, request = job.client, job.request
        try:
            engine = self.engine_for(job)
            check_limits(request, engine)
            spec = job.spec
            if request.continuation_path:
                spec = spec_from_request(request, engine, self.service.continuation_root(client))
            progress = _Progress(job)
            chunks = bar_chunks(engine, spec, should_stop=job.should_stop, on_progress=progress)
            try:
                for chunk in chunks:
                    if chunk.index < job.bars_done:
                        continue  # delivered before this job was preempted
                    self.deliver(job, engine, chunk, progress)
                    if job.cancel_reason and job.bars_done < request.bars:
                        raise Cancelled()  # (a take whose last bar exists is written even if its client left)
            finally:
                chunks.close()
            paths, sidecars = self._write(job)
        except Cancelled:
            return self._stopped(job)
        except StemdError as e:
            return self.service.failed(job, e.code, str(getattr(e, "message", e)))
        except OSError as e:
            return self.service.failed(job, "io_error", f"{type(e).__name__}: {e}")
        except Exception as e:
            if is_out_of_memory(e):
                return self._out_of_memory(job, e)
            log.exception("engine failed on %s", job.id)
            return self.service.failed(job, "internal", f"{type(e).__name__}: {e}"[:300])
        self.service.done(job, paths, sidecars)

    def deliver(self, job: Job, engine: Engine, chunk, progress: "_Progress") -> None:
        """One new bar (a ``models.chunker.BarChunk``): onto the take's files, then to the client as
        ``/stemd/chunk`` (waiting while its replies are at their limit), then its progress."""
        client, request = job.client, job.request
        if job.takes is None:
            job.takes = TakeStream(self.service.claims, request, engine, chunk.variations, chunk.channels,
                                   model_name=job.model)
        job.takes.write(chunk.audio)
        job.takes.conform = chunk.conform or job.takes.conform
        job.bars_done = chunk.index + 1
        job.first_bar_at = job.first_bar_at or time.monotonic()
        if client.stream and request.chunks:
            wait = getattr(client, "wait_for_room", None)
            if wait is not None:     # backpressure: a slow reader is waited for, not dropped
                wait(chunk.audio.nbytes, job.should_stop)
            for v in range(chunk.variations):
                bar = Chunk(job.id, v, chunk.index, chunk.start_sample, chunk.sample_rate, chunk.channels,
                            chunk.audio[v])
                for address, args in bar.messages(request.max_message):
                    client.send(address, *args)
        progress.bar_done()

    def _out_of_memory(self, job: Job, error: BaseException) -> None:
        pool, request = self.service.pool, job.request
        slot = pool.slot(job.model)
        estimate = slot.footprint.request(float(request.seconds), request.variations)
        log.warning("request %s from %s: out of memory on %s with model %s (%s); resetting its caches",
                    job.id, job.client.name, self.device, slot.name, str(error).splitlines()[0][:200] if str(error)
                    else type(error).__name__)
        try:
            pool.recover(job.model, self.device)
        except Exception:
            log.exception("resetting model %s after out-of-memory failed", slot.name)
        self.service.failed(job, "engine_error", f"out of memory on {self.device} making {request.variations} "
                            f"variation{'s' if request.variations != 1 else ''} of {request.bars} bars with model "
                            f"{slot.name} (estimated {gib(estimate)} beside its weights; the budget there is "
                            f"{gib(pool.budgets[self.device])}): the model's caches were reset; fewer variations "
                            "or bars will fit")

    def _write(self, job: Job) -> tuple[list[Path], list]:
        """The take's files under their final names, and its sidecars; Cancelled when not all its bars
        came. Until they are written, the job keeps its stream, so a failure here (a full disk) ends the
        job with its partial files removed."""
        if job.bars_done < job.request.bars:
            raise Cancelled()
        takes = job.takes
        paths = takes.finish()
        job.takes = None
        return paths, takes.sidecars

    def _stopped(self, job: Job) -> None:
        reason = job.cancel_reason
        if not reason and job.preempt:
            job.preemptions += 1
            log.info("request %s from %s: preempted by a live request after %d bars", job.id, job.client.name,
                     job.bars_done)
            self.service.scheduler.requeue(job)
            return
        if not reason:  # nobody asked it to stop: the engine gave up
            return self.service.failed(job, "engine_error", f"the engine stopped after {job.bars_done} of "
                                       f"{job.request.bars} bars")
        self.service.cancelled(job, reason)


class _Progress:
    """``/stemd/progress <id> <fraction> <bars_done>``: after every bar, and inside long bars at most 4 per s."""

    def __init__(self, job: Job):
        self.job, self.fraction, self.last = job, job.bars_done / job.request.bars, time.monotonic()

    def __call__(self, fraction: float) -> None:
        fraction = max(self.fraction, min(1.0, float(fraction)))
        now = time.monotonic()
        if fraction > self.fraction and now - self.last >= PROGRESS_INTERVAL:
            self.fraction, self.last = fraction, now
            self.job.client.send(PROGRESS, self.job.id, fraction, self.job.bars_done)

    def bar_done(self) -> None:
        self.fraction = max(self.fraction, self.job.bars_done / self.job.request.bars)
        self.last = time.monotonic()
        self.job.client.send(PROGRESS, self.job.id, self.fraction, self.job.bars_done)


class PacedEngine(Engine):
    """An engine that takes at least ``seconds`` per block, in 10 ms steps that check ``should_stop``.

    ``stemd serve --pace`` uses it to make a fast engine (click) behave like a model on a slow device:
    for demos, and for tests of cancel and preemption that need a take to last a while.
    """

    STEP = 0.01

    def __init__(self, inner: Engine, seconds: float):
        self.inner, self.seconds = inner, seconds
        self.name, self.max_seconds, self.max_variations = inner.name, inner.max_seconds, inner.max_variations

    def info(self) -> dict:
        return self.inner.info()

    def stream(self, spec: GenerationSpec, *, should_stop=never_stop, on_progress=no_progress) -> AudioStream:
        stream = self.inner.stream(spec, should_stop=should_stop, on_progress=on_progress)
        return dataclasses.replace(stream, blocks=self._paced(stream.blocks, should_stop))

    def _paced(self, blocks: Iterator[np.ndarray], should_stop) -> Iterator[np.ndarray]:
        try:
            for block in blocks:
                deadline = time.monotonic() + self.seconds
                while time.monotonic() < deadline:
                    if should_stop():
                        raise Cancelled()
                    time.sleep(min(self.STEP, max(0.0, deadline - time.monotonic())))
                yield block
        finally:
            close = getattr(blocks, "close", None)
            if close:
                close()
