"""The official checkpoints ``stemd pull`` knows by name: what each is, what to fetch of it, how it is served.

Each release names its hub repo, family, licence and the files stemd needs of it (``allow_patterns``:
a repo that also holds what stemd never runs, such as ACE-Step's language-model planner, is fetched
without it). A release in diffusers format (``model_index.json``) is served straight from the cache; one
in its makers' own format is converted once with diffusers' script, and the folder it writes is what
``--model`` takes. Any other hub id is pulled whole, as given.

Sizes are as the makers or their model cards state them; docs/models.md says which were checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

#: a diffusers pipeline's files: configs, safetensors weights, tokenizer files, the card (no .bin/.ckpt copies)
DIFFUSERS_FILES = ("*.json", "*.safetensors", "*.txt", "*.jinja", "*.model", "*.md", "LICENSE*")

#: diffusers' conversion scripts (github.com/huggingface/diffusers, scripts/: not in the pip package)
CONVERT_SA3 = ("python scripts/convert_stable_audio_3_to_diffusers.py --checkpoint_path {snapshot}/model.safetensors "
               "--model_config_path {snapshot}/model_config.json --output_dir DIR")
CONVERT_ACE = ("python scripts/convert_ace_step_to_diffusers.py --checkpoint_dir {snapshot} "
               "--dit_config acestep-v15-turbo --output_dir DIR")


@dataclass(frozen=True)
class Release:
    repo: str
    family: str
    allow_patterns: tuple
    convert: Optional[str] = None     # None: diffusers format, served as pulled

    @property
    def diffusers(self) -> bool:
        return self.convert is None

    def conversion(self, snapshot) -> str:
        """The line that says how a snapshot in its makers' format becomes a folder stemd serves."""
        return (f"{self.repo} is in its makers' own format: convert it once in a checkout of "
                f"github.com/huggingface/diffusers: {self.convert.format(snapshot=snapshot)}; then "
                f"stemd serve --model DIR")


RELEASES = {r.repo.lower(): r for r in (
    # Stable Audio 3 (Stability AI Community License; gated, with Gemma's terms for its T5Gemma text encoder):
    # one stable-audio-tools checkpoint each, DiT, SAME autoencoder and text encoder in model.safetensors
    Release("stabilityai/stable-audio-3-small-music", "stable-audio-3",
            ("model.safetensors", "model_config.json", "*.md", "LICENSE*"), CONVERT_SA3),
    Release("stabilityai/stable-audio-3-medium", "stable-audio-3",
            ("model.safetensors", "model_config.json", "*.md", "LICENSE*"), CONVERT_SA3),
    # ACE-Step 1.5 (MIT): the 2B turbo DiT, its VAE and Qwen3 text encoder in ACE-Step's own layout, beside
    # a 1.7B language-model planner that the diffusers pipeline does not run (left on the hub)
    Release("ACE-Step/Ace-Step1.5", "ace-step",
            ("acestep-v15-turbo/*", "vae/*", "Qwen3-Embedding-0.6B/*", "*.md", "LICENSE*"), CONVERT_ACE),
    # ACE-Step 1.5 XL turbo in diffusers format: served as pulled
    Release("ACE-Step/acestep-v15-xl-turbo-diffusers", "ace-step", DIFFUSERS_FILES),
)}


def release(repo: str) -> Optional[Release]:
    """The release ``repo`` names (hub ids are case-insensitive), or None for any other."""
    return RELEASES.get(repo.lower())
