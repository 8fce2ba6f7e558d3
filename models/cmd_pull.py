"""``stemd pull MODEL``: fetch a model from the Hugging Face hub into its cache, once, with a progress bar.

The one command of stemd that downloads: everything else only reads checkpoints already on this machine
(the HF cache or a folder). ``HF_HUB_OFFLINE=1`` is honoured (nothing is fetched; a model already in the
cache is reported), as are ``HF_HOME`` / ``HF_HUB_CACHE``. A local folder has nothing to pull.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from stemd.errors import StemdError
from stemd.models.registry import HUB_ID


class PullError(StemdError):
    code = "bad_arguments"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a hub id: facebook/musicgen-small, stabilityai/stable-audio-3-small-music, "
                                      "ACE-Step/...")
    parser.add_argument("--revision", default=None, help="a branch, tag or commit (default: main)")


def pull(model: str, revision=None) -> Path:
    """The model's snapshot folder in the HF cache, fetched if it is not there yet."""
    if Path(model).expanduser().exists():
        raise PullError(f"{model} is a folder on this machine: nothing to pull (stemd serve --model {model})")
    if not HUB_ID.fullmatch(model):
        raise PullError(f"{model!r} is not a hub id (owner/name, like facebook/musicgen-small)")
    from huggingface_hub import constants, snapshot_download

    try:   # what is already cached needs no network
        return Path(snapshot_download(model, revision=revision, local_files_only=True))
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0"):
        raise PullError(f"{model} is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE "
                        "is set: unset it on a machine with network")
    try:
        return Path(snapshot_download(model, revision=revision))
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
    return 0
