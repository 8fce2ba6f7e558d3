"""stemd render as a batch tool, with the click engine: the matrix, resuming, the manifest, the rule for a
finished take, job files and flags, loudness, and clear errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from stemd.cli import main
from stemd.daemon.render.files import is_finished
from stemd.daemon.render.job import make_job
from stemd.daemon.render.manifest import read_manifest
from stemd.daemon.render.runner import run_job
from stemd.timing import Grid

MATRIX = ["--model", "click", "--prompt", "dusty drums", "--prompt", "warm bass", "--seeds", "1,2,3",
          "--bars", "2,4", "--bpm", "137.5", "--sample-rate", "44100", "--no-contact-sheet"]


def stemd(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stemd", "render", *map(str, args)], capture_output=True,
                          text=True, **kw)


def finished_files(out: Path) -> dict:
    """name -> (inode, mtime_ns) of every take audio file: a redone take gets a new inode."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*.wav")}


def render_killed_after(args: list, out: Path, takes: int, timeout: float = 180) -> dict:
    """Start ``stemd render ARGS`` and SIGKILL it once ``takes`` takes exist in ``out``; returns them."""
    proc = subprocess.Popen([sys.executable, "-m", "stemd", "render", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while len(list(out.glob("*.wav"))) < takes and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    return finished_files(out)


def test_a_2x3x2_matrix_gives_12_exact_takes_and_a_manifest(tmp_path):
    out = tmp_path / "takes"
    proc = stemd(*MATRIX, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.split()) == 12
    manifest = read_manifest(out)
    assert manifest["planned"] == manifest["finished"] == 12
    grid = Grid("137.5")
    for take in manifest["takes"]:
        data, rate = soundfile.read(out / take["file"], always_2d=True)
        assert rate == 44100 and data.shape == (grid.span_samples(0, take["bars"], 44100), 2)
        assert take["frames"] == data.shape[0]
    combos = {(t["prompt"], t["seed"], t["bars"]) for t in manifest["takes"]}
    assert combos == {(p, s, b) for p in ("dusty drums", "warm bass") for s in (1, 2, 3) for b in (2, 4)}
    with open(out / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == [t["name"] for t in manifest["takes"]]


def test_a_rerun_skips_every_finished_take(tmp_path):
    out = tmp_path / "takes"
    assert stemd(*MATRIX, "--out", out).returncode == 0
    before = finished_files(out)
    again = stemd(*MATRIX, "--out", out)
    assert again.returncode == 0 and again.stdout == ""
    assert "0 takes written, 12 already finished" in again.stderr
    assert finished_files(out) == before


def test_killing_a_render_midway_loses_nothing_and_a_rerun_finishes_only_the_rest(tmp_path):
    out = tmp_path / "takes"
    # long, high-rate takes so that the kill lands while takes are still being made
    args = [*MATRIX[:-5], "--bpm", "50", "--sample-rate", "192000", "--no-contact-sheet", "--out", out]
    survivors = render_killed_after(args, out, takes=3)
    assert 3 <= len(survivors) < 12, "the kill should land mid-render"
    manifest = read_manifest(out)
    assert {t["file"] for t in manifest["takes"]} <= set(survivors)  # never lists a take that is not there

    again = stemd(*args)
    assert again.returncode == 0, again.stderr
    written = {Path(p).name for p in again.stdout.split()}
    assert written.isdisjoint(survivors)
    assert len(written) + len(survivors) == 12
    after = finished_files(out)
    assert all(after[name] == stat for name, stat in survivors.items())  # finished takes untouched
    assert read_manifest(out)["finished"] == 12
    assert not list(out.glob("*.partial"))


def small_job(out: Path, **kw):
    values = {"models": ["click"], "prompts": ["a", "b"], "seeds": [1], "bars": [1], "sample_rate": 8000,
              "bpm": "120", "out": str(out), "contact_sheet": False}
    values.update(kw)
    return make_job(values)


def test_a_take_is_finished_only_under_its_final_name_with_a_matching_sidecar(tmp_path):
    job = small_job(tmp_path)
    take_a, take_b = [b.takes[0] for b in job.batches()]
    run_job(job, progress=False)
    assert is_finished(tmp_path, take_a.name, "wav", take_a.key)

    # a half-written file left by a kill: a .partial, never a take
    wav = tmp_path / f"{take_a.name}.wav"
    os.replace(wav, tmp_path / f"{take_a.name}.wav.partial")
    assert not is_finished(tmp_path, take_a.name, "wav", take_a.key)
    # an audio file without its sidecar, or with the sidecar of other parameters
    (tmp_path / f"{take_b.name}.json").unlink()
    assert not is_finished(tmp_path, take_b.name, "wav", take_b.key)

    result = run_job(job, progress=False)
    assert sorted(p.name for p in result.written) == sorted([f"{take_a.name}.wav", f"{take_b.name}.wav"])
    assert not list(tmp_path.glob("*.partial"))
    assert all(is_finished(tmp_path, t.name, "wav", t.key) for t in (take_a, take_b))


def test_changed_parameters_redo_a_take_of_the_same_name(tmp_path):
    run_job(small_job(tmp_path), progress=False)
    louder = small_job(tmp_path, lufs=-20.0)
    result = run_job(louder, progress=False)
    assert len(result.written) == 2 and result.skipped == 0
    assert read_manifest(tmp_path)["job"]["lufs"] == -20.0


def test_a_crash_inside_a_batch_keeps_finished_siblings(tmp_path, monkeypatch):
    """Variations are one batch; when only some were written, the batch is made again and only the
    missing variations are written."""
    import stemd.daemon.render.runner as runner

    job = small_job(tmp_path, prompts=["a"], variations=3)
    real, calls = runner.write_take_files, []

    def crash_on_second(folder, take):
        if len(calls) == 1:
            raise KeyboardInterrupt
        calls.append(take.name)
        return real(folder, take)

    monkeypatch.setattr(runner, "write_take_files", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_job(job, progress=False)
    monkeypatch.setattr(runner, "write_take_files", real)
    first = finished_files(tmp_path)
    assert list(first) == [f"{calls[0]}.wav"]
    assert read_manifest(tmp_path)["finished"] == 1
    result = run_job(job, progress=False)
    assert len(result.written) == 2 and finished_files(tmp_path)[f"{calls[0]}.wav"] == first[f"{calls[0]}.wav"]


def test_a_job_file_runs_and_flags_override_it(tmp_path):
    (tmp_path / "job.toml").write_text(
        '[render]\nmodels = ["click"]\nprompts = ["lofi keys", "tape hiss"]\nseeds = [7]\nbars = [1, 2]\n'
        'bpm = 90\nmeter = "7/8"\nsample_rate = 22050\nformat = "pcm24"\nout = "rendered"\n'
        'contact_sheet = false\n')
    proc = stemd(tmp_path / "job.toml", "--seeds", "3,4")
    assert proc.returncode == 0, proc.stderr
    manifest = read_manifest(tmp_path / "rendered")
    assert manifest["finished"] == 8
    assert {t["seed"] for t in manifest["takes"]} == {3, 4}
    info = soundfile.info(tmp_path / "rendered" / manifest["takes"][0]["file"])
    assert info.subtype == "PCM_24" and info.samplerate == 22050
    assert info.frames == Grid("90", "7/8").span_samples(0, 1, 22050)


def test_flac_output_and_variations(tmp_path):
    rc = main(["render", "--model", "click", "--prompt", "x", "--bars", "2", "--variations", "3",
               "--format", "flac", "--sample-rate", "48000", "--no-contact-sheet", "--out", str(tmp_path)])
    assert rc == 0
    takes = read_manifest(tmp_path)["takes"]
    assert [t["variation"] for t in takes] == [1, 2, 3]
    for t in takes:
        info = soundfile.info(tmp_path / t["file"])
        assert info.format == "FLAC" and info.subtype == "PCM_24" and info.frames == 2 * 96000


def test_loudness_normalisation_hits_the_target(tmp_path):
    run_job(small_job(tmp_path, bars=[4], lufs=-23.0, format="float32"), progress=False)
    import pyloudnorm

    takes = read_manifest(tmp_path)["takes"]
    assert len(takes) == 2                            # prompts a and b: a loop over none would pass
    for t in takes:
        data, rate = soundfile.read(tmp_path / t["file"])
        assert abs(pyloudnorm.Meter(rate).integrated_loudness(data) - (-23.0)) < 0.05
        assert abs(t["lufs"] - (-23.0)) < 0.05


def test_loudness_on_pcm_stops_at_the_peak_ceiling(tmp_path):
    run_job(small_job(tmp_path, bars=[4], lufs=-3.0, format="pcm24"), progress=False)
    take = read_manifest(tmp_path)["takes"][0]
    sidecar = json.loads((tmp_path / f"{take['name']}.json").read_text())
    assert sidecar["render"]["loudness"]["limited_by_peak"] is True
    data, _ = soundfile.read(tmp_path / take["file"])
    assert np.max(np.abs(data)) <= 10 ** (-0.1 / 20) + 1e-6


@pytest.mark.parametrize("args, words", [
    (["--bars", "0"], "bars"),
    (["--seeds", "1,x"], "whole numbers"),
    (["--format", "mp3"], "format"),
    (["--stems", "drums,flute", "--stems-model", "m.th"], "flute"),
    (["--stems", "drums"], "--stems-model"),
    (["--lufs", "3"], "lufs"),
    (["--bpm", "-5"], "tempo"),
])
def test_bad_values_are_refused_with_one_line(tmp_path, args, words):
    proc = stemd("--model", "click", *args, "--out", tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and words in proc.stderr.lower() + proc.stderr
    assert not list(tmp_path.glob("*.wav"))


def test_a_bad_job_file_is_refused_with_one_line(tmp_path):
    (tmp_path / "job.toml").write_text('models = ["click"]\nprompt_list = ["x"]\n')
    proc = stemd(tmp_path / "job.toml")
    assert proc.returncode == 2 and "unknown job key 'prompt_list'" in proc.stderr
    (tmp_path / "bad.toml").write_text('models = ["click"\n')
    proc = stemd(tmp_path / "bad.toml")
    assert proc.returncode == 2 and "not valid TOML" in proc.stderr


def test_the_decoding_backend_is_a_job_value_read_from_the_environment_once(tmp_path, monkeypatch):
    import argparse

    from stemd.daemon.cmd_render import add_arguments, job_from_args

    def job(*argv):
        p = argparse.ArgumentParser()
        add_arguments(p)
        return job_from_args(p.parse_args(["--model", "click", "--out", str(tmp_path), *argv]))

    monkeypatch.delenv("STEMD_DECODE_BACKEND", raising=False)   # conftest's eager
    assert job().backend is None
    assert job("--backend", "onnx").backend == "onnx"
    monkeypatch.setenv("STEMD_DECODE_BACKEND", "compiled")
    assert job().backend == "compiled" and job("--backend", "eager").backend == "eager"
    monkeypatch.delenv("STEMD_DECODE_BACKEND")
    with pytest.raises(Exception, match="backend must be one of"):
        make_job({"models": ["click"], "backend": "tensorrt"}).batches()
    assert "STEMD_DECODE_BACKEND" not in os.environ     # the job carries it; render sets nothing


def test_render_without_ray_never_imports_ray_or_demucs(tmp_path):
    code = ("import sys; from stemd.cli import main; "
            f"rc = main(['render', '--model', 'click', '--bars', '1', '--out', {str(tmp_path)!r}]); "
            "print(rc, 'ray' in sys.modules, 'demucs' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-3:] == ["0", "False", "False"]


def test_a_terminal_gets_a_progress_bar_with_rate_and_eta_and_a_pipe_gets_none(tmp_path):
    import pty

    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "stemd", "render", *MATRIX, "--out", str(tmp_path / "tty")],
                            stdout=subprocess.PIPE, stderr=secondary, env={**os.environ, "COLUMNS": "160"})
    os.close(secondary)
    seen = b""
    while True:
        try:
            data = os.read(primary, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        seen += data
    proc.wait()
    os.close(primary)
    text = seen.decode(errors="replace")
    assert proc.returncode == 0
    assert "takes/min" in text and "ETA" in text and "12/12" in text

    piped = stemd(*MATRIX, "--out", tmp_path / "pipe")
    assert piped.returncode == 0
    assert piped.stderr.count("\n") == 1 and piped.stderr.startswith("stemd render: 12 takes written")


def test_a_second_render_into_the_same_folder_is_refused_while_one_runs(tmp_path):
    from stemd.daemon.render.runner import folder_lock

    with folder_lock(tmp_path):  # as a running render holds it
        proc = stemd("--model", "click", "--bars", "1", "--out", tmp_path)
    assert proc.returncode == 2 and "another stemd render is writing to" in proc.stderr
    assert not list(tmp_path.glob("*.wav"))
    assert stemd("--model", "click", "--bars", "1", "--out", tmp_path).returncode == 0


def test_models_in_a_render_have_names_in_take_names_and_sidecars(tmp_path):
    out = tmp_path / "takes"
    proc = stemd("--model", "metronome=click", "--model", "click", "--bars", "1", "--bpm", "97", "--meter", "3/4",
                 "--key", "A minor", "--no-contact-sheet", "--out", out)
    assert proc.returncode == 0, proc.stderr
    rows = read_manifest(out)["takes"]
    assert sorted((r["model_name"], r["model"], r["musical_key"]) for r in rows) == [
        ("click", "click", "A minor"), ("metronome", "click", "A minor")]
    assert all(len(r["take_key"]) >= 16 and r["take_key"] != "A minor" for r in rows)
    metas = [json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.name != "manifest.json"]
    assert sorted((m["model_name"], m["model"], m["family"]) for m in metas) == [
        ("click", "click", "click"), ("metronome", "click", "click")]
    assert sorted(p.name.split("_")[1] for p in out.glob("*.wav")) == ["click", "metronome"]


def test_a_rendered_takes_sidecar_is_the_daemons_schema_plus_the_renders_own_key(start_daemon, tmp_path):
    """One sidecar schema: what ``stemd render`` writes beside a take has every field ``stemd serve`` writes
    for the same request, the same values for the model and the music, and adds only its file hash and,
    under ``render``, what only a render knows."""
    from daemon_fixtures import TcpClient

    out = tmp_path / "render"
    proc = stemd("--model", "click", "--bars", "2", "--bpm", "97", "--meter", "7/8", "--seeds", "4",
                 "--prompt", "odd meter", "--no-contact-sheet", "--out", out)
    assert proc.returncode == 0, proc.stderr
    rendered = json.loads(next(p for p in out.glob("*.json") if p.name != "manifest.json").read_text())
    daemon = start_daemon()
    client = TcpClient(daemon.port)
    client.send("/stemd/generate", "r1", "bars", 2, "bpm", 97, "meter", "7/8", "seed", 4, "prompt", "odd meter")
    take = next(m.args[2] for m in client.until("/stemd/done", "r1") if m.address == "/stemd/take")
    served = json.loads(Path(take).with_suffix(".json").read_text())
    assert set(rendered) - set(served) == {"render", "sha256"} and set(served) <= set(rendered)
    assert set(rendered["render"]) >= {"key", "name", "seconds", "host"}
    same = ("model", "model_name", "family", "license", "commercial_use", "engine", "prompt", "seed", "tempo",
            "tempo_exact", "meter", "bars", "start_bar", "frames", "sample_rate", "channels", "format")
    assert {k: rendered[k] for k in same} == {k: served[k] for k in same}


def test_a_render_refuses_a_key_its_models_family_lacks_before_it_writes_a_take(tmp_path):
    proc = stemd("--model", "click", "--bars", "1", "--bpm", "97", "--meter", "7/8", "--steps", "4",
                 "--no-contact-sheet", "--out", tmp_path / "out")
    assert proc.returncode == 2 and "unsupported_key: click (click) has no steps" in proc.stderr, proc.stderr
    assert not list((tmp_path / "out").glob("*.wav"))
