"""A job on a Ray cluster (``stemd render --ray ADDRESS``): one worker per free GPU, files gathered here.

Each Ray actor holds a :class:`BatchRenderer` (the engine warm on its GPU) and returns a batch's
files as bytes; this process writes them and the manifest, so workers need no shared disk, only
stemd installed (``pip install 'stemd[daemon,cluster]'``). On a cluster without GPUs there is one
worker per free CPU (or ``--ray-workers``). Ray is imported only here.

Beside live serving (``stemd serve --ray`` on the same cluster): each worker asks Ray for a whole GPU,
as each live replica does, so Ray never puts a render worker on a GPU a replica holds; and the render
plans its workers on the GPUs free when it starts (Ray's available resources), never more, so none waits
for a GPU a replica holds while its batches wait with it. With no GPU free, one worker waits for the first
that frees.
"""

from __future__ import annotations

import sys
from typing import Callable, Optional

from stemd.daemon.render.files import TakeFiles
from stemd.daemon.render.job import Batch, RenderJob, JobError


class _Worker:
    """The actor: one engine, held warm, rendering whatever batch it is given."""

    def __init__(self, job: RenderJob):
        import ray

        from stemd.daemon.render.worker import BatchRenderer

        self.renderer = BatchRenderer(job)
        self.node = ray.get_runtime_context().get_node_id()

    def render(self, batch: Batch) -> tuple[str, list[TakeFiles]]:
        return self.node, self.renderer.render(batch)


def worker_plan(resources: dict, workers: Optional[int], free: Optional[dict] = None) -> tuple[int, dict]:
    """How many actors and what each one asks of Ray: a whole GPU each if the cluster has GPUs, as many
    as are ``free`` now (Ray's available resources: those live replicas hold are not), at least one."""
    free = resources if free is None else free
    gpus = int(resources.get("GPU", 0))
    if gpus:
        room = max(1, int(free.get("GPU", 0)))
        return (min(workers, room) if workers else room), {"num_gpus": 1, "num_cpus": 1}
    return (workers or max(1, int(free.get("CPU", 1)))), {"num_cpus": 1}


def render_on_ray(job: RenderJob, batches: list[Batch], address: str, gather: Callable[[list[TakeFiles]], None],
                  *, workers: Optional[int] = None) -> None:
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise JobError("--ray needs Ray: pip install 'stemd[cluster]'") from None
    if not batches:
        return
    _check_reachable(address)
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR", configure_logging=False)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise JobError(f"cannot reach the Ray cluster at {address}: {str(e).splitlines()[0]}") from None
    try:
        total, free = ray.cluster_resources(), ray.available_resources()
        count, options = worker_plan(total, workers, free)
        if total.get("GPU"):
            held = int(total["GPU"]) - int(free.get("GPU", 0))
            wait = ": the render waits for a GPU to free" if held >= total["GPU"] else ""
            say(f"{min(count, len(batches))} workers on the cluster's {int(total['GPU'])} GPUs, {held} of them held "
                f"(live replicas, other jobs){wait}")
        actor = ray.remote(**options)(_Worker)
        pool = ActorPool([actor.remote(job) for _ in range(min(count, len(batches)))])
        nodes: dict = {}
        for node, files in pool.map_unordered(lambda a, b: a.render.remote(b), batches):
            nodes[node] = nodes.get(node, 0) + 1
            gather(files)
        say("batches made on " + ", ".join(f"node {n[:12]} ({c})" for n, c in sorted(nodes.items())))
    except ray.exceptions.RayError as e:
        raise JobError(f"a Ray worker failed: {str(e).strip().splitlines()[-1]}") from None
    finally:
        ray.shutdown()


def say(line: str) -> None:
    print(f"stemd render: {line}", file=sys.stderr, flush=True)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a head that is not listening (Ray itself retries for minutes)."""
    import socket

    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise JobError(f"--ray wants host:port of the cluster's head (or 'auto'), got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise JobError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}") from None
