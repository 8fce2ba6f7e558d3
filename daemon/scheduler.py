"""The queue in front of the workers (one per device): live before offline, round-robin between clients, bounded.

A :class:`Job` is one accepted ``/stemd/generate``. :meth:`Scheduler.next_job` blocks a worker until
there is work it may run and hands out jobs in this order: every queued live job before any offline
one; within a priority, clients take turns (the client served least recently goes first), and each
client's own jobs run in the order it sent them. Jobs for every model share the one queue, so the
turns hold across models. Which device may run a job is the model pool's say (``allows``: where the
model is pinned or loaded, else any device it fits), asked under the queue's lock so that two workers
never claim one model for two devices. The queue holds at most ``capacity`` waiting jobs: past that,
:meth:`submit` refuses with ``busy``.

Cancel and preemption are flags on the job that the worker's ``should_stop`` reads between decoding
steps. A live job that arrives while every device that may run it is busy with an offline job asks
one of them to yield; the worker then puts the preempted job back at the head of its client's queue
(:meth:`requeue`), and it resumes later (see :mod:`stemd.daemon.worker`).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from stemd.protocol import PRIORITIES, GenerateRequest, ProtocolError

_seq = itertools.count(1)


@dataclass(eq=False)
class Job:
    request: GenerateRequest
    client: Any                       # a daemon.server client: .key, .name, .send(...)
    spec: Any = None                  # models.base.GenerationSpec, built when accepted
    seq: int = field(default_factory=lambda: next(_seq))
    received: float = field(default_factory=time.monotonic)
    state: str = "queued"             # queued | running | done | cancelled | failed
    cancel_reason: str = ""           # "" while not cancelled; else cancel | disconnect | shutdown
    preempt: bool = False             # a live job is waiting: yield between steps
    preemptions: int = 0
    bars_done: int = 0                # bars already delivered to the client (kept across preemption)
    takes: Any = None                 # takeio.TakeStream: the delivered bars on disk (kept across preemption)
    model: str = ""                   # the pool's name for the model that makes it (set when accepted)
    device: str = ""                  # where it runs (set when a worker takes it)
    first_bar_at: Optional[float] = None
    finished_at: Optional[float] = None
    error: str = ""
    where: str = ""                   # stemd serve --ray: the replica and node that runs (or ran) it
    ended: bool = False               # its end (done, cancelled or failed) was settled: it ends once

    @property
    def id(self) -> str:
        return self.request.request_id

    @property
    def priority(self) -> str:
        return self.request.priority

    def should_stop(self) -> bool:
        return bool(self.cancel_reason) or self.preempt


#: ``allows(device, job, claim)``: may ``device``'s worker run ``job``? ``claim``: it is taking it now
Allows = Callable[[str, Job, bool], bool]


class Scheduler:
    def __init__(self, capacity: int = 16, devices: tuple = ("",), allows: Optional[Allows] = None):
        self.capacity = capacity
        self.devices = tuple(devices)
        self.allows: Allows = allows or (lambda device, job, claim: True)
        self._cond = threading.Condition()
        #: priority -> client key -> deque of that client's waiting jobs
        self._queues: dict[str, dict[Any, deque]] = {p: {} for p in PRIORITIES}
        self.running_on: dict[str, Job] = {}   # device -> the job its worker runs
        self._closed = False
        self._served: dict[Any, int] = {}  # client key -> the turn it was last served on
        self._turn = 0

    @property
    def running(self) -> Optional[Job]:
        """A running job (the first device's, when several run)."""
        jobs = self.running_jobs()
        return jobs[0] if jobs else None

    def running_jobs(self) -> list[Job]:
        with self._cond:
            return [self.running_on[d] for d in self.devices if d in self.running_on]

    # --- producers (the event loop) -----------------------------------------------------------
    def submit(self, job: Job, on_accept: Optional[Callable[[], None]] = None) -> None:
        """Queue ``job``; ``on_accept`` runs under the lock, before a worker can see the job."""
        with self._cond:
            if self._closed:
                raise ProtocolError("shutting_down", "the daemon is stopping and accepts no new work", job.id)
            if self.queued_count() >= self.capacity:
                raise ProtocolError("busy", f"the queue is full ({self.capacity} waiting); try again later", job.id)
            self._queues[job.priority].setdefault(job.client.key, deque()).append(job)
            if on_accept is not None:
                on_accept()
            if job.priority == "live":
                self._preempt_for(job)
            self._cond.notify_all()

    def _preempt_for(self, job: Job) -> None:
        """A live job: if no idle device may run it, one that runs an offline job yields."""
        able = [d for d in self.devices if self.allows(d, job, False)]
        if any(d not in self.running_on for d in able):
            return
        for device in able:
            running = self.running_on[device]
            if running.priority == "offline":
                running.preempt = True
                return

    def requeue(self, job: Job, first: bool = False) -> None:
        """Put a preempted job back at the head of its client's queue (it does not count against capacity);
        ``first``: at the head of its priority too (a job whose cluster replica was lost)."""
        with self._cond:
            job.preempt, job.state = False, "queued"
            if first:
                self._served[job.client.key] = min(-1, *self._served.values()) - 1   # (never served: -1)
            queue = self._queues[job.priority].setdefault(job.client.key, deque())
            queue.appendleft(job)
            self._cond.notify_all()

    def cancel(self, job: Job, reason: str) -> bool:
        """Flag ``job`` cancelled; True when it was still queued (and is now removed)."""
        with self._cond:
            if not job.cancel_reason:
                job.cancel_reason = reason
            queue = self._queues[job.priority].get(job.client.key)
            if queue is not None and job in queue:
                queue.remove(job)
                if not queue:
                    del self._queues[job.priority][job.client.key]
                job.state = "cancelled"
                self._cond.notify_all()
                return True
            return False

    def cancel_where(self, predicate: Callable[[Job], bool], reason: str) -> list[Job]:
        """Cancel every queued or running job matching ``predicate``; returns the ones removed from the queue."""
        with self._cond:
            removed = [j for qs in self._queues.values() for q in qs.values() for j in q if predicate(j)]
            for job in removed:
                self.cancel(job, reason)
            for running in self.running_on.values():
                if predicate(running) and not running.cancel_reason:
                    running.cancel_reason = reason
            return removed

    def close(self) -> None:
        """Refuse new work; the workers drain what is queued, then :meth:`next_job` returns None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # --- the consumers (one worker thread per device) -----------------------------------------
    def next_job(self, timeout: Optional[float] = None, device: Optional[str] = None) -> Optional[Job]:
        """The next job ``device``'s worker may run (None: the first device)."""
        device = self.devices[0] if device is None else device
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                job = self._pop(device)
                if job is not None:
                    job.state, job.device = "running", device
                    self.running_on[device] = job
                    if job.priority == "offline" and self._has_live(device):
                        job.preempt = True
                    return job
                if self._closed and not self._waiting_for(device):
                    return None
                wait = None if deadline is None else deadline - time.monotonic()
                if wait is not None and wait <= 0:
                    return None
                self._cond.wait(wait)

    def wake(self) -> None:
        """What a worker may run changed outside the queue (``allows`` says otherwise now): look again."""
        with self._cond:
            self._cond.notify_all()

    def forget(self, client_key: Any) -> None:
        """A client left: its turn in the fairness order is forgotten."""
        with self._cond:
            self._served.pop(client_key, None)

    def finished(self, job: Job, device: Optional[str] = None) -> None:
        """``device``'s worker is done with ``job`` (None: the device the job last ran on). Only that
        device's entry goes: a job re-queued and taken at once by another worker keeps its new one."""
        device = job.device if device is None else device
        with self._cond:
            if self.running_on.get(device) is job:
                del self.running_on[device]
            self._cond.notify_all()

    def _pop(self, device: Optional[str]) -> Optional[Job]:
        """The next job in turn that ``device`` may run, claimed for it (None: any device, claiming
        nothing: the dry run of :meth:`position`)."""
        for priority in PRIORITIES:
            clients = self._queues[priority]
            firsts = {}
            for key, queue in clients.items():
                job = next((j for j in queue if device is None or self.allows(device, j, False)), None)
                if job is not None:
                    firsts[key] = job
            if not firsts:
                continue
            # the client served least recently goes first; among never-served ones, who asked first
            key = min(firsts, key=lambda k: (self._served.get(k, -1), clients[k][0].seq))
            job = firsts[key]
            if device is not None and not self.allows(device, job, True):
                continue
            clients[key].remove(job)
            if not clients[key]:
                del clients[key]
            self._turn += 1
            self._served[key] = self._turn
            return job
        return None

    def _has_live(self, device: str) -> bool:
        return any(self.allows(device, j, False) for q in self._queues["live"].values() for j in q)

    def _waiting_for(self, device: str) -> bool:
        return any(self.allows(device, j, False) for qs in self._queues.values() for q in qs.values() for j in q)

    # --- views --------------------------------------------------------------------------------
    def queued_count(self) -> int:
        with self._cond:
            return sum(len(q) for qs in self._queues.values() for q in qs.values())

    def position(self, job: Job) -> int:
        """0-based place in the order jobs would be handed out (all devices together), or -1 when not queued."""
        with self._cond:
            order = self._order()
        return order.index(job) if job in order else -1

    def _order(self) -> list[Job]:
        """The queued jobs in the order :meth:`_pop` would hand them out (a dry run)."""
        saved = ({p: {k: deque(q) for k, q in qs.items()} for p, qs in self._queues.items()},
                 dict(self._served), self._turn)
        order = []
        while (job := self._pop(None)) is not None:
            order.append(job)
        self._queues, self._served, self._turn = saved
        return order
