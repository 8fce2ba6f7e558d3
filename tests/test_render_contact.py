"""The contact sheet: an HTML page with every take, and its picture drawn by headless Chromium."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from stemd.daemon.render.contact import WAVE_SIZE, badge_colour, find_chromium
from stemd.daemon.render.job import make_job
from stemd.daemon.render.manifest import read_manifest
from stemd.daemon.render.runner import run_job

WAVE_COLOUR = (120, 200, 255)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("sheet")
    job = make_job({"models": ["click"], "prompts": ["dusty drums", "warm bass"], "seeds": [1, 2, 3],
                    "bars": [2, 4], "bpm": "137.5", "sample_rate": 22050, "out": str(out)})
    result = run_job(job, progress=False)
    return out, result


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.cards, self.audio, self.images = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div" and a.get("class") == "card":
            self.cards.append(a["id"])
        elif tag == "audio":
            self.audio.append(a["src"])
        elif tag == "img":
            self.images.append(a["alt"])


def test_the_html_has_a_card_with_player_waveform_and_spectrogram_per_take(rendered):
    out, result = rendered
    assert result.contact_sheet == out / "contact.html"
    page = Page()
    page.feed(result.contact_sheet.read_text())
    takes = read_manifest(out)["takes"]
    assert len(page.cards) == len(takes) == 12
    assert page.audio == [t["file"] for t in takes]            # relative paths, in manifest order
    assert all((out / src).is_file() for src in page.audio)
    assert page.images == ["waveform", "spectrogram"] * 12
    html = result.contact_sheet.read_text()
    assert all(t["name"] in html and t["prompt"] in html for t in takes)


@pytest.mark.skipif(find_chromium() is None, reason="no chromium installed (Debian: apt-get install chromium)")
def test_the_screenshot_shows_every_take(rendered):
    from PIL import Image

    out, result = rendered
    assert result.contact_png == out / "contact.png"
    shot = np.asarray(Image.open(result.contact_png).convert("RGB")).astype(int)
    colours = [badge_colour(i) for i in range(1, 13)]
    assert len(set(colours)) == 12
    for i, colour in enumerate(colours, start=1):
        ys, xs = np.nonzero(np.all(shot == colour, axis=2))
        assert len(ys) > 200, f"take {i}'s badge is not in the screenshot"
        # the take's waveform is drawn below its badge, inside its card
        top, left = ys.min() + 40, xs.min()
        region = shot[top: top + 60, left: left + WAVE_SIZE[0]]
        assert np.all(region == WAVE_COLOUR, axis=2).sum() > 50, f"take {i}'s waveform is not drawn"
    assert not any(Path(out).glob("contact.png.partial*"))
