"""Several models in one real `stemd serve`: chosen per request, loaded on first use, evicted within a memory
budget, too_large before any work, out-of-memory recovery. The MusicGen and ACE-Step models here are test
models (the real architectures with random weights, built here): they make noise, not music."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from daemon_fixtures import STEMD, TcpClient
from stemd.models.memory import footprint
from stemd.models.backend_plan import planned_dtype
from stemd.models.pool import locate
from stemd.timing import Grid, Meter

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def acestep(tmp_path_factory):
    pytest.importorskip("diffusers")
    from stemd.models.diffusion.testmodels import write_test_pipeline

    return write_test_pipeline(tmp_path_factory.mktemp("acestep-tiny"), "acestep-tiny")


def models_reply(client: TcpClient) -> dict:
    client.send("/stemd/models")
    reply = client.until("/stemd/models/reply")[-1]
    count, rest = reply.args[0], reply.args[1:]
    assert len(rest) == 9 * count
    keys = ("name", "family", "loaded", "device", "dtype", "bytes", "license", "commercial", "weights_sha256")
    return {rest[i]: dict(zip(keys, rest[i:i + 9])) for i in range(0, len(rest), 9)}


def sidecar(path: str) -> dict:
    return json.loads(Path(path).with_suffix(".json").read_text())


def take(client: TcpClient, rid: str, timeout: float = 120, **keys) -> list:
    args = [rid]
    for key, value in keys.items():
        args += [key, value]
    client.send("/stemd/generate", *args)
    return client.until("/stemd/done", rid, timeout=timeout)


def test_each_request_is_made_by_the_model_it_names_exact_in_length(start_daemon, tiny, acestep, tmp_path):
    daemon = start_daemon("--model", f"tiny={tiny}", "--model", f"ace={acestep}", "--device", "cpu")
    a, b = TcpClient(daemon.port), TcpClient(daemon.port)
    listed = models_reply(a)
    assert list(listed) == ["click", "tiny", "ace"]             # the order served; the first is the default
    assert listed["click"]["loaded"] == 1 and listed["tiny"]["loaded"] == 0 and listed["ace"]["loaded"] == 0
    assert (listed["tiny"]["family"], listed["tiny"]["license"], listed["tiny"]["commercial"]) == \
        ("musicgen", "CC-BY-NC-4.0", 0)
    assert (listed["ace"]["family"], listed["ace"]["license"], listed["ace"]["commercial"]) == ("ace-step", "MIT", 1)
    # interleaved: two clients, three models, an odd meter and tempo
    asks = [(a, "a1", "tiny"), (b, "b1", "ace"), (a, "a2", ""), (b, "b2", "tiny"), (a, "a3", "ace")]
    for client, rid, model in asks:
        keys = ["bars", 2, "bpm", 97, "meter", "3/4", "sample_rate", 44100, "seed", 5]
        client.send("/stemd/generate", rid, *keys, *(["model", model] if model else []))
    grid = Grid(97, Meter(3, 4))
    meta_of = {}
    for client, rid, model in asks:
        messages = client.until("/stemd/done", rid, timeout=240)
        paths = [m.args[2] for m in messages if m.address == "/stemd/take"]
        meta = meta_of[model] = sidecar(paths[0])
        assert meta["model_name"] == (model or "click") and meta["frames"] == grid.bar_start_sample(2, 44100)
        assert meta["family"] == {"tiny": "musicgen", "ace": "ace-step", "": "click"}[model]
        assert meta["license"]["name"] and "commercial_use" in meta
        if model:
            assert meta["weights_sha256"] and meta["note"].startswith("made by a test model")
    listed = models_reply(b)
    assert all(m["loaded"] == 1 and m["device"] == "cpu" for m in listed.values())
    assert listed["tiny"]["bytes"] > 0 and listed["ace"]["bytes"] > 0 and listed["click"]["bytes"] == 0
    assert listed["tiny"]["weights_sha256"] == meta_of["tiny"]["weights_sha256"] and len(meta_of["ace"]
                                                                                       ["weights_sha256"]) == 64
    a.send("/stemd/generate", "x", "model", "drums")
    error = a.until("/stemd/error", "x")[-1]
    assert error.args[1:] == ("unknown_model", "drums: models here are click, tiny, ace")
    # the bridge asks for a model by name; its own sidecar says which made the take, as the daemon does
    bridge = subprocess.run(STEMD + ["bridge", "--daemon", f"127.0.0.1:{daemon.port}", "--follow", "fixed:97:7/8",
                                     "--out", str(tmp_path / "daw"), "--generate", "pads", "--bars", "1", "--model",
                                     "ace", "--once", "--no-stdin", "--command-port", "0"],
                            capture_output=True, text=True, timeout=120)
    assert bridge.returncode == 0, bridge.stderr
    meta = sidecar(bridge.stdout.splitlines()[-1])
    assert (meta["model_name"], meta["family"], meta["license"]["name"], meta["commercial_use"]) == \
        ("ace", "ace-step", "MIT", True)
    assert meta["weights_sha256"] == meta_of["ace"]["weights_sha256"] and meta["request"]["model"] == "ace"


def test_a_budget_that_holds_one_model_evicts_the_least_recently_used(start_daemon, tiny, tiny_stereo):
    # the budget: either model with a 1-bar request fits, both together do not (the daemon's own estimates)
    prints = [footprint(*locate(str(m)), planned_dtype("musicgen", "cpu", None)) for m in (tiny, tiny_stereo)]
    seconds = float(Grid(120).bar_seconds(0))
    need = max(int(fp.weights * 1.1) + fp.request(seconds, 1) for fp in prints)
    budget = need + min(fp.weights for fp in prints) // 2
    daemon = start_daemon("--model", f"stereo={tiny_stereo}", "--device", "cpu",
                          "--memory-budget", f"{budget / 2 ** 30:.9f}", model=f"mono={tiny}")
    client = TcpClient(daemon.port)
    assert models_reply(client)["mono"]["loaded"] == 1                    # the first loads at start
    take(client, "s1", bars=1, model="stereo")
    log = daemon.wait_log("evicted model mono from cpu")
    assert "loaded model stereo" in log and "(least recently used" in log and "freed" in log
    listed = models_reply(client)
    assert (listed["mono"]["loaded"], listed["stereo"]["loaded"]) == (0, 1)
    take(client, "m1", bars=1, model="mono")                             # back: reloaded, the other evicted
    daemon.wait_log("evicted model stereo from cpu")
    assert daemon.log.count("loaded model mono") == 2
    take(client, "m2", bars=1, model="mono")                             # warm: no load, no eviction
    take(client, "m3", bars=1)                                           # the default is mono
    log = daemon.wait_log("request m3 from")
    assert log.count("loaded model mono") == 2 and log.count("evicted model") == 2
    # a request that cannot fit even alone is refused before any work, with the figures; serving goes on
    client.send("/stemd/generate", "big", "model", "stereo", "bars", 8, "variations", 4)
    error = client.until("/stemd/error", "big")[-1]
    assert error.args[1] == "too_large" and "memory budget on cpu is" in error.args[2]
    assert "variation" in error.args[2] and "request big" not in daemon.log
    assert models_reply(client)["mono"]["loaded"] == 1                   # nothing was evicted for it
    messages = take(client, "after", bars=1, model="stereo")
    assert messages[-1].address == "/stemd/done"


OOM_WRAPPER = textwrap.dedent('''
    """stemd with one simulated out-of-memory: the KV cache allocation of layer 2 fails once, for a
    request of 3 variations (6 rows with guidance), after layer 1's cache was already replaced."""
    import sys

    import torch

    from stemd.models.musicgen import model

    real = model.KVCache.__init__
    state = {"failed": False, "layer": 0}

    def kv_cache(self, batch, *args, **kwargs):
        if batch == 6 and not state["failed"]:
            state["layer"] += 1
            if state["layer"] == 2:
                state["failed"] = True
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated by a test)")
        real(self, batch, *args, **kwargs)

    model.KVCache.__init__ = kv_cache
    from stemd.cli import main

    sys.exit(main(sys.argv[1:]))
