"""``stemd pull MODEL``: fetch a model from the Hugging Face hub into its cache, once, with a progress bar.

The one command of stemd that downloads: everything else only reads checkpoints already on this machine
(the HF cache or a folder). ``HF_HUB_OFFLINE=1`` is honoured (nothing is fetched; a model already in the
cache is reported), as are ``HF_HOME`` / ``HF_HUB_CACHE``. A local folder has nothing to pull.

The official releases stemd knows (models/releases.py) are fetched without what stemd never runs; one in
its makers' own format is reported with the line that converts it to a folder stemd serves.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from stemd.errors import StemdError
from stemd.models.registry import HUB_ID
from stemd.models.releases import release


class PullError(StemdError):
    code = "bad_arguments"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a hub id: facebook/musicgen-small, stabilityai/stable-audio-3-small-music, "
                                      "stabilityai/stable-audio-3-medium, ACE-Step/acestep-v15-xl-turbo-diffusers, "
                                      "ACE-Step/Ace-Step1.5")
    parser.add_argument("--revision", default=None, help="a branch, tag or commit (default: main)")


def pull(model: str, revision=None) -> Path:
    """The model's snapshot folder in the HF cache, fetched if it is not there yet."""
    if Path(model).expanduser().exists():
        raise PullError(f"{model} is a folder on this machine: nothing to pull (stemd serve --model {model})")
    if not HUB_ID.fullmatch(model):
        raise PullError(f"{model!r} is not a hub id (owner/name, like facebook/musicgen-small)")
    import huggingface_hub
    from huggingface_hub import constants

    known = release(model)
    kwargs = {"allow_patterns": list(known.allow_patterns)} if known else {}
    try:   # what is already cached needs no network
        return Path(huggingface_hub.snapshot_download(model, revision=revision, local_files_only=True, **kwargs))
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        raise PullError(f"{model} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE "
                        "is set: unset it on a machine with network")
    try:
        return Path(huggingface_hub.snapshot_download(model, revision=revision, **kwargs))
    except Exception as e:  # the hub's errors: no network, a gated repo, a wrong id
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if any(w in reason for w in ("ConnectError", "Name or service not known", "Connection", "timed out")):
            reason = f"the Hugging Face hub cannot be reached from this machine ({reason})"
        gated = " (a gated repo: accept its licence on huggingface.co, then `hf auth login`)" \
            if "gated" in reason.lower() or "401" in reason or "403" in reason else ""
        raise PullError(f"cannot fetch {model}: {reason[:300]}{gated}") from None


def run(args: argparse.Namespace) -> int:
    path = pull(args.model, args.revision)
    print(f"{args.model}: {path}")
    known = release(args.model)
    if known and not known.diffusers and not (path / "model_index.json").exists():
        print(known.conversion(path))
    return 0
