"""`stemd pull`: the one command that downloads. No hub is reachable here: what is tested is that a model
already in the Hugging Face cache is found without the network, and that every other case is one line."""

import os
import subprocess
import sys


def pull(*args, env):
    return subprocess.run([sys.executable, "-m", "stemd", "pull", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_pull_finds_a_cached_model_offline_and_says_in_one_line_what_it_cannot_do(tmp_path):
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    env.pop("HF_HUB_CACHE", None)
    snapshot = tmp_path / "hf" / "hub" / "models--facebook--musicgen-small" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc123")
    out = pull("facebook/musicgen-small", env=env)
    assert out.returncode == 0 and out.stdout.strip() == f"facebook/musicgen-small: {snapshot}", out.stderr
    for args, says in [(["facebook/musicgen-medium"], "HF_HUB_OFFLINE is set"),
                       ([str(tmp_path)], "is a folder on this machine: nothing to pull"),
                       (["not a hub id"], "is not a hub id")]:
        out = pull(*args, env=env)
        assert out.returncode == 2 and says in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    out = pull("facebook/musicgen-medium", env=dict(env, HF_HUB_OFFLINE="0"))    # no hub from here
    assert out.returncode == 2 and "cannot fetch facebook/musicgen-medium" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
