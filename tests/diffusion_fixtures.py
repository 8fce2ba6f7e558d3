"""Stable Audio 3 and ACE-Step 1.5 test pipelines (random weights: noise, not music) for the diffusion tests:
written once a test module with the real ``stemd make-test-model`` command line, the engines stemd loads from
them, and diffusers' own pipeline loaded on its own from the same folder (what each engine is held to).

A test module takes the fixtures with ``from diffusion_fixtures import engines, pipelines``.
"""

from __future__ import annotations

import subprocess

import pytest

from daemon_fixtures import STEMD

SA3, ACE = "sa3-tiny", "acestep-tiny"


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """``{arch: folder}`` written with the real command line."""
    out = {}
    for arch in (SA3, ACE):
        folder = tmp_path_factory.mktemp(arch)
        done = subprocess.run(STEMD + ["make-test-model", str(folder), "--arch", arch], capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "noise, not music" in done.stdout
        out[arch] = folder
    return out


@pytest.fixture(scope="module")
def engines(pipelines):
    """``{arch: engine}``: stemd's engine for each pipeline, on the CPU."""
    from stemd.models.registry import load_engine

    return {arch: load_engine(str(folder), device="cpu") for arch, folder in pipelines.items()}


def written(tmp_path_factory, arch: str, without: tuple = ()):
    """A test pipeline of ``arch`` written in-process (``without``: optional components left out); skips without
    torch or diffusers."""
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from stemd.models.diffusion.testmodels import write_test_pipeline

    return write_test_pipeline(tmp_path_factory.mktemp(arch), arch, without=without)


def reference(folder):
    """diffusers' own pipeline, loaded on its own from the same folder."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    return pipe
