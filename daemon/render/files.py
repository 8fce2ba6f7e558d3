"""A rendered take as files: audio (WAV or FLAC), its stems, and a JSON sidecar, written atomically.

A render worker returns a :class:`TakeFiles` (bytes in memory, so a Ray worker on another machine
can hand it back) and :func:`write_take_files` puts it on disk in an order that makes a crash
harmless: stems, then the sidecar, then the take's own audio file, each written to ``NAME.partial``
and renamed into place.

**The rule for "finished"** (:func:`is_finished`): a take is finished when its audio file exists
under its final name, its sidecar exists and records the same ``render.key`` (the hash of the parameters
that shaped it; the first render folders record it at the sidecar's top level, :func:`render_facts`), and
every stem the sidecar lists exists. A ``.partial`` file is never a take;
a file left by a job with other parameters is redone.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from stemd.takes import atomic_write, inside, remove_leftovers, wav_bytes, write_take_file


def audio_bytes(audio: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """``audio`` float32 ``(channels, n)`` as a file: float32/pcm24/pcm16 WAV, or flac (24-bit)/flac16."""
    if fmt in ("float32", "pcm24", "pcm16"):
        return wav_bytes(audio, sample_rate, fmt)
    import soundfile

    buf = io.BytesIO()
    subtype = "PCM_16" if fmt == "flac16" else "PCM_24"
    soundfile.write(buf, np.clip(np.asarray(audio, np.float32).T, -1.0, 1.0), sample_rate, subtype=subtype,
                    format="FLAC")
    return buf.getvalue()


@dataclass
class TakeFiles:
    """One take, ready to write: ``name`` + extension, its sidecar, and stems by name."""

    name: str
    extension: str
    audio: bytes
    sidecar: dict
    stems: dict = field(default_factory=dict)  # stem name -> file bytes
    guide: Optional[bytes] = None              # the guide SMF, kept beside the take as NAME.mid

    @property
    def file(self) -> str:
        return f"{self.name}.{self.extension}"

    def stem_file(self, stem: str) -> str:
        return f"{self.name}.stems/{stem}.{self.extension}"


def write_take_files(folder: Path, take: TakeFiles) -> Path:
    """Stems, then sidecar, then audio (the audio's final name is what makes the take finished)."""
    stems = {stem: (take.stem_file(stem), data) for stem, data in take.stems.items()}
    if take.guide is not None:
        atomic_write(inside(Path(folder), f"{take.name}.mid"), take.guide)
    return write_take_file(folder, take.file, take.audio, take.sidecar, stems or None)


def read_sidecar(folder: Path, name: str) -> dict | None:
    try:
        return json.loads((Path(folder) / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None


def render_facts(meta: dict) -> dict:
    """What only a render knows of a take (its ``key`` in the job, ``loudness`` ...): the sidecar's ``render``;
    a sidecar of the first render folders holds these at its top level."""
    return meta["render"] if isinstance(meta.get("render"), dict) else meta


def is_finished(folder: Path, name: str, extension: str, keys: str | tuple[str, ...]) -> bool:
    """True when ``name.extension`` exists under its final name with a sidecar that records ``keys`` (one key,
    or any of ``Take.keys``) and all its stems (see the module docstring)."""
    keys = (keys,) if isinstance(keys, str) else tuple(keys)
    folder = Path(folder)
    if not (folder / f"{name}.{extension}").is_file():
        return False
    meta = read_sidecar(folder, name)
    if not meta or render_facts(meta).get("key") not in keys:
        return False
    return all((folder / s["file"]).is_file() for s in meta.get("stems", {}).values())


def remove_partials(folder: Path) -> int:
    """Delete what a killed run left (``stemd.takes.remove_leftovers``: partial files of writers that
    are gone, never a finished take nor a running writer's files); returns how many."""
    return len(remove_leftovers(folder))
