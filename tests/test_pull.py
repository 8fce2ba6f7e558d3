"""`stemd pull`: the one command that downloads. No hub is reachable here: what is tested is that a model
already in the Hugging Face cache is found without the network, and that every other case is one line."""

import os
import subprocess
import sys

import pytest


def cached_snapshot(hub, repo_id, files):
    """``repo_id`` as the Hugging Face cache under ``hub`` holds it: one snapshot of ``files``, main pointing at it."""
    repo = hub / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / "abc123"
    for name in files:
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    return snapshot


@pytest.fixture
def hub_calls(tmp_path, monkeypatch):
    """huggingface_hub.snapshot_download, offline, recorded: ``(repo_id, local_files_only, allow_patterns)`` per call;
    a repo is cached unless ``calls.cached`` is False."""
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    class Calls(list):
        cached = True

    calls = Calls()

    def snapshot_download(repo_id, revision=None, local_files_only=False, allow_patterns=None, **kw):
        calls.append((repo_id, local_files_only, allow_patterns))
        if not calls.cached:
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        folder = tmp_path / repo_id.replace("/", "--")
        folder.mkdir(exist_ok=True)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def pull(*args, env):
    return subprocess.run([sys.executable, "-m", "stemd", "pull", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_pull_finds_a_cached_model_offline_and_says_in_one_line_what_it_cannot_do(tmp_path):
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    env.pop("HF_HUB_CACHE", None)
    snapshot = cached_snapshot(tmp_path / "hf" / "hub", "facebook/musicgen-small", ["config.json"])
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


def test_a_cached_release_in_its_makers_format_is_found_offline_with_the_line_that_converts_it(tmp_path):
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    env.pop("HF_HUB_CACHE", None)
    snapshot = cached_snapshot(tmp_path / "hf" / "hub", "ACE-Step/Ace-Step1.5", ["acestep-v15-turbo/config.json"])
    out = pull("ACE-Step/Ace-Step1.5", env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == f"ACE-Step/Ace-Step1.5: {snapshot}"
    assert f"convert_ace_step_to_diffusers.py --checkpoint_dir {snapshot}" in lines[1]


OFFICIAL = {   # repo -> (a file it must fetch, a file it must leave on the hub, served as pulled)
    "stabilityai/stable-audio-3-small-music": ("model.safetensors", "optimized/model.onnx", False),
    "stabilityai/stable-audio-3-medium": ("model_config.json", "model.ckpt", False),
    "ACE-Step/Ace-Step1.5": ("acestep-v15-turbo/model.safetensors", "acestep-5Hz-lm-1.7B/model.safetensors", False),
    "ACE-Step/acestep-v15-xl-turbo-diffusers": ("transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
                                                "transformer/diffusion_pytorch_model.bin", True),
}


def test_each_official_release_reaches_the_hub_with_its_repo_id_and_only_the_files_stemd_runs(tmp_path, hub_calls,
                                                                                               capsys):
    import argparse
    import fnmatch

    from stemd.models import cmd_pull

    calls = hub_calls
    for repo, (fetched, left, served) in OFFICIAL.items():
        calls.clear()
        assert cmd_pull.run(argparse.Namespace(model=repo, revision=None)) == 0
        (called, offline, patterns), = calls                 # one call, the cache's: nothing went to the network
        assert called == repo and offline is True
        assert any(fnmatch.fnmatch(fetched, p) for p in patterns), (repo, fetched)
        assert not any(fnmatch.fnmatch(left, p) for p in patterns), (repo, left)
        out = capsys.readouterr().out.splitlines()
        assert out[0] == f"{repo}: {tmp_path / repo.replace('/', '--')}"
        assert (len(out) == 1) if served else ("convert it once" in out[1] and "--output_dir DIR" in out[1])


def test_an_official_release_not_in_the_cache_is_refused_offline_after_the_cache_was_asked(hub_calls):
    from stemd.models import cmd_pull

    calls = hub_calls
    calls.cached = False
    with pytest.raises(cmd_pull.PullError, match="HF_HUB_OFFLINE is set"):
        cmd_pull.pull("ACE-Step/Ace-Step1.5")
    assert calls == [("ACE-Step/Ace-Step1.5", True, ["acestep-v15-turbo/*", "vae/*", "Qwen3-Embedding-0.6B/*",
                                                     "*.md", "LICENSE*"])]
    calls.clear()
    with pytest.raises(cmd_pull.PullError):
        cmd_pull.pull("facebook/musicgen-small")          # any other hub id: pulled whole
    assert calls == [("facebook/musicgen-small", True, None)]


def test_serving_a_pulled_release_that_is_not_converted_yet_says_how_to_convert_it(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    from stemd.models.base import ModelNotFound
    from stemd.models.diffusion.loading import find_pipeline

    snapshot = cached_snapshot(tmp_path / "hub", "stabilityai/stable-audio-3-small-music", ["model_config.json"])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotFound) as e:
        find_pipeline("stabilityai/stable-audio-3-small-music")
    assert "convert it once" in str(e.value)
    assert f"--checkpoint_path {snapshot}/model.safetensors" in str(e.value)
