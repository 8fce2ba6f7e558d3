"""A model's weights fingerprint: one SHA-256 over the SHA-256 of every weight file, for sidecars.

Files in the Hugging Face cache are stored under their content's SHA-256 (the blob a snapshot links
to), so their digest costs nothing; a local folder's files are hashed once and the digests kept in
``$STEMD_CACHE/weights.json`` keyed by path, size and modification time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from stemd.takes import file_sha256

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".th", ".ckpt")


def cache_root() -> Path:
    if os.environ.get("STEMD_CACHE"):
        return Path(os.environ["STEMD_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base).expanduser() / "stemd"


def _file_digest(path: Path, kept: dict) -> str:
    real = path.resolve()
    if re.fullmatch(r"[0-9a-f]{64}", real.name) and real.parent.name == "blobs":
        return real.name                      # the HF cache names LFS blobs by their SHA-256
    stat = real.stat()
    key = f"{real}:{stat.st_size}:{stat.st_mtime_ns}"
    if key not in kept:
        kept[key] = file_sha256(real)
    return kept[key]


def weights_sha256(folder: Path) -> str:
    """SHA-256 over (relative path, SHA-256) of every weight file under ``folder``, sorted by path."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    store = cache_root() / "weights.json"
    try:
        kept = json.loads(store.read_text())
    except (OSError, ValueError):
        kept = {}
    before = len(kept)
    total = hashlib.sha256()
    for path in files:
        total.update(f"{path.relative_to(folder).as_posix()}\0{_file_digest(path, kept)}\n".encode())
    if len(kept) != before:
        try:
            store.parent.mkdir(parents=True, exist_ok=True)
            from stemd.takes import atomic_write

            atomic_write(store, json.dumps(kept, indent=1, sort_keys=True).encode())
        except OSError:
            pass                              # a read-only cache only costs the next start a re-hash
    return total.hexdigest()
