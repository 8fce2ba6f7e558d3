"""stemd serve --ray: the front door (OSC server, scheduler) here, the takes made by a Ray Serve deployment
on a local two-node cluster (``ray.cluster_utils.Cluster``, each node declaring one logical GPU), click
model. A client cannot tell it from a local daemon: the same bars, sample for sample; only
``/stemd/status`` and the log name the replica and node. Plus: stemd serve without --ray imports no Ray."""

from __future__ import annotations

import re
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from stemd.protocol import Chunk
from stemd.timing import Grid, Meter, Tempo

sys.path.insert(0, str(Path(__file__).parent))
from daemon_fixtures import STEMD, Daemon, TcpClient  # noqa: E402

PACE = 0.5   # seconds per bar on the replicas: a take lasts long enough to cancel it, or lose its node


class SlowStart(Daemon):
    def _wait_for_port(self, timeout: float) -> int:   # connecting and deploying the replicas takes a while
        return super()._wait_for_port(timeout=max(timeout, 180))


@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'stemd[cluster]')")
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False})
    nodes = [c.add_node(num_cpus=2, num_gpus=1) for _ in range(2)]   # logical GPUs: no GPU needed
    try:
        c.wait_for_nodes()
        yield c, nodes
    finally:
        c.shutdown()


@pytest.fixture(scope="module")
def front(cluster, tmp_path_factory):
    c, _ = cluster
    d = SlowStart(tmp_path_factory.mktemp("front"), "--ray", c.address, "--pace", str(PACE),
                  "--model", "metronome=click")   # the click under a second name, for the multiplexing test
    try:
        d.wait_log("2 replicas of stemd-worker (application stemd) ready", timeout=5)
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    d = Daemon(tmp_path_factory.mktemp("local"))
    yield d
    d.stop()


def request(rid: str, meter: str, bars: int, seed: int) -> tuple:
    return ("/stemd/generate", rid, "bars", bars, "bpm", 97, "meter", meter, "start_bar", 2, "sample_rate", 22050,
            "channels", 1, "seed", seed)


def take(daemon: Daemon, rid: str, meter: str, bars: int, seed: int) -> tuple[list, np.ndarray]:
    client = TcpClient(daemon.port, timeout=60)
    client.send(*request(rid, meter, bars, seed))
    messages = client.until("/stemd/done", rid, timeout=120)
    client.close()
    return messages, wav(messages)


def wav(messages: list) -> np.ndarray:
    import soundfile

    paths = [m.args[2] for m in messages if m.address == "/stemd/take"]
    assert len(paths) == 1, messages[-3:]
    return soundfile.read(paths[0], dtype="float32", always_2d=True)[0]


def chunks(messages: list) -> list[Chunk]:
    return [Chunk.from_args(m.args) for m in messages if m.address == "/stemd/chunk"]


def assert_bar_exact(bars: list[Chunk], meter: str, count: int) -> None:
    beats, unit = (int(x) for x in meter.split("/"))
    grid = Grid(Tempo(97), Meter(beats, unit))
    assert [c.bar_index for c in bars] == list(range(count))        # every bar once, in order
    for c in bars:
        assert c.start_sample == grid.bar_start_sample(2 + c.bar_index, 22050)
        assert c.audio.shape == (1, grid.bar_length_samples(2 + c.bar_index, 22050))


def status(client: TcpClient, rid: str):
    client.send("/stemd/status", rid)
    return next(m for m in client.until("/stemd/status/reply", rid) if m.address == "/stemd/status/reply")


