"""A take's guide where a producer looks for it: the daemon keeps a MIDI guide beside each take it writes
(``stemd serve --out``), and render's manifest (JSON and CSV) and contact sheet show the chords or the SMF.

The real daemon and render run an ACE-Step test model (random weights: noise, not music), which follows guides.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from daemon_fixtures import STEMD, TcpClient, start_daemon  # noqa: F401  (fixture)
from stemd.guides import Note
from stemd.guides.smf import write_smf
from stemd.takes import PARTIAL, TakeClaims

GUIDE_MARKS = [pytest.mark.skipif(importlib.util.find_spec("diffusers") is None, reason="diffusers is not installed"),
               pytest.mark.skipif(shutil.which("fluidsynth") is None, reason="the fluidsynth program is not installed"),
               pytest.mark.skipif(not Path("/usr/share/sounds/sf2/FluidR3_GM.sf2").exists(),
                                  reason="Debian's fluid-soundfont-gm is not installed")]


def needs_guides(test):
    """A model that follows guides (ACE-Step, diffusers) and FluidSynth with a GM soundfont to render them."""
    for mark in GUIDE_MARKS:
        test = mark(test)
    return test


def part_smf() -> bytes:
    from fractions import Fraction

    return write_smf([Note(Fraction(q), Fraction(1, 2), 48 + q) for q in range(6)], Fraction(97), (3, 4))


class _Engine:
    name = "click"

    def info(self):
        return {"model": "click", "family": "click"}


def test_the_daemons_take_stream_keeps_the_guide_smf_beside_each_variation(tmp_path):
    pytest.importorskip("torch")
    from stemd.daemon.takeio import TakeStream
    from stemd.protocol import GenerateRequest

    smf = part_smf()
    request = GenerateRequest("r1", prompt="keys", bars=2, bpm=97, meter="3/4", seed=3, variations=2, guide=smf)
    stream = TakeStream(TakeClaims(tmp_path), request, _Engine(), variations=2, channels=2)
    stream.write(np.zeros((2, 2, 64), np.float32))
    for path in stream.finish():
        meta = json.loads(path.with_suffix(".json").read_text())
        assert meta["guide"]["file"] == path.with_suffix(".mid").name
        assert path.with_suffix(".mid").read_bytes() == smf
        assert meta["guide"]["smf_sha256"] == hashlib.sha256(smf).hexdigest()
    plain = TakeStream(TakeClaims(tmp_path), GenerateRequest("r2", prompt="keys", bars=1, seed=3), _Engine(),
                       variations=1, channels=2)
    plain.write(np.zeros((1, 2, 64), np.float32))
    assert not plain.finish()[0].with_suffix(".mid").exists()


def test_a_take_that_cannot_be_published_leaves_no_guide_behind(tmp_path):
    pytest.importorskip("torch")
    from stemd.daemon.takeio import TakeStream
    from stemd.protocol import GenerateRequest

    request = GenerateRequest("r1", prompt="keys", bars=2, bpm=97, meter="3/4", seed=3, variations=2, guide=part_smf())
    stream = TakeStream(TakeClaims(tmp_path), request, _Engine(), variations=2, channels=2)
    stream.write(np.zeros((2, 2, 64), np.float32))
    stream.paths[1].with_suffix(".json").write_text("another writer's sidecar")
    with pytest.raises(FileExistsError):
        stream.finish()
    stream.abort()
    assert not list(tmp_path.glob("*.mid")) and not list(tmp_path.glob(f"*{PARTIAL}"))


# --- the real daemon and render ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ace(tmp_path_factory):
    if importlib.util.find_spec("diffusers") is None:
        pytest.skip("diffusers is not installed")
    folder = tmp_path_factory.mktemp("acestep-tiny")
    done = subprocess.run(STEMD + ["make-test-model", str(folder), "--arch", "acestep-tiny"], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return folder


@needs_guides
@pytest.mark.timeout(900)
def test_the_daemons_out_folder_keeps_a_midi_guide_beside_the_take(ace, start_daemon):
    from stemd import protocol

    daemon = start_daemon(model=str(ace))
    smf = part_smf()
    client = TcpClient(daemon.port, timeout=600)
    client.send(protocol.GENERATE, "g1", "prompt", "warm keys", "bars", 2, "bpm", 97, "meter", "3/4", "seed", 5,
                "guide", smf)
    replies = client.until(protocol.DONE, "g1", timeout=600)
    assert not [m for m in replies if m.address == protocol.ERROR], replies
    takes = sorted(daemon.out.glob("*.wav"))
    assert len(takes) == 1
    meta = json.loads(takes[0].with_suffix(".json").read_text())
    kept = daemon.out / meta["guide"]["file"]
    assert kept == takes[0].with_suffix(".mid") and kept.read_bytes() == smf
    assert meta["guide"]["smf_sha256"] == hashlib.sha256(smf).hexdigest()
    client.close()


def render(model: Path, out: Path, *extra) -> None:
    done = subprocess.run(STEMD + ["render", "--model", str(model), "--bars", "2", "--bpm", "97", "--meter", "3/4",
                                   "--seed", "3", "--out", str(out), *extra], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr


@needs_guides
@pytest.mark.timeout(1200)
def test_the_manifest_and_the_contact_sheet_show_the_chords_or_the_kept_smf(ace, tmp_path):
    render(ace, tmp_path / "chords", "--chords", "Am | F")
    smf = tmp_path / "part.mid"
    smf.write_bytes(part_smf())
    render(ace, tmp_path / "smf", "--guide", str(smf))

    chords = json.loads((tmp_path / "chords" / "manifest.json").read_text())["takes"][0]
    assert chords["guide"] == {"chords": "Am | F"}
    row = next(csv.DictReader(open(tmp_path / "chords" / "manifest.csv")))
    assert row["guide"] == "Am | F"
    page = (tmp_path / "chords" / "contact.html").read_text()
    assert "<tr><th>chords</th><td>Am | F</td></tr>" in page

    take = json.loads((tmp_path / "smf" / "manifest.json").read_text())["takes"][0]
    sha = hashlib.sha256(smf.read_bytes()).hexdigest()
    assert take["guide"] == {"file": f'{take["name"]}.mid', "smf_sha256": sha}
    assert (tmp_path / "smf" / take["guide"]["file"]).read_bytes() == smf.read_bytes()
    row = next(csv.DictReader(open(tmp_path / "smf" / "manifest.csv")))
    assert row["guide"] == f'{take["name"]}.mid sha256:{sha}'
    page = (tmp_path / "smf" / "contact.html").read_text()
    assert f"<tr><th>guide</th><td>{take['name']}.mid sha256:{sha}</td></tr>" in page
