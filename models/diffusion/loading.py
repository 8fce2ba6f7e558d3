"""Finding a diffusers pipeline: a local folder with ``model_index.json``, or a snapshot in the HF cache.

stemd reads checkpoints and never downloads them at run time: a model that is not on this machine is
one line naming where stemd looked and the command that fetches it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

from stemd.models.base import ModelNotFound
from stemd.models.registry import HUB_ID
from stemd.models.releases import release

#: ``model_index.json`` ``_class_name`` -> stemd's family
PIPELINE_FAMILIES = {
    "StableAudio3Pipeline": "stable-audio-3",
    "StableAudio3InpaintPipeline": "stable-audio-3",
    "StableAudio3AudioToAudioPipeline": "stable-audio-3",
    "AceStepPipeline": "ace-step",
}

#: hub ids that name a diffusion family before anything is on disk (for the fetch hint)
HUB_FAMILIES = (
    (re.compile(r"^stabilityai/stable-audio-3", re.I), "stable-audio-3"),
    (re.compile(r"^ace-step/", re.I), "ace-step"),
)

FETCH_HINTS = {
    "stable-audio-3": (
        "accept the licence on https://huggingface.co/{model} (a gated repo; the T5Gemma text encoder's Gemma "
        "terms too), then `hf auth login` and `stemd pull {model}`. Stability AI publishes stable-audio-tools "
        "checkpoints (model.safetensors + model_config.json): pull prints the line of diffusers' "
        "scripts/convert_stable_audio_3_to_diffusers.py that converts one; then pass --model DIR"),
    "ace-step": (
        "`stemd pull {model}`: ACE-Step/acestep-v15-xl-turbo-diffusers is served as pulled; a checkpoint in "
        "ACE-Step's own layout (ACE-Step/Ace-Step1.5) converts with diffusers' "
        "scripts/convert_ace_step_to_diffusers.py, whose line pull prints; then pass --model DIR"),
}


def hub_family(model: str) -> Optional[str]:
    for pattern, family in HUB_FAMILIES:
        if pattern.search(model):
            return family
    return None


def _hf_snapshot(model: str) -> Optional[Path]:
    if not HUB_ID.fullmatch(model):
        return None
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError:
        return None
    try:  # local_files_only: we never download at run time, whatever HF_HUB_OFFLINE says
        return Path(snapshot_download(model, local_files_only=True, cache_dir=constants.HF_HUB_CACHE))
    except Exception:
        return None


def find_pipeline(model: str) -> Optional[tuple[Path, str]]:
    """``(folder, family)`` when ``model`` is a diffusion pipeline on this machine; None when it is not one
    (it may still be a MusicGen checkpoint). A folder or snapshot with a ``model_index.json`` of a pipeline
    stemd does not serve, and a known diffusion hub id that is not cached, raise ModelNotFound."""
    path = Path(model).expanduser()
    folder = path if path.is_dir() else _hf_snapshot(model)
    if folder is None or not (folder / "model_index.json").exists():
        known = release(model)
        if folder is not None and known is not None and not known.diffusers:
            raise ModelNotFound(f"model {model!r}: {known.conversion(folder)}")
        family = hub_family(model)
        if family and not path.exists():
            raise missing(model, family)
        return None
    index = json.loads((folder / "model_index.json").read_text())
    cls = index.get("_class_name", "")
    if cls not in PIPELINE_FAMILIES:
        raise ModelNotFound(f"model {model!r}: {folder}/model_index.json is a {cls or 'unnamed'} pipeline; stemd "
                            f"serves {', '.join(sorted(set(PIPELINE_FAMILIES)))}")
    return folder, PIPELINE_FAMILIES[cls]


def missing(model: str, family: str) -> ModelNotFound:
    from huggingface_hub import constants

    hint = FETCH_HINTS[family].format(model=model)
    return ModelNotFound(f"model {model!r} not found: no folder {Path(model).expanduser().resolve()} and no "
                         f"snapshot in the Hugging Face cache {constants.HF_HUB_CACHE}; to fetch it: {hint}")


def pipeline_parts(folder: Optional[Path]) -> Optional[frozenset]:
    """The components a pipeline folder holds, read from its ``model_index.json`` without loading anything: those
    named with a library and class (diffusers writes ``[null, null]`` for an optional one left out) whose sub-folder
    exists. None for a folder that is not a diffusers pipeline (MusicGen, click)."""
    if folder is None or not (Path(folder) / "model_index.json").is_file():
        return None
    index = json.loads((Path(folder) / "model_index.json").read_text())
    return frozenset(name for name, value in index.items()
                     if not name.startswith("_") and isinstance(value, list) and len(value) == 2 and all(value)
                     and (Path(folder) / name).is_dir())

