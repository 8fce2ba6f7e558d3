"""stemd serve --ray --ray-replicas MIN:MAX: Serve adds a replica while a request waits for one, up to MAX,
and the front door's order still decides which request runs next. A local two-node cluster
(``ray.cluster_utils.Cluster``, one logical GPU each), click model paced to last a while.

Scaling back down (after DOWNSCALE_DELAY idle seconds, two minutes) is left to Serve and not waited for here."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from stemd.daemon.cluster.frontdoor import ClusterError, parse_replicas

sys.path.insert(0, str(Path(__file__).parent))
from daemon_fixtures import TcpClient  # noqa: E402
from test_cluster_serve import SlowStart, chunks, request  # noqa: E402


def test_replicas_are_a_count_or_a_range():
    assert parse_replicas(None) is None
    assert parse_replicas("3") == (3, 3)
    assert parse_replicas("1:4") == (1, 4)
    for bad in ("0", "2:1", "one", "1:", "1:2:3", "-1:2"):
        with pytest.raises(ClusterError, match="--ray-replicas"):
            parse_replicas(bad)


def test_a_render_plans_its_workers_on_the_free_gpus_only():
    from stemd.daemon.render.cluster import worker_plan

    gpu = {"num_gpus": 1, "num_cpus": 1}
    assert worker_plan({"GPU": 4.0, "CPU": 8.0}, None, {"GPU": 1.0, "CPU": 4.0}) == (1, gpu)  # 3 held by replicas
    assert worker_plan({"GPU": 4.0, "CPU": 8.0}, 3, {"GPU": 2.0, "CPU": 4.0}) == (2, gpu)
    assert worker_plan({"GPU": 2.0, "CPU": 8.0}, None, {"CPU": 4.0}) == (1, gpu)    # none free: one waits
    assert worker_plan({"CPU": 8.0}, None, {"CPU": 5.0}) == (5, {"num_cpus": 1})


def test_with_autoscaling_one_call_more_than_the_replicas_running_goes_out():
    from types import SimpleNamespace

    from stemd.daemon.cluster.frontdoor import attach
    from stemd.daemon.scheduler import Job
    from stemd.protocol import GenerateRequest

    running = [1]
    cluster = SimpleNamespace(replicas=4, running=lambda: running[0], watch=lambda wake: None, check=None)
    service = SimpleNamespace(settings=SimpleNamespace(queue_size=8), pool=SimpleNamespace())
    attach(service, cluster)
    scheduler, client = service.scheduler, SimpleNamespace(key="daw", name="daw")
    for i in range(4):
        scheduler.submit(Job(GenerateRequest(f"t{i}", bars=4, bpm=97, meter="7/8"), client))
    slots = scheduler.devices
    assert len(slots) == 4 and len(service.make_workers()) == 4
    taken = [scheduler.next_job(timeout=0, device=slot) for slot in slots]
    assert [j.id if j else None for j in taken] == ["t0", "t1", None, None]   # 1 running + 1 waiting in Serve
    running[0] = 3                                    # Serve added two replicas
    scheduler.wake()
    assert [scheduler.next_job(timeout=0, device=slot).id for slot in slots[2:]] == ["t2", "t3"]


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'stemd[cluster]')")
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False})
    for _ in range(2):
        c.add_node(num_cpus=2, num_gpus=1)
    try:
        c.wait_for_nodes()
        yield c
    finally:
        c.shutdown()


def test_waiting_requests_add_a_replica_up_to_max_and_a_live_one_goes_first(cluster, tmp_path):
    d = SlowStart(tmp_path, "--ray", cluster.address, "--ray-replicas", "1:2", "--pace", "1.0")
    try:
        d.wait_log("1 to 2 replicas (Serve scales them by the requests waiting)", timeout=5)
        offline = TcpClient(d.port, timeout=60)
        for i in range(4):                            # 12 s each: one runs, one waits in Serve's router
            offline.send(*request(f"off-{i}", "7/8", 12, i), "priority", "offline")
        d.wait_log("stemd-worker runs 2 replicas now", timeout=120)
        live = TcpClient(d.port, timeout=60)
        live.send(*request("now", "3/4", 2, 9))
        got = live.until("/stemd/done", "now", timeout=120)
        seen = []
        while len([m for m in seen if m.address == "/stemd/done"]) < 4:   # in the order they end
            seen += offline.until("/stemd/done", timeout=240)
        live.close()
        offline.close()
        log = d.log
    finally:
        d.stop()
    assert [c.bar_index for c in chunks(got)] == [0, 1]
    for i in range(4):                                # preempted or not, every bar once, in order
        assert [c.bar_index for c in chunks(seen) if c.request_id == f"off-{i}"] == list(range(12)), i
    replicas = set(re.findall(r"runs on replica (\w+)", log))
    assert len(replicas) == 2, log[-3000:]             # the takes ran on the replica Serve added too
    first_runs = {rid: log.index(f"request {rid} from tcp") for rid in ("now", "off-3")}
    assert first_runs["now"] < first_runs["off-3"], log[-3000:]   # the live request before the last offline one
