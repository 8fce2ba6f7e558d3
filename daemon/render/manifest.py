"""The manifest: every finished take of a job, as ``manifest.json`` and ``manifest.csv`` next to the takes.

It holds only what is a function of the job and the audio (no timestamps, hosts or timings: those
stay in each take's sidecar), in the job's matrix order, so the same job gives the same manifest
whether it ran in one go, resumed after a kill, or ran on a Ray cluster.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from stemd.daemon.render.files import render_facts
from stemd.daemon.render.job import RenderJob, Take
from stemd.takes import atomic_write

COLUMNS = ("name", "file", "model", "model_name", "prompt", "musical_key", "seed", "variation", "bars", "tempo",
           "meter", "start_bar", "sample_rate", "channels", "frames", "seconds", "format", "lufs", "stems", "take_key",
           "sha256", "license", "commercial_use", "test_model", "guide")
MANIFEST_JSON, MANIFEST_CSV = "manifest.json", "manifest.csv"


def entry(take: Take, sidecar: dict) -> dict:
    """A take's manifest row from its sidecar."""
    loud = render_facts(sidecar).get("loudness") or {}
    return {
        "name": take.name, "file": sidecar["file"], "model": take.batch.entry.source,
        "model_name": take.batch.model_name, "prompt": sidecar["prompt"],
        "musical_key": (sidecar.get("request") or {}).get("key", ""),
        "seed": sidecar["seed"], "variation": take.variation + 1, "bars": sidecar["bars"],
        "tempo": sidecar["tempo"], "meter": sidecar["meter"], "start_bar": sidecar["start_bar"],
        "sample_rate": sidecar["sample_rate"], "channels": sidecar["channels"], "frames": sidecar["frames"],
        "seconds": round(sidecar["frames"] / sidecar["sample_rate"], 6), "format": sidecar["format"],
        "lufs": loud.get("lufs"), "stems": {k: v["file"] for k, v in sidecar.get("stems", {}).items()},
        "take_key": take.key, "sha256": sidecar["sha256"],
        "license": (sidecar.get("license") or {}).get("name", ""), "commercial_use": bool(sidecar.get("commercial_use")),
        "test_model": bool((sidecar.get("engine") or {}).get("test_model")),
        "guide": guide_entry(sidecar.get("guide")),
    }


def guide_entry(guide) -> dict | None:
    """What the take followed, from its sidecar's ``guide``: ``{"chords": text}``, or the kept SMF as
    ``{"file": NAME.mid, "smf_sha256": hex}``; None without a guide."""
    if not guide or not (guide.get("chords") or guide.get("smf_sha256")):
        return None
    if guide.get("chords"):
        return {"chords": guide["chords"]}
    return {"file": guide.get("file", ""), "smf_sha256": guide["smf_sha256"]}


def guide_text(guide: dict | None) -> str:
    """A guide entry in one line: the chords, or ``NAME.mid sha256:HEX``."""
    if not guide:
        return ""
    return guide.get("chords") or f'{guide["file"]} sha256:{guide["smf_sha256"]}'.strip()


def write_manifest(folder: Path, job: RenderJob, takes: list[Take], rows: dict) -> Path:
    """``rows`` maps take name -> entry for finished takes; ``takes`` is the whole plan, in order."""
    ordered = [rows[t.name] for t in takes if t.name in rows]
    described = job.describe()
    described.pop("out")
    doc = {"job": described, "planned": len(takes), "finished": len(ordered), "takes": ordered}
    folder = Path(folder)
    atomic_write(folder / MANIFEST_JSON, (json.dumps(doc, indent=2) + "\n").encode())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in ordered:
        writer.writerow({**row, "stems": ";".join(row["stems"].values()), "guide": guide_text(row.get("guide"))})
    atomic_write(folder / MANIFEST_CSV, buf.getvalue().encode())
    return folder / MANIFEST_JSON


def read_manifest(folder: Path) -> dict:
    return json.loads((Path(folder) / MANIFEST_JSON).read_text())
