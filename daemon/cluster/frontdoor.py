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
import threading
import time
from typing import Any, Optional

from stemd.daemon.scheduler import Job, Scheduler
from stemd.daemon.service import Service
from stemd.daemon.worker import Worker, _Progress
from stemd.errors import StemdError
from stemd.models.base import Cancelled
from stemd.models.memory import gib
from stemd.protocol import ProtocolError

log = logging.getLogger("stemd.daemon")

APP = "stemd"
#: how often one job may lose its replica before it fails (engine_error)
MAX_LOSSES = 4
MODEL_WAIT = 0.1   # seconds a request waits for the replica that holds its model (Serve's multiplexing)
VIEWS_TTL = 2.0    # seconds the replicas' views and Serve's replica count are reused
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


def parse_replicas(text: Optional[str]) -> Optional[tuple[int, int]]:
    """``--ray-replicas N`` (that many) or ``MIN:MAX`` (Serve scales between them); None: not given."""
    if text is None:
        return None
    parts = str(text).split(":")
    try:
        low, high = int(parts[0]), int(parts[-1])
        if len(parts) > 2:
            raise ValueError(text)
    except ValueError:
        raise ClusterError(f"--ray-replicas wants N or MIN:MAX (whole numbers), got {text!r}") from None
    if low < 1 or high < low:
        raise ClusterError(f"--ray-replicas {text}: at least 1, and MIN no more than MAX")
    return low, high


