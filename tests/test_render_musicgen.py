"""stemd render with the real MusicGen architecture (a tiny random-weight test model): the matrix, a kill
and a resume, and the same audio for the same seed and parameters on CPU."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from stemd.timing import Grid
from test_render import finished_files, render_killed_after

pytest.importorskip("torch")
testmodel = pytest.importorskip("stemd.models.musicgen.testmodel",
                                reason="the MusicGen engine (stemd make-test-model) is not in this tree")

BPM, RATE = "480", 32000


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return testmodel.write_test_model(tmp_path_factory.mktemp("tiny"), "tiny")


def job_args(model: Path, out: Path) -> list[str]:
    return ["--model", str(model), "--prompt", "dusty drums", "--prompt", "warm bass", "--seeds", "1,2,3",
            "--bars", "1,2", "--bpm", BPM, "--sample-rate", str(RATE), "--device", "cpu", "--no-contact-sheet",
            "--out", str(out)]


@pytest.fixture(scope="module")
def killed_then_resumed(tiny, tmp_path_factory):
    """The 12-take job killed after its third take, then run again."""
    out = tmp_path_factory.mktemp("takes")
    survivors = render_killed_after(job_args(tiny, out), out, takes=3)
    again = subprocess.run([sys.executable, "-m", "stemd", "render", *job_args(tiny, out)],
                           capture_output=True, text=True, timeout=300)
    return out, survivors, again


def test_a_killed_job_resumes_to_12_takes_of_exact_length(killed_then_resumed):
    import json

    out, survivors, again = killed_then_resumed
    assert again.returncode == 0, again.stderr
    assert "[transformers]" not in again.stderr and "Warning" not in again.stderr    # nothing breaks into it
    assert 3 <= len(survivors) < 12
    written = {Path(p).name for p in again.stdout.split()}
    assert written.isdisjoint(survivors) and len(written) + len(survivors) == 12
    after = finished_files(out)
    assert all(after[name] == stat for name, stat in survivors.items())   # no finished take was redone
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["finished"] == 12 and len(manifest["takes"]) == 12
    grid = Grid(BPM)
    for take in manifest["takes"]:
        data, rate = soundfile.read(out / take["file"], always_2d=True)
        assert rate == RATE and data.shape == (grid.span_samples(0, take["bars"], RATE), 2)
        assert np.isfinite(data).all() and np.abs(data).max() > 0
        assert hashlib.sha256((out / take["file"]).read_bytes()).hexdigest() == take["sha256"]
        assert json.loads((out / f"{take['name']}.json").read_text())["engine"].get("test_model")


def test_the_same_seed_and_parameters_give_identical_audio_on_cpu(tiny, killed_then_resumed, tmp_path):
    """One take made again in this process equals the one the job's processes made, bit for bit."""
    from stemd.daemon.render.job import make_job
    from stemd.daemon.render.runner import run_job

    out, _survivors, _again = killed_then_resumed
    job = make_job({"models": [str(tiny)], "prompts": ["warm bass"], "seeds": [2], "bars": [1], "bpm": BPM,
                    "sample_rate": RATE, "device": "cpu", "out": str(tmp_path), "contact_sheet": False})
    [path] = run_job(job, progress=False).written
    assert path.name.startswith("warm-bass_") and path.name.endswith("_1bar_seed2_v1.wav")
    assert path.read_bytes() == (out / path.name).read_bytes()
    other_seed = out / path.name.replace("seed2", "seed3")
    assert path.read_bytes() != other_seed.read_bytes()


def test_variations_of_one_prompt_are_one_batch_of_different_takes(tiny, tmp_path):
    from stemd.daemon.render.job import make_job
    from stemd.daemon.render.runner import run_job

    job = make_job({"models": [str(tiny)], "prompts": ["x"], "seeds": [4], "bars": [1], "variations": 3,
                    "bpm": BPM, "sample_rate": RATE, "device": "cpu", "out": str(tmp_path), "contact_sheet": False})
    assert len(job.batches()) == 1
    result = run_job(job, progress=False)
    audio = [soundfile.read(p)[0] for p in result.written]
    assert len(audio) == 3 and all(a.shape == audio[0].shape for a in audio)
    assert not np.array_equal(audio[0], audio[1]) and not np.array_equal(audio[1], audio[2])
