"""The front door of ``stemd serve --ray``: this process keeps the OSC server and the scheduler's queue and
dispatches each job to a replica of the Serve deployment (:mod:`.replica`).

There is one :class:`RemoteWorker` thread per replica slot. It takes a job from the scheduler only when
it is free (so the scheduler's priorities and client turns decide the order, never Serve's router: each
replica takes one request at a time), calls the deployment through a streaming handle and relays every
bar to the client exactly as a local worker does (the same chunks, progress, take files, sidecars and
``/stemd/done``). The job's ``should_stop`` is read between bars: a cancel, a client gone or a preemption
cancels the handle call, and the replica stops between two decoding steps.

Faults: a replica or node lost mid-take (the call fails with a Ray error) puts the job back at the head of
its priority; it runs again on another replica with the same seed, and the bars its client already has
are skipped there, so the client sees a delay and never a bar twice.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

from stemd.daemon.scheduler import Job, Scheduler
from stemd.daemon.service import Service
from stemd.daemon.worker import Worker, _Progress
from stemd.errors import StemdError
from stemd.models.base import Cancelled

log = logging.getLogger("stemd.daemon")

APP = "stemd"
#: how often one job may lose its replica before it fails (engine_error)
MAX_LOSSES = 4
MODEL_WAIT = 0.1   # seconds a request waits for the replica that holds its model (Serve's multiplexing)
LOST_PAUSE = 1.0   # seconds before a job whose replica was lost is offered again (the router learns of it)


class ClusterError(StemdError):
    code = "cluster_error"


class RemoteEngine:
    """What a take's files need of the engine that made it, as its replica told it."""

    max_seconds = float("inf")
    max_variations = 1 << 30

    def __init__(self, name: str, info: dict):
        self.name, self._info = name, info

    def info(self) -> dict:
        return self._info


class Cluster:
    """The connection to the cluster and the deployment's handle."""

    def __init__(self, address: str, entries: list, *, replicas: Optional[int], memory_budget: Optional[float],
                 pace: float, app: str = APP):
        import os

        # a request waits this long for a free replica that holds its model before taking any free one
        # (Serve's default is 1 s: the front door dispatches only when a replica is free)
        os.environ.setdefault("RAY_SERVE_MULTIPLEXED_MODEL_ID_MATCHING_TIMEOUT_S", str(MODEL_WAIT))
        import ray
        from ray import serve

        from stemd.daemon.cluster.replica import deployment
        from stemd.daemon.render.cluster import _check_reachable

        _check_reachable(address)
        try:
            ray.init(address=address, namespace="stemd", log_to_driver=True, logging_level="WARNING",
                     configure_logging=False)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise ClusterError(f"cannot reach the Ray cluster at {address}: {str(e).splitlines()[0]}") from None
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        self.replicas = replicas or gpus or 1
        if gpus and self.replicas > gpus:
            raise ClusterError(f"--ray-replicas {self.replicas}: the cluster has {gpus} GPUs (one per replica)")
        serve.start(proxy_location="Disabled")
        deployed, name = deployment(self.replicas, bool(gpus)).bind(entries, memory_budget, pace), app
        started = time.monotonic()
        self.app = name
        self.handle = serve.run(deployed, name=name, route_prefix=None)
        self.stream = self.handle.options(method_name="generate", stream=True)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        log.info("Ray cluster at %s: %d nodes (%s), %d GPUs; %d replicas of stemd-worker (application %s) ready "
                 "in %.1f s (%s)",
                 address, len(nodes), ", ".join(f"{n['NodeManagerAddress']} {n['NodeID'][:12]}" for n in nodes),
                 gpus, self.replicas, name, time.monotonic() - started,
                 "a whole GPU each" if gpus else "no GPUs: one CPU each")

    def close(self) -> None:
        from ray import serve

        try:
            serve.delete(self.app)
        except Exception as e:
            log.warning("removing the stemd-worker deployment failed: %s", e)


class RemoteWorker(Worker):
    """One replica slot: runs the scheduler's jobs on the cluster, one at a time."""

    def __init__(self, service: Service, slot: str, cluster: Cluster):
        super().__init__(service, slot)
        self.name = f"stemd-remote-{slot}"
        self.cluster = cluster

    def run_job(self, job: Job) -> None:
        import ray

        if job.cancel_reason:
            return self._stopped(job)
        request = job.request
        if request.continuation_path:
            return self.service.failed(job, "bad_arguments", "stemd serve --ray takes continuations as a blob, "
                                       "not continuation_path")
        progress = _Progress(job)
        call = self.cluster.stream.options(multiplexed_model_id=job.model).remote(job.id, job.model, request, job.spec,
                                                                                 job.bars_done)
        try:
            try:
                for kind, value in call:
                    if kind == "where":
                        self._placed(job, value)
                        continue
                    if kind == "error":
                        return self.service.failed(job, *value)
                    chunk = value
                    if chunk.index < job.bars_done:
                        continue  # (the replica skips them too)
                    self.deliver(job, job.engine, chunk, progress)   # as a local worker does
                    if job.should_stop() and job.bars_done < request.bars:
                        raise Cancelled()
            finally:
                call.cancel()   # a no-op once the replica has finished; else it stops between steps
            paths, sidecars = self._write(job)
        except Cancelled:
            return self._stopped(job)
        except OSError as e:
            return self.service.failed(job, "io_error", f"{type(e).__name__}: {e}")
        except (ray.exceptions.RayError, RuntimeError) as e:
            return self._lost(job, e)
        self.service.done(job, paths, sidecars)

    def _placed(self, job: Job, where: dict) -> None:
        job.engine = RemoteEngine(where.pop("name"), where.pop("info"))
        job.where = f"replica {where['replica']} on node {where['node'][:12]} ({where['host']}, {where['device']})"
        log.info("request %s from %s: runs on %s%s", job.id, job.client.name, job.where,
                 f", from bar {job.bars_done + 1}" if job.bars_done else "")

    def _lost(self, job: Job, error: BaseException) -> None:
        """The replica (or its node) went away mid-take: again at the head of its priority, elsewhere."""
        job.losses = getattr(job, "losses", 0) + 1
        what = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        if job.losses > MAX_LOSSES or job.cancel_reason:
            if job.cancel_reason:
                return self.service.cancelled(job, job.cancel_reason)
            return self.service.failed(job, "engine_error", f"the cluster lost this request's replica "
                                       f"{job.losses} times (last: {what})")
        log.warning("request %s from %s: lost %s after %d of %d bars (%s: %s); queued again at the head of %s",
                    job.id, job.client.name, getattr(job, "where", "its replica"), job.bars_done, job.request.bars,
                    type(error).__name__, what, job.priority)
        time.sleep(LOST_PAUSE)
        self.service.scheduler.requeue(job, first=True)


def start_workers(service: Service, cluster: Cluster) -> list:
    return [RemoteWorker(service, f"replica-slot-{i}", cluster) for i in range(cluster.replicas)]


def cluster_scheduler(service: Service, replicas: int) -> Scheduler:
    """The service's scheduler with one device per replica slot; any slot may run any model (each
    replica holds the whole pool)."""
    return Scheduler(service.settings.queue_size, devices=tuple(f"replica-slot-{i}" for i in range(replicas)))


def stop_cluster(cluster: Any) -> None:
    if cluster is not None:
        cluster.close()
