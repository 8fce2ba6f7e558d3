"""A rerun of ``stemd render`` over a folder made by the first render sidecars (before a render's own fields
went under ``render`` and before guides were generate keys) keeps its finished takes instead of making them
again, and its manifest still reads their loudness. The click engine, 97 BPM 3/4."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

JOB = ["--model", "click", "--prompt", "dusty drums", "--seeds", "1,2", "--bars", "2", "--bpm", "97", "--meter",
       "3/4", "--sample-rate", "44100", "--lufs", "-20", "--no-contact-sheet"]
#: the keys `stemd render JOB` recorded at the sidecars' top level in stemd before commit ec05204 (run there)
OLD_KEYS = {"dusty-drums_click_2bar_seed1_v1": "7ffe65d4c74fe08a:v0",
            "dusty-drums_click_2bar_seed2_v1": "0204fd43886cbc37:v0"}


def render(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stemd", "render", *JOB, "--out", str(out)], capture_output=True,
                          text=True, timeout=300)


def as_first_render_sidecar(meta: dict, key: str) -> dict:
    """A sidecar as the first render folders have it: the render's fields at the top level (``key``, ``name``,
    ``loudness``, ``render_seconds`` ...), the model's source as ``model``, a request without the guide keys."""
    meta = dict(meta)
    facts = meta.pop("render")
    meta.update(key=key, name=facts["name"], model=facts["source"], loudness=facts["loudness"],
                render_seconds=facts["seconds"], batch_variations=facts["batch_variations"], host=facts["host"])
    meta["request"] = {k: v for k, v in meta["request"].items() if k not in ("guide", "chords", "guide_strength")}
    return meta


def test_a_rerun_over_a_first_render_folder_keeps_its_takes(tmp_path):
    out = tmp_path / "takes"
    assert render(out).returncode == 0
    for name, key in OLD_KEYS.items():
        sidecar = out / f"{name}.json"
        sidecar.write_text(json.dumps(as_first_render_sidecar(json.loads(sidecar.read_text()), key), indent=2))
    # one old take made with other parameters (another key) is made again; the other is kept as it is
    stale = out / "dusty-drums_click_2bar_seed2_v1.json"
    stale.write_text(stale.read_text().replace(OLD_KEYS["dusty-drums_click_2bar_seed2_v1"], "0123456789abcdef:v0"))
    before = {p.name: p.stat().st_ino for p in out.glob("*.wav")}

    again = render(out)
    assert again.returncode == 0, again.stderr
    assert "1 takes written, 1 already finished" in again.stderr, again.stderr
    after = {p.name: p.stat().st_ino for p in out.glob("*.wav")}
    assert after["dusty-drums_click_2bar_seed1_v1.wav"] == before["dusty-drums_click_2bar_seed1_v1.wav"]
    assert after["dusty-drums_click_2bar_seed2_v1.wav"] != before["dusty-drums_click_2bar_seed2_v1.wav"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [t["lufs"] for t in manifest["takes"]] == [-20.0, -20.0]       # the old take's loudness, read too
