"""A job on a Ray cluster (``stemd render --ray ADDRESS``): one worker per GPU, files gathered here.

Each Ray actor holds a :class:`BatchRenderer` (the engine warm on its GPU) and returns a batch's
files as bytes; this process writes them and the manifest, so workers need no shared disk, only
stemd installed (``pip install 'stemd[daemon,cluster]'``). On a cluster without GPUs there is one
worker per CPU (or ``--ray-workers``). Ray is imported only here.
"""

from __future__ import annotations

from typing import Callable, Optional

from stemd.daemon.render.files import TakeFiles
from stemd.daemon.render.job import Batch, RenderJob, JobError


class _Worker:
    """The actor: one engine, held warm, rendering whatever batch it is given."""

    def __init__(self, job: RenderJob):
        from stemd.daemon.render.worker import BatchRenderer

        self.renderer = BatchRenderer(job)

    def render(self, batch: Batch) -> list[TakeFiles]:
        return self.renderer.render(batch)


def worker_plan(resources: dict, workers: Optional[int]) -> tuple[int, dict]:
    """How many actors and what each one asks of Ray: a whole GPU each if the cluster has GPUs."""
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return (min(workers, gpus) if workers else gpus), {"num_gpus": 1, "num_cpus": 1}
    return (workers or max(1, int(resources.get("CPU", 1)))), {"num_cpus": 1}


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
        count, options = worker_plan(ray.cluster_resources(), workers)
        actor = ray.remote(**options)(_Worker)
        pool = ActorPool([actor.remote(job) for _ in range(min(count, len(batches)))])
        for files in pool.map_unordered(lambda a, b: a.render.remote(b), batches):
            gather(files)
    except ray.exceptions.RayError as e:
        raise JobError(f"a Ray worker failed: {str(e).strip().splitlines()[-1]}") from None
    finally:
        ray.shutdown()


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