class Cluster:
    """The connection to the cluster, the deployment's handle, and what each replica can serve."""

    def __init__(self, address: str, entries: list, *, replicas: Optional[tuple[int, int]],
                 memory_budget: Optional[float], pace: float, app: str = APP):
        import os

        # a request waits this long for a free replica that holds its model before taking any free one
        # (Serve's default is 1 s: the front door dispatches only when a replica is free)
        os.environ.setdefault("RAY_SERVE_MULTIPLEXED_MODEL_ID_MATCHING_TIMEOUT_S", str(MODEL_WAIT))
        # every replica line in this log as it was said (Ray folds lines alike but for numbers by default)
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        import ray
        from ray import serve

        from stemd.daemon.cluster.replica import Views, deployment
        from stemd.daemon.render.cluster import _check_reachable

        _check_reachable(address)
        try:
            ray.init(address=address, namespace="stemd", log_to_driver=True, logging_level="WARNING",
                     configure_logging=False)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise ClusterError(f"cannot reach the Ray cluster at {address}: {str(e).splitlines()[0]}") from None
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        self.least, self.replicas = replicas or (gpus or 1, gpus or 1)   # (replicas: the front door's slots)
        if gpus and self.replicas > gpus:
            raise ClusterError(f"--ray-replicas {self.replicas}: the cluster has {gpus} GPUs (one per replica)")
        self.app = app
        # each replica tells this actor what it can serve (its node, budget, models found and not)
        self._views_actor = ray.remote(num_cpus=0)(Views).options(name=f"{app}-views", namespace="stemd",
                                                                  get_if_exists=True).remote()
        self._views: list = []
        self._views_at = -VIEWS_TTL
        self._running = self.least
        self._closed = threading.Event()
        serve.start(proxy_location="Disabled")
        deployed = deployment(self.least, self.replicas, bool(gpus)).bind(entries, memory_budget, pace,
                                                                           f"{app}-views")
        started = time.monotonic()
        self.handle = serve.run(deployed, name=app, route_prefix=None)
        self.stream = self.handle.options(method_name="generate", stream=True)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        scale = (f"{self.least} to {self.replicas} replicas (Serve scales them by the requests waiting)"
                 if self.least < self.replicas else f"{self.replicas} replicas")
        log.info("Ray cluster at %s: %d nodes (%s), %d GPUs; %s of stemd-worker (application %s) ready "
                 "in %.1f s (%s)",
                 address, len(nodes), ", ".join(f"{n['NodeManagerAddress']} {n['NodeID'][:12]}" for n in nodes),
                 gpus, scale, app, time.monotonic() - started, "a whole GPU each" if gpus else "no GPUs: one CPU each")
        for view in self.views():
            if view["missing"]:
                log.warning("replica %s on node %s (%s) cannot find model%s %s", view["replica"], view["node"][:12],
                            view["host"], "s" if len(view["missing"]) > 1 else "", ", ".join(view["missing"]))

    # --- what the replicas can serve (the event loop, at admission) --------------------------------
    def views(self) -> list:
        """What each replica on a live node can serve (``replica.StemdReplica.view``), at most VIEWS_TTL old."""
        import ray

        if time.monotonic() - self._views_at >= VIEWS_TTL:
            try:
                views = ray.get(self._views_actor.all.remote(), timeout=5)
                alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
            except (ray.exceptions.RayError, RuntimeError) as e:
                log.warning("asking the replicas what they serve failed: %s", str(e).splitlines()[0][:200])
                return self._views
            self._views, self._views_at = [v for v in views.values() if v["node"] in alive], time.monotonic()
        return self._views

    def check(self, pool, name: str, seconds: float, variations: int, request_id: str = ""):
        """The model's slot if some replica can hold the request; else ``model_not_found`` (no replica's
        node has the model) or ``too_large`` (no replica's memory budget holds it), naming the nodes."""
        slot = pool.slot(name, request_id)
        views = self.views()
        if not views:                   # (not heard from the replicas: the one that runs it will say)
            return slot
        holding = [v for v in views if slot.name in v["models"]]
        if not holding:
            why = {v["node"]: f"node {v['node'][:12]} ({v['host']}): {v['missing'].get(slot.name, 'not served')}"
                   for v in views}
            raise ProtocolError("model_not_found", f"model {slot.name} is on no node that runs a replica: "
                                + "; ".join(why.values()), request_id)
        needs = {}
        for v in holding:
            model = v["models"][slot.name]
            needs[v["node"], v["device"]] = (model["weights"] + model["footprint"].request(seconds, variations), v)
        if all(need > v["budget"] for need, v in needs.values()):
            budgets = "; ".join(f"node {v['node'][:12]} ({v['host']}, {v['device']}) {gib(v['budget'])}"
                                for _, v in needs.values())
            plural = "s" if variations != 1 else ""
            raise ProtocolError("too_large", f"model {slot.name} needs about {gib(min(n for n, _ in needs.values()))} "
                                f"for {variations} variation{plural} of {seconds:.1f} s, more than the memory budget "
                                f"of any replica: {budgets} (fewer variations or bars)", request_id)
        return slot

    # --- how many calls may be out (RemoteWorker) --------------------------------------------------
    def running(self) -> int:
        """Replicas running now, as the watcher last read Serve's status (the scheduler asks under its lock:
        no call to Serve here); the fixed count without autoscaling."""
        return self.replicas if self.least == self.replicas else self._running

    def _read_running(self) -> int:
        from ray import serve

        try:
            states = serve.status().applications[self.app].deployments["stemd-worker"].replica_states
            return max(1, int(states.get("RUNNING", 0)))
        except Exception as e:   # (Serve's controller busy: the last count stands)
            log.debug("serve.status failed: %s", e)
            return self._running

    def watch(self, wake) -> None:
        """With autoscaling: read Serve's replica count every VIEWS_TTL seconds and call ``wake`` (the
        scheduler's) when it changes, so a slot that opens takes work at once."""
        if self.least == self.replicas:
            return

        def loop() -> None:
            while not self._closed.wait(VIEWS_TTL):
                count = self._read_running()
                if count != self._running:
                    self._running = count
                    log.info("stemd-worker runs %d replicas now (%d to %d)", count, self.least, self.replicas)
                    wake()

        threading.Thread(target=loop, name="stemd-cluster-watch", daemon=True).start()

    def close(self) -> None:
        self._closed.set()
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
                        if job.should_stop():     # preempted or cancelled while it waited for a replica
                            raise Cancelled()
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


def attach(service: Service, cluster: Cluster) -> None:
    """The service's scheduler with one device per replica slot (any slot may run any model: each replica
    holds the whole pool), its workers the slots, its admission the replicas' views."""
    slots = tuple(f"replica-slot-{i}" for i in range(cluster.replicas))
    service.scheduler = Scheduler(service.settings.queue_size, devices=slots,
                                  allows=lambda device, job, claim: slots.index(device) <= cluster.running())
    service.make_workers = lambda: [RemoteWorker(service, slot, cluster) for slot in slots]
    pool = service.pool
    service.pool.check = lambda name, seconds, variations, request_id="": cluster.check(pool, name, seconds,
                                                                                         variations, request_id)
    cluster.watch(service.scheduler.wake)


def stop_cluster(cluster: Any) -> None:
    if cluster is not None:
        cluster.close()
