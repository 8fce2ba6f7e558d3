"""What the daemon knows: its models, its scheduler, its settings and the requests it has seen.

The server (transports) and the dispatch table (meaning) both talk to one :class:`Service`. Requests
are named by ``(client scope, request id)``: a TCP connection is one scope; UDP senders on one host
share a scope, because tools like ``oscsend`` send each message from a new port.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from stemd.daemon.scheduler import Job, Scheduler
from stemd.models.pool import ModelPool
from stemd.protocol import CANCELLED, DONE, ERROR, SIDECAR, TAKE
from stemd.takes import TakeClaims

log = logging.getLogger("stemd.daemon")

#: finished requests remembered for /stemd/status
RECENT = 1024


@dataclass
class Settings:
    out: Path
    token: str = ""
    queue_size: int = 16
    on_shutdown: str = "cancel"          # finish | cancel
    max_client_buffer: int = 64 * 1024 * 1024
    max_take_bytes: int = 1024 * 1024 * 1024
    input_root: Optional[Path] = None    # continuation_path must be inside it (None: anywhere)
    pace: float = 0.0                    # seconds the worker spends per bar at least (tests, demos)
    max_clients: int = 64                # TCP connections at once; more are told busy and closed
    max_total_buffer: int = 256 * 1024 * 1024   # replies waiting for all clients together
    stall_seconds: float = 30.0          # a client that takes none of its waiting replies this long is dropped


@dataclass(frozen=True)
class GoneClient:
    """What a finished request remembers of its client: no sockets, no buffers, nothing to send to."""

    key: tuple
    name: str
    stream = False

    def send(self, address: str, *args: Any) -> None:
        pass


class Service:
    def __init__(self, pool: ModelPool, settings: Settings):
        self.pool, self.settings = pool, settings
        self.scheduler = Scheduler(settings.queue_size, devices=tuple(pool.devices), allows=self._allows)
        self.claims = TakeClaims(settings.out)      # take numbers, claimed atomically in --out
        self.claims.index()             # listed once now: a take with a new prompt lists nothing
        self.active: dict[tuple, Job] = {}
        self.recent: OrderedDict[tuple, Job] = OrderedDict()
        self.clients: set = set()       # connected TCP clients
        self.stopping = False
        self._ending = threading.Lock()
        self.started = time.monotonic()
        self.midi: Any = None           # the controller's MidiSession (stemd serve --map)
        #: run a function on the event loop's thread (the server sets it; registry changes happen there)
        self.call_on_loop: Callable[..., None] = lambda fn, *args: fn(*args)
        #: the worker threads the server starts (None: one daemon.worker.Worker per device of the pool;
        #: stemd serve --ray: one daemon.cluster.frontdoor.RemoteWorker per replica slot)
        self.make_workers: Optional[Callable[[], list]] = None

    def _allows(self, device: str, job: Job, claim: bool) -> bool:
        return self.pool.claim(device, job.model) if claim else self.pool.allows(device, job.model)

    @property
    def info(self) -> dict:
        """The default (first) model's engine info, or what is known of it before it loads."""
        slot = self.pool.default
        if slot.engine is not None:
            return slot.engine.info()
        return {"model": slot.entry.source, "family": slot.family, "device": slot.device or "",
                "license": slot.license}

    def continuation_root(self, client: Any) -> Optional[Path]:
        """Where ``client``'s continuation_path files may be: ``--input-root`` (None: nowhere), or the
        client's own (the daemon's MIDI controller extends takes in --out)."""
        return getattr(client, "input_root", None) or self.settings.input_root

    def register(self, job: Job) -> None:
        self.active[(job.client.key, job.id)] = job

    def lookup(self, client: Any, request_id: str) -> Optional[Job]:
        key = (client.key, request_id)
        return self.active.get(key) or self.recent.get(key)

    def retire(self, job: Job) -> None:
        """A job reached done, cancelled or failed (called on the event loop)."""
        key = (job.client.key, job.id)
        if self.active.get(key) is job:
            del self.active[key]
        # remembered for /stemd/status only: let go of the audio (a continuation blob may be 64 MiB) and
        # of the client (a connection that left holds its buffers: only its name and scope are kept)
        job.spec = None
        if job.request.continuation is not None:
            job.request = dataclasses.replace(job.request, continuation=None)
        job.client = GoneClient(job.client.key, job.client.name)
        self.recent[key] = job
        self.recent.move_to_end(key)
        while len(self.recent) > RECENT:
            self.recent.popitem(last=False)

    def drop_client(self, client: Any, reason: str) -> None:
        """A client went away: cancel everything it asked for and free the worker; its finished requests
        are forgotten and the scheduler forgets its turn."""
        for job in self.scheduler.cancel_where(lambda j: j.client is client, reason):
            self.cancelled(job, reason, queued=True)
        self.scheduler.forget(client.key)
        for key in [k for k in self.recent if k[0] == client.key]:
            del self.recent[key]

    def cancel_all(self) -> None:
        """Shutdown: every queued job ends now (a running one stops between steps)."""
        for job in self.scheduler.cancel_where(lambda j: True, "shutdown"):
            self.cancelled(job, "shutdown", queued=True)

    # --- how a job ends: the one place that decides what its client hears and the log says ----------
    # (called on the event loop for queued jobs and on the worker thread for the running one). A job ends
    # once: its state, the scheduler and the service's tables are settled before its client hears the end
    # (a /stemd/status right after /stemd/done sees it done), and whatever fails while its files are
    # cleaned up, it still ends.
    def done(self, job: Job, paths: list, sidecars: list) -> None:
        """``sidecars``: each take's sidecar as written beside it, sent before its path."""
        client = job.client
        if self._end(job, "done", f"done: {', '.join(p.name for p in paths)}"):
            for v, (path, sidecar) in enumerate(zip(paths, sidecars)):
                client.send(SIDECAR, job.id, v, sidecar)
                client.send(TAKE, job.id, v, str(path))
            client.send(DONE, job.id)

    def failed(self, job: Job, code: str, message: str) -> None:
        client = job.client
        if self._end(job, "failed", "failed", error=f"{code}: {message}"):
            client.send(ERROR, job.id, code, message)

    def cancelled(self, job: Job, reason: str, queued: bool = False) -> None:
        """``reason``: ``cancel`` (the client asked: /stemd/cancelled), ``shutdown`` (/stemd/error
        shutting_down), or why the client went (it hears nothing: it is gone)."""
        client = job.client
        where = "cancelled while queued" if queued else "cancelled"
        if not self._end(job, "cancelled", where if reason == "cancel" else f"{where} ({reason})", on_loop=queued):
            return
        if reason == "cancel":
            client.send(CANCELLED, job.id)
        elif reason == "shutdown":
            client.send(ERROR, job.id, "shutting_down", "the daemon is stopping; the request was cancelled")

    def _end(self, job: Job, state: str, outcome: str, on_loop: bool = False, error: str = "") -> bool:
        """Settle ``job`` as ``state`` (False: it had ended already, nothing more is said). ``on_loop``:
        called on the event loop (a queued job), so the service forgets it at once."""
        with self._ending:
            if job.ended:
                return False
            job.ended, job.state = True, state
            job.error = error or job.error
        job.finished_at = time.monotonic()
        if job.takes is not None:     # cancelled or failed mid-take: nothing half-written stays
            takes, job.takes = job.takes, None
            try:
                takes.abort()
            except Exception as e:    # (abort removes what it can and keeps the rest for later)
                log.warning("request %s: cleaning up its files failed: %s: %s", job.id, type(e).__name__, e)
        self.scheduler.finished(job)
        log_request(job, outcome)
        if on_loop:
            self.retire(job)
        else:
            self.call_on_loop(self.retire, job)
        return True


def log_request(job: Job, outcome: str) -> None:
    """The producer-readable line: who, what, how long to first bar, how long in all."""
    r = job.request
    end = job.finished_at or time.monotonic()
    first = f"{(job.first_bar_at - job.received) * 1000:.0f} ms" if job.first_bar_at else "-"
    what = (f"model {job.model or '-'}, {r.bars} bars {r.bpm} BPM {r.meter} at bar {r.start_bar + 1}, {r.variations} var, "
            f"{r.sample_rate} Hz {r.channels} ch, {r.priority}, seed {r.seed}, prompt {r.prompt[:60]!r}")
    extra = f", preempted {job.preemptions}x" if job.preemptions else ""
    error = f" ({job.error})" if job.error else ""
    log.info("request %s from %s: %s -> %s%s; first bar %s, total %.0f ms%s",
             job.id, job.client.name, what, outcome, error, first, (end - job.received) * 1000, extra)
