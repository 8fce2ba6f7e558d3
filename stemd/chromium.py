"""Where headless Chromium is: ``stemd render`` draws its contact.png with it and ``stemd doctor`` looks for it."""

from __future__ import annotations

import shutil
from typing import Optional

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> Optional[str]:
    """The path of the first Chromium on PATH, else None."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None
