"""The models a daemon serves, by name: ``--model [NAME=]SOURCE`` and the ``--models FILE`` table.

A :class:`ModelEntry` is what a request's ``model`` names: its source (``click``, a folder, a hub id)
and optionally the device it must run on, its dtype and MusicGen's decoding backend. Nothing here
looks at the disk beyond reading the models file; the pool locates each entry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from stemd.models.base import EngineError
from stemd.protocol import MODEL_NAME


class ModelsFileError(EngineError):
    code = "bad_arguments"


@dataclass(frozen=True)
class ModelEntry:
    """One model a daemon serves: ``name`` (what requests say), ``source`` (``click``, a folder, a hub
    id), and optionally the device it must run on, its dtype and MusicGen's decoding backend."""

    name: str
    source: str
    device: Optional[str] = None
    dtype: Optional[str] = None
    backend: Optional[str] = None


def derive_name(source: str) -> str:
    """A model's name when none is given: ``click``; a folder's name; a hub id's repo part
    (facebook/musicgen-small -> musicgen-small), made fit for the protocol."""
    if source == "click":
        return "click"
    path = Path(source).expanduser()
    base = path.resolve().name if path.exists() else source.rstrip("/").rsplit("/", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9_.\-]+", "-", base).strip("-._")[:64] or "model"
    return name if name[0].isalnum() else "m" + name[:63]


def parse_model_arg(text: str) -> ModelEntry:
    """``--model SOURCE`` or ``--model NAME=SOURCE``."""
    name, sep, source = text.partition("=")
    if not sep or "/" in name or not name or Path(text).expanduser().exists():
        return ModelEntry(derive_name(text), text)
    return ModelEntry(check_name(name), source)


def check_name(name: str) -> str:
    if not MODEL_NAME.fullmatch(name):
        raise ModelsFileError(f"model name {name!r}: 1-64 letters, digits, _ . - starting with a letter or digit")
    return name


def read_models_file(path: Path) -> list[ModelEntry]:
    """``--models FILE``: a TOML table of models, in the order they are served (the first is the default)::

        [models]
        drums = "/models/musicgen-drums"                        # NAME = SOURCE
        loops = { source = "stabilityai/stable-audio-3-small-music", device = "cuda:1", dtype = "bfloat16" }
        click = "click"
    """
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    try:
        data = tomllib.loads(Path(path).expanduser().read_text())
    except OSError as e:
        raise ModelsFileError(f"cannot read models file {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ModelsFileError(f"{path}: {e}") from None
    table = data.get("models")
    if not isinstance(table, dict) or not table:
        raise ModelsFileError(f"{path}: needs a [models] table of NAME = \"SOURCE\" (or NAME = {{ source = ... }})")
    out = []
    for name, value in table.items():
        check_name(name)
        if isinstance(value, str):
            value = {"source": value}
        if not isinstance(value, dict) or not isinstance(value.get("source"), str):
            raise ModelsFileError(f"{path}: model {name!r} needs a source (a folder, a hub id or click)")
        unknown = sorted(set(value) - {"source", "device", "dtype", "backend"})
        if unknown:
            raise ModelsFileError(f"{path}: model {name!r} has unknown keys {', '.join(unknown)} "
                                  "(it takes source, device, dtype, backend)")
        out.append(ModelEntry(name, value["source"], value.get("device"), value.get("dtype"), value.get("backend")))
    return out


def unique_entries(entries: list[ModelEntry]) -> list[ModelEntry]:
    seen: dict[str, ModelEntry] = {}
    for entry in entries:
        if entry.name in seen:
            raise ModelsFileError(f"two models are named {entry.name!r} ({seen[entry.name].source} and "
                                  f"{entry.source}): name one of them, --model NAME=SOURCE")
        seen[entry.name] = entry
    return list(seen.values())
