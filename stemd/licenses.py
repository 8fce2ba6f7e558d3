"""Licence cards: what a producer may do with what each model family makes.

Every take's sidecar carries its model's card as ``"license": {"name", "link", "commercial", "terms"}``;
``/stemd/pong``, ``stemd doctor`` and the contact sheet show it, and ``stemd serve`` warns once when the
weights it holds are non-commercial. The cards describe the released weights of each family; a model
folder whose README declares another licence (a fine-tune) gets that licence instead
(:func:`card_for_readme`). Core: stdlib only, so the bridge can read and show them too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

CARDS = {
    "musicgen": {
        "name": "CC-BY-NC-4.0",
        "link": "https://creativecommons.org/licenses/by-nc/4.0/",
        "commercial": False,
        "terms": "MusicGen's weights (Meta) are for non-commercial use only: takes made with them may not be "
                 "released or sold.",
    },
    "stable-audio-3": {
        "name": "Stability AI Community License",
        "link": "https://stability.ai/license",
        "commercial": True,
        "terms": "commercial use of the model and its outputs is allowed for individuals and organisations under "
                 "US$1M annual revenue; above that, an Enterprise licence from Stability AI is required.",
    },
    "ace-step": {
        "name": "MIT",
        "link": "https://opensource.org/license/mit",
        "commercial": True,
        "terms": "ACE-Step 1.5's weights are MIT-licensed: commercial use of the model and its outputs is allowed.",
    },
    "click": {
        "name": "MIT (stemd)",
        "link": "https://opensource.org/license/mit",
        "commercial": True,
        "terms": "a metronome synthesised by stemd itself; no model weights are involved.",
    },
}
CARDS["musicgen-melody"] = CARDS["musicgen"]     # the melody checkpoints are released on MusicGen's terms

#: Hugging Face ``license:`` identifiers that a fine-tune's README may declare
_README_LICENSES = {
    "mit": ("MIT", "https://opensource.org/license/mit", True),
    "apache-2.0": ("Apache-2.0", "https://www.apache.org/licenses/LICENSE-2.0", True),
    "cc-by-4.0": ("CC-BY-4.0", "https://creativecommons.org/licenses/by/4.0/", True),
    "cc-by-nc-4.0": ("CC-BY-NC-4.0", "https://creativecommons.org/licenses/by-nc/4.0/", False),
    "cc-by-nc-sa-4.0": ("CC-BY-NC-SA-4.0", "https://creativecommons.org/licenses/by-nc-sa/4.0/", False),
}


def card(family: str, *, test_model: bool = False) -> dict:
    """The family's card; a test model's says its weights are random (there is nothing to release)."""
    out = dict(CARDS[family])
    if test_model:
        out["terms"] = ("test model with random weights written by stemd (it makes noise, not music); the card "
                        "is the family's: " + out["terms"])
    return out


def card_for_readme(readme: Path, family: str, *, test_model: bool = False) -> dict:
    """The card a model folder declares in its README's front matter (``license:``), else the family's."""
    declared = _declared_license(readme)
    if declared is None or declared not in _README_LICENSES:
        return card(family, test_model=test_model)
    name, link, commercial = _README_LICENSES[declared]
    family_card = CARDS[family]
    if name == family_card["name"]:
        return card(family, test_model=test_model)
    return {"name": name, "link": link, "commercial": commercial,
            "terms": f"declared by the model folder's README ({readme}); check its model card before releasing."}


def _declared_license(readme: Path) -> Optional[str]:
    try:
        text = Path(readme).read_text(errors="replace")[:20000]
    except OSError:
        return None
    front = re.match(r"---\n(.*?)\n---", text, re.S)
    if not front:
        return None
    m = re.search(r"^license:\s*([\w.\-]+)\s*$", front.group(1), re.M)
    return m.group(1).lower() if m else None


def describe(license_card: dict) -> str:
    """One line: 'Stability AI Community License (commercial use: yes, ...)'."""
    verdict = "yes" if license_card.get("commercial") else "NO"
    return f"{license_card['name']} (commercial use: {verdict}; {license_card['link']})"


def is_test_model(folder: Path) -> bool:
    """A folder stemd wrote with random weights (``"stemd_test_model": true`` in its model_index.json or
    config.json): it makes noise, not music."""
    import json

    for name in ("model_index.json", "config.json"):
        try:
            if json.loads((Path(folder) / name).read_text()).get("stemd_test_model"):
                return True
        except (OSError, ValueError, AttributeError):
            continue
    return False


def card_for_model(family: str, folder: Optional[Path], *, test_model: bool = False) -> dict:
    """The card of a model of ``family`` in ``folder`` (None for the click): its README's, else the family's."""
    if folder is None:
        return card(family, test_model=test_model)
    return card_for_readme(Path(folder) / "README.md", family, test_model=test_model)