''')


def test_an_out_of_memory_request_fails_typed_and_the_next_one_runs(start_daemon, tiny, tmp_path):
    wrapper = tmp_path / "oom_stemd.py"
    wrapper.write_text(OOM_WRAPPER)
    daemon = start_daemon("--device", "cpu", model=f"tiny={tiny}", command=[sys.executable, str(wrapper)])
    client = TcpClient(daemon.port)
    assert take(client, "one", bars=1, seed=1)[-1].address == "/stemd/done"       # caches for 1 variation
    client.send("/stemd/generate", "three", "bars", 1, "variations", 3, "seed", 2)
    error = client.until("/stemd/error", "three", timeout=120)[-1]
    assert error.args[1] == "engine_error" and "out of memory on cpu" in error.args[2]
    assert "caches were reset" in error.args[2]
    # the shape of the first request again: before the reset, its caches were half replaced
    messages = take(client, "again", bars=1, seed=1)
    assert messages[-1].address == "/stemd/done"
    assert take(client, "three-again", bars=1, variations=3, seed=2)[-1].address == "/stemd/done"
    assert "out of memory on cpu with model tiny" in daemon.log


def test_two_cpu_devices_each_run_the_models_placed_on_them(start_daemon, tiny, acestep, tmp_path):
    models = tmp_path / "models.toml"
    models.write_text(f'[models]\ntiny = {{ source = "{tiny}", device = "cpu:1" }}\nace = "{acestep}"\n')
    daemon = start_daemon("--models", str(models), "--device", "cpu:0", "--device", "cpu:1", model="click")
    client = TcpClient(daemon.port)
    take(client, "t", bars=1, model="tiny")
    take(client, "a", bars=1, model="ace")
    listed = models_reply(client)
    assert listed["tiny"]["device"] == "cpu:1"                       # pinned in the models file
    assert listed["ace"]["device"] in ("cpu:0", "cpu:1") and listed["ace"]["loaded"] == 1


def test_a_models_file_mistake_is_one_line_before_anything_loads(tmp_path):
    models = tmp_path / "models.toml"
    models.write_text('[models]\ndrums = { path = "x" }\n')
    run = subprocess.run(STEMD + ["serve", "--models", str(models), "--port", "0"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 2 and "model 'drums' needs a source" in run.stderr
    run = subprocess.run(STEMD + ["serve", "--model", "click", "--model", "click", "--port", "0"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "two models are named 'click'" in run.stderr