def test_two_clients_get_takes_made_on_both_replicas_equal_to_a_local_daemon(front, local):
    results = {}

    def run(rid: str, meter: str, seed: int) -> None:
        client = TcpClient(front.port, timeout=60)
        client.send(*request(rid, meter, 4, seed))
        seen = client.until("/stemd/chunk", rid, timeout=120)
        where = status(client, rid)
        seen += client.until("/stemd/done", rid, timeout=120)
        client.close()
        results[rid] = (seen, where)

    threads = [threading.Thread(target=run, args=a) for a in (("waltz", "3/4", 3), ("odd", "7/8", 5))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert set(results) == {"waltz", "odd"}
    wheres = {rid: r[1].args[5] for rid, r in results.items()}   # status names the replica and node
    assert all(w.startswith("replica ") and " on node " for w in wheres.values()), wheres
    assert wheres["waltz"] != wheres["odd"]
    nodes = {re.search(r"on node (\w+)", w).group(1) for w in wheres.values()}
    assert len(nodes) == 2, wheres                                  # made on both nodes
    for rid, meter, seed in (("waltz", "3/4", 3), ("odd", "7/8", 5)):
        seen = results[rid][0]
        assert_bar_exact(chunks(seen), meter, 4)
        reference, audio = take(local, rid, meter, 4, seed)
        assert [c.audio.tobytes() for c in chunks(seen)] == [c.audio.tobytes() for c in chunks(reference)]
        assert np.array_equal(wav(seen), audio)
    log = front.wait_log("runs on replica", count=2)
    assert "request waltz from" in log and "request odd from" in log


def test_a_model_goes_to_the_replica_that_holds_it(front):
    client = TcpClient(front.port, timeout=60)
    wheres = []
    for i in range(4):              # one at a time: both replicas are free each time (random: 1 in 8 alike)
        client.send(*request(f"warm-{i}", "3/4", 1, i), "model", "metronome")   # asked of no replica before
        client.until("/stemd/done", f"warm-{i}", timeout=120)
        wheres.append(status(client, f"warm-{i}").args[5])
    client.close()
    assert len(set(wheres)) == 1, wheres   # Serve's multiplexing by model name: the replica that served it


def test_a_cancel_stops_the_replica_within_one_bar(front):
    client = TcpClient(front.port, timeout=60)
    client.send(*request("stop-me", "7/8", 6, 11))
    seen = client.until("/stemd/chunk", "stop-me", timeout=120)
    seen += client.until("/stemd/chunk", "stop-me")                  # two bars in: the third is being made
    assert len(chunks(seen)) == 2
    client.send("/stemd/cancel", "stop-me")
    seen += client.until("/stemd/cancelled", "stop-me")
    client.close()
    log = front.wait_log("request stop-me stopped after", timeout=30)
    made = int(re.search(r"request stop-me stopped after (\d+) bars of 6", log).group(1))
    assert 2 <= made <= 3       # the replica stopped inside the bar it was making: at most that bar more


def test_a_live_request_queued_behind_offline_work_runs_first(front):
    offline = TcpClient(front.port, timeout=60)
    for rid in ("off-a", "off-b", "off-c"):      # two replicas busy, one more waiting
        offline.send(*request(rid, "3/4", 4, 31), "priority", "offline")
    seen = offline.until("/stemd/chunk", timeout=120)
    live = TcpClient(front.port, timeout=60)
    live.send(*request("now", "7/8", 2, 32))
    got = live.until("/stemd/done", "now", timeout=120)
    assert [c.bar_index for c in chunks(got)] == [0, 1]
    for rid in ("off-a", "off-b", "off-c"):
        if not any(m.address == "/stemd/done" and m.args[:1] == (rid,) for m in seen):
            seen += offline.until("/stemd/done", rid, timeout=120)
    live.close()
    offline.close()
    log = front.log
    starts = {rid: log.index(f"request {rid} from tcp") for rid in ("now", "off-c")}   # its first "runs on" line
    assert starts["now"] < starts["off-c"]            # the live request went ahead of the offline one queued
    assert re.search(r"request off-[ab] from .*: preempted by a live request after \d bars", log)
    for rid in ("off-a", "off-b", "off-c"):             # the preempted take resumed: every bar once, in order
        assert [c.bar_index for c in chunks(seen) if c.request_id == rid] == [0, 1, 2, 3], rid


def budget_for_one(*models) -> int:
    """A memory budget that holds either model with a 1-bar request, never both (as in test_daemon_models.py)."""
    from stemd.models.backend_plan import planned_dtype
    from stemd.models.memory import footprint
    from stemd.models.pool import locate

    prints = [footprint(*locate(str(m)), planned_dtype("musicgen", "cpu", None)) for m in models]
    need = max(int(fp.weights * 1.1) + fp.request(float(Grid(Tempo(97)).bar_seconds(0)), 1) for fp in prints)
    return need + min(fp.weights for fp in prints) // 2


def hub_cache_with(folder: Path, hub_id: str, cache: Path) -> Path:
    """A Hugging Face cache holding ``folder`` as the snapshot of ``hub_id``: a model this machine's front
    door finds (HF_HUB_CACHE) and the cluster's nodes, which keep the default cache, do not."""
    import shutil

    repo = cache / f"models--{hub_id.replace('/', '--')}"
    revision = "0" * 40
    shutil.copytree(folder, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return cache


@pytest.fixture(scope="module")
def tight(cluster, front, tiny, tiny_stereo, tmp_path_factory):
    """A second front door (application stemd-tight) with one replica on a third box, whose memory budget
    holds one test model at a time; it also serves a model that only this machine's cache has."""
    c, _ = cluster
    box = c.add_node(num_cpus=2, num_gpus=1)        # a third box for this front door's own replica
    c.wait_for_nodes()
    tmp = tmp_path_factory.mktemp("tight")
    cache = hub_cache_with(tiny, "stemd-test/only-here", tmp / "hub")
    budget = budget_for_one(tiny, tiny_stereo)
    d = SlowStart(tmp, "--ray", c.address, "--ray-app", "stemd-tight", "--ray-replicas", "1",
                  "--model", f"stereo={tiny_stereo}", "--model", "only-here=stemd-test/only-here",
                  "--memory-budget", f"{budget / 2 ** 30:.9f}", "--backend", "eager", model=f"mono={tiny}",
                  env={"HF_HUB_CACHE": str(cache)})
    try:
        yield d, box, budget
    finally:
        d.stop()


def test_two_models_on_a_replica_whose_budget_holds_one_the_second_evicts_the_first(tight):
    d, _, _ = tight
    client = TcpClient(d.port, timeout=60)
    for rid, model in (("m0", "mono"), ("s0", "stereo")):
        client.send("/stemd/generate", rid, "bars", 1, "bpm", 97, "meter", "3/4", "model", model, "seed", 1)
        assert any(m.address == "/stemd/chunk" for m in client.until("/stemd/done", rid, timeout=120))
    client.close()
    log = d.wait_log("evicted model mono from cpu", timeout=30)
    assert "stemd replica: INFO loaded model stereo" in log and "(least recently used" in log
    assert log.count("runs on replica") == 2 and len(set(re.findall(r"runs on (replica \w+)", log))) == 1


def test_a_model_no_replica_can_hold_is_refused_naming_the_nodes(tight, tiny):
    from stemd.models.memory import footprint
    from stemd.models.pool import locate

    d, box, budget = tight
    node = box.node_id[:12]         # the one node that runs this front door's replica (front's hold the others)
    assert re.search(rf"stemd replica: replica \w+ on node {node}\w* \(.*\) ready", d.log), d.log[-2000:]
    client = TcpClient(d.port, timeout=60)
    client.send("/stemd/generate", "nowhere", "bars", 1, "bpm", 97, "meter", "7/8", "model", "only-here")
    error = client.until("/stemd/error", "nowhere")[-1]
    assert error.args[1] == "model_not_found", error.args
    assert f"node {node}" in error.args[2] and "stemd-test/only-here" in error.args[2], error.args
    # more variations than the replica's budget holds beside the weights (its own footprint, as it reports it)
    fp = footprint(*locate(str(tiny)), "float32")
    seconds = float(Grid(Tempo(97), Meter(3, 4)).bar_seconds(0)) * 8
    variations = next(v for v in range(1, 17) if fp.weights + fp.request(seconds, v) > budget)
    client.send("/stemd/generate", "huge", "bars", 8, "bpm", 97, "meter", "3/4", "model", "mono", "variations",
                variations, "sample_rate", 22050, "channels", 1)
    error = client.until("/stemd/error", "huge")[-1]
    client.close()
    assert error.args[1] == "too_large", error.args
    assert f"node {node}" in error.args[2] and "memory budget" in error.args[2], error.args
    assert "replica" in d.wait_log("cannot find model only-here", timeout=5)   # said when the front door starts


def test_a_render_beside_live_serving_runs_only_on_the_free_gpu(cluster, front, tight, tmp_path):
    import subprocess

    c, _ = cluster
    free = c.add_node(num_cpus=2, num_gpus=1)       # the one GPU no live replica holds (both front doors: 3)
    c.wait_for_nodes()
    render = subprocess.Popen([sys.executable, "-m", "stemd", "render", "--model", "click", "--prompt", "drums",
                               "--seeds", "1,2,3", "--bars", "2", "--bpm", "97", "--meter", "7/8", "--sample-rate",
                               "22050", "--variations", "2", "--no-contact-sheet", "--out", str(tmp_path / "render"),
                               "--ray", c.address], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        live = TcpClient(front.port, timeout=60)     # a live take on a replica while the render runs
        live.send(*request("beside", "3/4", 4, 41))
        got = live.until("/stemd/done", "beside", timeout=120)
        live.close()
        _, errors = render.communicate(timeout=240)
    finally:
        render.kill()
    assert render.returncode == 0, errors[-2000:]
    assert_bar_exact(chunks(got), "3/4", 4)
    assert "1 workers on the cluster's 4 GPUs, 3 of them held" in errors, errors[-2000:]
    made_on = re.search(r"batches made on (.*)", errors).group(1)
    assert re.findall(r"node (\w+)", made_on) == [free.node_id[:12]], made_on   # never a replica's GPU


def test_a_node_lost_mid_take_the_take_completes_elsewhere_every_bar_once(front, local, cluster):
    c, nodes = cluster
    client = TcpClient(front.port, timeout=60)
    client.send(*request("survivor", "3/4", 6, 21))
    seen = client.until("/stemd/chunk", "survivor", timeout=120)
    seen += client.until("/stemd/chunk", "survivor")
    where = status(client, "survivor").args[5]
    node_id = re.search(r"on node (\w+)", where).group(1)
    victim = next(n for n in nodes if n.node_id.startswith(node_id))
    c.remove_node(victim, allow_graceful=False)                      # mid-take: bar 2 of 6 is being made
    seen += client.until("/stemd/done", "survivor", timeout=150)
    client.close()
    bars = chunks(seen)
    assert_bar_exact(bars, "3/4", 6)                                 # every bar exactly once, in order
    log = front.wait_log("request survivor from")
    assert re.search(r"request survivor from .*: lost replica .* after \d of 6 bars", log), log[-3000:]
    after = status_where = re.findall(r"request survivor from .*: runs on (replica .*)", log)
    assert len(after) == 2 and node_id not in after[1], status_where   # the second run is on the other node
    reference, audio = take(local, "survivor", "3/4", 6, 21)
    assert np.array_equal(wav(seen), audio)
    assert [c.audio.tobytes() for c in bars] == [c.audio.tobytes() for c in chunks(reference)]


def test_stemd_serve_without_ray_never_imports_ray(tmp_path):
    d = Daemon(tmp_path, command=[sys.executable, "-X", "importtime", *STEMD[1:]])
    try:
        messages, _ = take(d, "plain", "7/8", 2, 1)
        assert len(chunks(messages)) == 2
        log = d.log
    finally:
        d.stop()
    assert "import time:" in log and "stemd.daemon.server" in log         # the import log is there
    ray = re.compile(r"\|\s+ray(\.|\s*$)")
    assert not any(ray.search(line) for line in log.splitlines()), [l for l in log.splitlines() if ray.search(l)][:5]
