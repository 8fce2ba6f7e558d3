"""Picked takes: ``picks.json`` from the contact sheet's "Export picks", turned into an ``accepted/`` folder.

``stemd render --accept picks.json`` finds the render folder (``--out``, else the folder the picks
file names, else the folder the picks file sits in), checks every pick against that folder's
manifest and its audio's SHA-256 (a take re-rendered since it was picked is refused, not copied),
then writes ``accepted/``: each picked take's audio, sidecar and stems, and ``accepted.json`` with
their manifest rows (model, licence, commercial use, test model) in the sheet's order. A second
``--accept`` replaces the first: ``accepted/`` holds exactly the last picks.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from stemd.daemon.render.contact import PICKS_FORMAT
from stemd.daemon.render.job import JobError
from stemd.daemon.render.manifest import MANIFEST_JSON, read_manifest
from stemd.takes import atomic_write, file_sha256, inside

ACCEPTED, ACCEPTED_JSON = "accepted", "accepted.json"


@dataclass
class Accepted:
    folder: Path                                  # the render folder
    files: list = field(default_factory=list)     # the accepted takes' audio in accepted/, in sheet order
    removed: int = 0                              # files of earlier picks no longer picked


def read_picks(path: Path) -> dict:
    try:
        picks = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise JobError(f"no picks file {path}") from None
    except (OSError, ValueError) as e:
        raise JobError(f"{path} is not a picks file (JSON): {e}") from None
    if not isinstance(picks, dict) or picks.get("format") != PICKS_FORMAT or picks.get("version") != 1:
        raise JobError(f"{path} is not a picks file: export one with the contact sheet's 'Export picks'")
    accepted = picks.get("accepted")
    if not isinstance(accepted, list) or not all(isinstance(p, dict) and isinstance(p.get("name"), str)
                                                 for p in accepted):
        raise JobError(f"{path}: 'accepted' must be a list of takes, each with its name")
    if not accepted:
        raise JobError(f"{path} picks no take")
    return picks


def render_folder(picks_path: Path, picks: dict, out: Optional[Path]) -> Path:
    """Where the picked takes are: ``out``, else the folder named in the picks, else the picks' own folder."""
    candidates = [Path(out)] if out is not None else [Path(str(picks.get("folder") or "")), Path(picks_path).parent]
    for folder in candidates:
        if str(folder) and (folder / MANIFEST_JSON).is_file():
            return folder
    tried = " or ".join(str(c) for c in candidates if str(c))
    raise JobError(f"no {MANIFEST_JSON} in {tried}: give the render folder the picks came from with --out")


def _take_files(row: dict) -> list[str]:
    """A manifest row's files, relative to its folder: audio, sidecar, stems."""
    return [row["file"], f"{row['name']}.json", *row.get("stems", {}).values()]


def accept_picks(picks_path: Path, out: Optional[Path] = None) -> Accepted:
    picks = read_picks(picks_path)
    folder = render_folder(picks_path, picks, out)
    rows = {row["name"]: row for row in read_manifest(folder)["takes"]}
    chosen = []
    for pick in picks["accepted"]:
        row = rows.get(pick["name"])
        if row is None:
            raise JobError(f"take {pick['name']} is not in {folder / MANIFEST_JSON}: were the picks made from "
                           "another render folder?")
        if pick.get("sha256") not in (None, row["sha256"]) or file_sha256(inside(folder, row["file"])) != row["sha256"]:
            raise JobError(f"take {row['name']} changed since it was picked (its audio's SHA-256 differs): "
                           "pick again from the new contact.html")
        if row not in chosen:
            chosen.append(row)
    dest = folder / ACCEPTED
    dest.mkdir(exist_ok=True)
    result = Accepted(folder)
    keep = set()
    for row in chosen:
        for rel in _take_files(row):
            target = inside(dest, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(target, inside(folder, rel).read_bytes())
            keep.add(target)
        result.files.append(inside(dest, row["file"]))
    result.removed = _remove_unpicked(dest, keep)
    doc = {"picks": str(Path(picks_path).resolve()), "folder": str(folder.resolve()), "takes": chosen}
    atomic_write(dest / ACCEPTED_JSON, json.dumps(doc, indent=2) + "\n")
    return result


def _remove_unpicked(dest: Path, keep: set) -> int:
    """Delete what an earlier ``--accept`` copied that these picks do not hold."""
    try:
        earlier = json.loads((dest / ACCEPTED_JSON).read_text())["takes"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    removed = 0
    for row in earlier:
        for rel in _take_files(row):
            path = inside(dest, rel)
            if path not in keep and path.is_file():
                path.unlink()
                removed += 1
                if path.parent != dest and not any(path.parent.iterdir()):
                    shutil.rmtree(path.parent, ignore_errors=True)
    return removed
