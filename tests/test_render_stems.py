"""Stems with Demucs: the real HTDemucs class loaded from a checkpoint in Demucs's own format (small,
random weights: it separates nothing musical), every stem exactly as long as its take."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import soundfile

pytest.importorskip("demucs.htdemucs", reason="Demucs is not installed (pip install 'stemd[daemon]')")

from stemd.daemon.render.files import is_finished  # noqa: E402
from stemd.daemon.render.job import make_job  # noqa: E402
from stemd.daemon.render.manifest import read_manifest  # noqa: E402
from stemd.daemon.render.runner import run_job  # noqa: E402
from stemd.daemon.render.stems import load_demucs  # noqa: E402
from stemd.models.base import EngineError, ModelNotFound  # noqa: E402
from stemd.timing import Grid  # noqa: E402

STEMS = ["drums", "bass", "other", "vocals"]


def write_test_separator(path: Path, seed: int = 0) -> Path:
    """A small random-weight HTDemucs saved as Demucs saves its checkpoints: for tests, not for music."""
    import torch
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(seed)
    model = HTDemucs(sources=STEMS, channels=4, depth=4, t_layers=1, t_heads=2, nfft=2048, segment=2,
                     dconv_comp=4)
    args, kwargs = model._init_args_kwargs
    package = {"klass": HTDemucs, "args": args, "kwargs": kwargs,
               "state": {k: v.detach().clone() for k, v in model.state_dict().items()}, "training_args": {}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(package, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_test_separator(tmp_path_factory.mktemp("demucs") / "test-htdemucs.th")


@pytest.fixture(scope="module")
def rendered(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("takes")
    job = make_job({"models": ["click"], "prompts": ["kit"], "bars": [2], "bpm": "137.5", "sample_rate": 48000,
                    "format": "pcm24", "stems": STEMS, "stems_model": str(checkpoint), "out": str(out),
                    "contact_sheet": False})
    return out, job, run_job(job, progress=False)


def test_the_checkpoint_is_in_demucs_format_and_loads_as_htdemucs(checkpoint):
    import torch
    from demucs.htdemucs import HTDemucs

    package = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert {"klass", "args", "kwargs", "state"} <= set(package) and package["klass"] is HTDemucs
    model = load_demucs(str(checkpoint))
    assert isinstance(model, HTDemucs) and list(model.sources) == STEMS and model.samplerate == 44100


def test_every_stem_is_bar_exact_like_the_mix(rendered):
    out, _job, result = rendered
    [take] = read_manifest(out)["takes"]
    frames = Grid("137.5").span_samples(0, 2, 48000)
    assert take["frames"] == frames and sorted(take["stems"]) == sorted(STEMS)
    sidecar = json.loads((out / f"{take['name']}.json").read_text())
    for stem, rel in take["stems"].items():
        info = soundfile.info(out / rel)
        assert (info.frames, info.samplerate, info.channels, info.subtype) == (frames, 48000, 2, "PCM_24")
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == sidecar["stems"][stem]["sha256"]


def test_a_missing_stem_makes_the_take_unfinished_and_a_rerun_restores_it(rendered):
    out, job, _result = rendered
    [take] = job.batches()[0].takes
    (out / f"{take.name}.stems" / "bass.wav").unlink()
    assert not is_finished(out, take.name, "wav", take.key)
    again = run_job(job, progress=False)
    assert len(again.written) == 1 and (out / f"{take.name}.stems" / "bass.wav").is_file()


def test_a_demucs_repo_folder_with_a_bag_file_loads(checkpoint, tmp_path):
    from demucs.apply import BagOfModels

    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:8]
    shutil.copy(checkpoint, tmp_path / f"0a1b2c3d-{digest}.th")
    (tmp_path / "mybag.yaml").write_text("models: ['0a1b2c3d']\n")
    assert isinstance(load_demucs(str(tmp_path)), BagOfModels)


def test_a_corrupt_or_missing_checkpoint_is_a_clear_error(checkpoint, tmp_path):
    bad = tmp_path / "0a1b2c3d-00000000.th"
    shutil.copy(checkpoint, bad)
    with pytest.raises(EngineError, match="corrupt"):
        load_demucs(str(bad))
    with pytest.raises(ModelNotFound, match="not downloaded|no Demucs model"):
        load_demucs("htdemucs_ft")
