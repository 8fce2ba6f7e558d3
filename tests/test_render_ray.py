"""stemd render --ray: the same job on a local Ray cluster (started here, on loopback) gives the same
manifest, the same audio, as a run on this machine."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="Ray is not installed (pip install 'stemd[cluster]')")

RAY = Path(sys.executable).with_name("ray")
JOB = ["--model", "click", "--prompt", "dusty drums", "--prompt", "warm bass", "--seeds", "1,2,3",
       "--bars", "2,4", "--bpm", "137.5", "--sample-rate", "22050", "--variations", "2", "--no-contact-sheet"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Head:
    def __init__(self, address: str, env: dict):
        self.address, self.env = address, env


@pytest.fixture(scope="module", params=["no token", "a token"])
def ray_head(request):
    """A one-node Ray cluster with 2 CPUs, started with a HOME of its own (as the renders are), so a token
    in this machine's ~/.ray (which any local ``ray.init()`` writes) decides nothing. ``a token`` puts one in
    that HOME: Ray then starts the head with token authentication (its default whenever a token exists), and
    the renders join it as docs/cluster.md says, with ``RAY_AUTH_MODE=token`` (without it Ray refuses them:
    InvalidAuthToken). The whole process group is stopped afterwards."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(Path(temp) / "home")
    os.makedirs(env["HOME"])
    if request.param == "a token":
        subprocess.run([str(RAY), "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
        assert (Path(env["HOME"]) / ".ray" / "auth_token").is_file()
        env["RAY_AUTH_MODE"] = "token"
    port = free_port()
    cmd = [str(RAY), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
           "--num-cpus=2", "--num-gpus=0", f"--temp-dir={temp}", "--include-dashboard=false",
           "--disable-usage-stats", f"--dashboard-agent-listen-port={free_port()}"]
    log = open(Path(temp) / "head.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"ray start exited: {(Path(temp) / 'head.log').read_text()[-2000:]}")
            if "will now block" in (Path(temp) / "head.log").read_text():
                break
            time.sleep(0.2)
        else:
            pytest.fail("the Ray head did not start in 60 s")
        yield Head(f"127.0.0.1:{port}", env)
    finally:
        proc.terminate()  # `ray start --block` stops its processes on SIGTERM
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is left
        except ProcessLookupError:
            pass
        proc.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def render(out: Path, *extra, env: dict = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stemd", "render", *JOB, "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=240, env=env)


def test_a_job_on_a_ray_cluster_gives_the_same_manifest_as_a_local_run(ray_head, tmp_path):
    local = render(tmp_path / "local")
    assert local.returncode == 0, local.stderr
    cluster = render(tmp_path / "ray", "--ray", ray_head.address, env=ray_head.env)
    assert cluster.returncode == 0, cluster.stderr
    a = json.loads((tmp_path / "local" / "manifest.json").read_text())
    b = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert a["finished"] == 24 and a == b               # same takes, same order, same audio hashes
    for take in b["takes"]:
        assert (tmp_path / "ray" / take["file"]).read_bytes() == (tmp_path / "local" / take["file"]).read_bytes()
    hosts = {json.loads((tmp_path / "ray" / f"{t['name']}.json").read_text())["render"]["host"] for t in b["takes"]}
    assert hosts  # sidecars say where each take was made


def test_a_ray_rerun_skips_what_is_finished(ray_head, tmp_path):
    assert render(tmp_path, "--ray", ray_head.address, env=ray_head.env).returncode == 0
    again = render(tmp_path, "--ray", ray_head.address, env=ray_head.env)
    assert again.returncode == 0 and again.stdout == "" and "24 already finished" in again.stderr


def test_an_unreachable_cluster_is_one_line(tmp_path):
    proc = render(tmp_path, "--ray", f"127.0.0.1:{free_port()}")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "Ray cluster" in proc.stderr


def test_one_worker_per_gpu_and_one_per_cpu_without_gpus():
    from stemd.daemon.render.cluster import worker_plan

    assert worker_plan({"CPU": 64.0, "GPU": 4.0}, None) == (4, {"num_gpus": 1, "num_cpus": 1})
    assert worker_plan({"CPU": 64.0, "GPU": 4.0}, 2) == (2, {"num_gpus": 1, "num_cpus": 1})
    assert worker_plan({"CPU": 6.0}, None) == (6, {"num_cpus": 1})
    assert worker_plan({"CPU": 6.0}, 3) == (3, {"num_cpus": 1})
