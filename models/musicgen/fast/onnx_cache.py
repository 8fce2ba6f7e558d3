"""Exported ONNX models kept on disk, so an export (~25 s for musicgen-small) happens once per model.

An entry is a folder ``<root>/onnx/<kind>-<key>/`` holding the exported files and ``manifest.json``
(each file's size and SHA-256). ``key`` hashes everything the export depends on: the module's weights
and configuration (``weights_digest``), the exported format's version, the shapes it was exported for,
and the torch, onnx and ONNX Runtime versions. An export is written into a temporary folder beside the
entry and renamed into place once complete, so a reader sees a whole entry or none; an entry whose
files do not match its manifest (a partial copy, a corrupt file) is deleted and exported again.

``<root>`` is ``$STEMD_CACHE``, else ``$XDG_CACHE_HOME/stemd``, else ``~/.cache/stemd``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch

from stemd.models.weights import cache_root
from stemd.takes import file_sha256

log = logging.getLogger("stemd.models.onnx")
MANIFEST = "manifest.json"


def weights_digest(module: torch.nn.Module, config: object = None) -> str:
    """SHA-256 of a module's parameters and buffers (names, dtypes, shapes, bytes) and ``repr(config)``."""
    h = hashlib.sha256(repr(config).encode())
    with torch.no_grad():
        for name, t in sorted(module.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
            if t.numel():
                h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def runtime_versions() -> dict:
    import onnx
    import onnxruntime

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def entry_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _valid(folder: Path, main: str) -> bool:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
        if main not in files:
            return False
        for name, meta in files.items():
            path = folder / name
            if path.stat().st_size != meta["size"] or file_sha256(path) != meta["sha256"]:
                return False
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


@contextmanager
def quiet_exporter():
    """The exporter and its optimiser log every rewrite at INFO and warn about torch internals: keep a
    daemon's log to what stemd says."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def cached_export(kind: str, parts: dict, export: Callable[[Path], None], main: str = "model.onnx",
                  root: Path | None = None) -> tuple[Path, bool]:
    """The path of ``main`` in the entry for ``(kind, parts)``, exporting it first when there is no valid
    entry: ``export(path)`` writes ``path`` (and any external-data files beside it). Returns
    ``(path, exported_now)``."""
    onnx_dir = (root or cache_root()) / "onnx"
    final = onnx_dir / f"{kind}-{entry_key(parts)}"
    if _valid(final, main):
        return final / main, False
    if final.exists():
        log.warning("ONNX cache entry %s is incomplete or corrupt: exporting it again", final)
        shutil.rmtree(final, ignore_errors=True)
    onnx_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=onnx_dir))
    log.info("exporting %s to %s: once for these weights and versions (a minute or more for a large model)",
             kind, final)
    try:
        t0 = time.perf_counter()
        with quiet_exporter():
            export(tmp / main)
        files = {}
        for path in sorted(tmp.iterdir()):
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            files[path.name] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
        manifest = {"kind": kind, "parts": parts, "files": files, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "export_seconds": round(time.perf_counter() - t0, 2)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        try:
            os.rename(tmp, final)
        except OSError:          # another process put a complete entry there first
            if not _valid(final, main):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("exported %s to %s in %.1f s", kind, final, manifest["export_seconds"])
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final / main, True
