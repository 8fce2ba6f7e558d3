"""The Ray Serve deployment of GPU workers: each replica is one device's worker with its model pool.

A replica holds a :class:`~stemd.models.pool.ModelPool` on its device (Ray gives it one GPU: ``num_gpus=1``;
``cuda`` is that GPU), loads the default model when it starts, and makes one take at a time
(``max_ongoing_requests=1``: the front door's scheduler decides the order, not Serve's router).
:meth:`StemdReplica.generate` is a streaming method: the first item says where it runs (replica,
node, host, the engine's info), then one :class:`~stemd.models.chunker.BarChunk` per bar the moment
it exists, then ``("end", None)``; a typed error is one ``("error", (code, message))``. The bars are
made on a thread through ``models.pipeline.bar_chunks`` exactly as a local worker makes them; when the
front door cancels the call, the generator's ``finally`` sets the stop flag that the engine's
``should_stop`` reads between decoding steps, so the replica stops between two steps.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from typing import Any, Optional

from ray import serve

from stemd.daemon.takeio import check_limits
from stemd.errors import StemdError
from stemd.models.base import Cancelled


UPSCALE_DELAY = 2.0     # seconds a request waits before Serve adds a replica (autoscaling)
DOWNSCALE_DELAY = 120.0  # seconds a replica idles before Serve removes it (its models go cold)


def say(line: str) -> None:
    """A replica's log line: on its stderr, which Ray forwards to the front door's log."""
    print(f"stemd replica: {line}", file=sys.stderr, flush=True)


class Views:
    """A Ray actor that holds what each replica can serve (:meth:`StemdReplica.view`), by replica id: the
    front door reads it to refuse, naming the nodes, a request that no replica can hold."""

    def __init__(self):
        self.views: dict = {}

    def put(self, replica: str, view: dict) -> None:
        self.views[replica] = view

    def all(self) -> dict:
        return dict(self.views)


def located(entries: list) -> tuple[list, dict]:
    """The entries this node has on disk, and for each other one why not (ModelNotFound's message)."""
    from stemd.models.base import ModelNotFound
    from stemd.models.pool import locate

    found, missing = [], {}
    for entry in entries:
        try:
            locate(entry.source)
            found.append(entry)
        except ModelNotFound as e:
            missing[entry.name] = str(getattr(e, "message", e))
    return found, missing


class StemdReplica:
    def __init__(self, entries: list, memory_budget: Optional[float], pace: float, views: str = ""):
        import logging

        import ray

        # the pool's own lines (loaded, evicted) on stderr, which Ray forwards to the front door's log
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("stemd replica: %(levelname)s %(message)s"))
        for name in ("stemd.models", "stemd.daemon"):
            logging.getLogger(name).addHandler(handler)
            logging.getLogger(name).setLevel(logging.INFO)

        from stemd.models.pool import ModelPool, default_budget, device_type, resolve_devices

        found, self.missing = located(entries)      # a node may lack some models: said per request
        devices = resolve_devices([], [e.source for e in found])[:1]
        device = devices[0]
        self.budget = int(memory_budget * 2 ** 30) if memory_budget else default_budget(device, 1)
        self.pool = ModelPool(found, devices, {device: self.budget}) if found else None
        self.device, self.pace = device, pace
        try:
            self.replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # (outside a Serve replica: tests of the class itself)
            self.replica = "local"
        self.node = ray.get_runtime_context().get_node_id()
        self.host = socket.gethostname()
        if self.pool is not None:
            self.pool.preload()
            if device_type(device) != "cpu" or any(s.family != "click" for s in self.pool.slots.values()):
                from stemd.models.pipeline import warm_conform

                warm_conform()
        if views:
            ray.get(ray.get_actor(views, namespace="stemd").put.remote(self.replica, self.view()))
        threads = f", torch threads {sys.modules['torch'].get_num_threads()}" if "torch" in sys.modules else ""
        say(f"replica {self.replica} on node {self.node} ({self.host}) ready: device {device}{threads}, models "
            f"{', '.join(self.pool.slots) if self.pool else '(none)'}"
            + "".join(f"; not on this node: {name}" for name in self.missing))

    def view(self) -> dict:
        """What this replica can serve: where it is, its device's budget, each model it holds or can load
        (its footprint) and each it cannot find on its node (why)."""
        slots = self.pool.slots.values() if self.pool else ()
        return {**self.where(), "budget": self.budget, "missing": dict(self.missing),
                "models": {s.name: {"weights": s.weights(), "footprint": s.footprint} for s in slots}}

    @serve.multiplexed(max_num_models_per_replica=64)
    async def _serves(self, model: str) -> str:
        """Serve's model multiplexing learns which models this replica holds, so a request goes first to a
        replica that holds its model warm; the pool itself loads and evicts."""
        return model

    def where(self) -> dict:
        return {"replica": self.replica, "node": self.node, "host": self.host, "device": self.device}

    async def generate(self, request_id: str, model: str, request: Any, spec: Any, bars_done: int):
        if serve.get_multiplexed_model_id():
            await self._serves(serve.get_multiplexed_model_id())
        loop = asyncio.get_running_loop()
        items: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        put = lambda item: loop.call_soon_threadsafe(items.put_nowait, item)  # noqa: E731
        made = [0]
        thread = threading.Thread(target=self._make, args=(model, request, spec, bars_done, stop, put, made),
                                  name=f"stemd-replica-{request_id}", daemon=True)
        started = time.monotonic()
        first = None   # seconds to the first bar made here
        thread.start()
        ended = False
        try:
            while True:
                kind, value = await items.get()
                if kind == "bar" and first is None:
                    first = time.monotonic() - started
                if kind == "end":
                    ended = True
                    return
                yield (kind, value)
                if kind == "error":
                    ended = True
                    return
        finally:
            stop.set()   # cancelled (the front door's cancel, or its client went): the engine stops between steps
            if not ended:
                await asyncio.to_thread(thread.join, 5.0)
                say(f"replica {self.replica} on node {self.node}: request {request_id} stopped after "
                    f"{made[0]} bars of {request.bars} ({time.monotonic() - started:.2f} s)")
            else:
                say(f"replica {self.replica} on node {self.node}: request {request_id} made bars "
                    f"{bars_done + 1}..{made[0]} of {request.bars} in {time.monotonic() - started:.3f} s"
                    + (f" (the first after {first:.3f} s)" if first is not None else ""))

    def _make(self, model, request, spec, bars_done, stop, put, made) -> None:
        from stemd.daemon.worker import PacedEngine
        from stemd.models.pipeline import bar_chunks

        try:
            if self.pool is None or model not in self.pool.slots:
                from stemd.models.base import ModelNotFound

                raise ModelNotFound(f"model {model} is not on node {self.node} ({self.host}): "
                                    f"{self.missing.get(model, 'not served here')}")
            engine = self.pool.acquire(model, self.device, float(request.seconds), request.variations)
            check_limits(request, engine)
            put(("where", {**self.where(), "info": engine.info(), "name": engine.name}))
            if self.pace > 0:
                engine = PacedEngine(engine, self.pace)
            made[0] = bars_done
            chunks = bar_chunks(engine, spec, should_stop=stop.is_set)
            try:
                for chunk in chunks:
                    if stop.is_set():
                        raise Cancelled()
                    if chunk.index < bars_done:
                        continue  # the front door's client has it already (a take resumed elsewhere)
                    made[0] = chunk.index + 1
                    put(("bar", chunk))
            finally:
                chunks.close()
            put(("end", None))
        except Cancelled:
            put(("end", None))
        except StemdError as e:
            put(("error", (e.code, str(getattr(e, "message", e)))))
        except Exception as e:
            put(("error", ("internal", f"{type(e).__name__}: {e}"[:300])))


def deployment(least: int, most: int, gpus: bool):
    """The deployment, one replica per GPU (a whole GPU each) or, on a cluster without GPUs, per slot:
    ``least`` of them, or between ``least`` and ``most`` scaled by Serve on the requests waiting for one."""
    options = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 1}
    count = {"num_replicas": least} if least == most else {"autoscaling_config": {
        "min_replicas": least, "initial_replicas": least, "max_replicas": most,
        "target_ongoing_requests": 1,       # one take per replica: a request waiting asks for another
        "upscale_delay_s": UPSCALE_DELAY, "downscale_delay_s": DOWNSCALE_DELAY,
        "look_back_period_s": 2, "metrics_interval_s": 1}}
    return serve.deployment(StemdReplica, name="stemd-worker", max_ongoing_requests=1, ray_actor_options=options,
                            health_check_period_s=2, health_check_timeout_s=10, **count)
