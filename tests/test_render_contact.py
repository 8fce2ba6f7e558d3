"""The contact sheet: an HTML page with every take, checked in headless Chromium at two widths, its
picks exported by the page's own script, and ``stemd render --accept`` turning them into accepted/."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from stemd.chromium import find_chromium
from stemd.daemon.render.contact import badge_colour, columns_at, page_height, screenshot
from stemd.daemon.render.job import make_job
from stemd.daemon.render.manifest import read_manifest
from stemd.daemon.render.runner import run_job

WAVE_COLOUR = (120, 200, 255)
WIDTHS = (1280, 520)   # a laptop browser window and a narrow one (headless Chromium draws no narrower than 500)
needs_chromium = pytest.mark.skipif(find_chromium() is None,
                                    reason="no chromium installed (Debian: apt-get install chromium)")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, tiny):
    """12 takes: 6 from the click engine, 6 from a MusicGen test model (random weights, CC-BY-NC card)."""
    out = tmp_path_factory.mktemp("sheet")
    job = make_job({"models": ["click", f"tiny={tiny}"], "prompts": ["dusty drums", "warm bass"], "seeds": [1, 2, 3],
                    "bars": [2], "bpm": "97", "meter": "7/8", "sample_rate": 22050, "out": str(out)})
    result = run_job(job, progress=False)
    return out, result


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.cards, self.audio, self.images, self.names, self.flags = [], [], [], [], []
        self.warnings, self._in = [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = a.get("class") or ""
        if tag == "div" and cls == "card":
            self.cards.append(a["id"])
            self.flags.append([])
        elif tag == "audio":
            self.audio.append(a["src"])
        elif tag == "img":
            self.images.append(a["alt"])
        elif tag == "span" and cls == "name":
            self._in = "name"
        elif tag == "span" and cls.startswith("flag "):
            self._in = "flag"
        elif tag == "p" and cls.startswith("warn"):
            self._in = "warn"

    def handle_data(self, data):
        if self._in == "name":
            self.names.append(data)
        elif self._in == "flag":
            self.flags[-1].append(data)
        elif self._in == "warn":
            self.warnings.append(data)
        self._in = None


def test_the_html_has_a_card_with_name_rights_player_waveform_and_spectrogram_per_take(rendered):
    out, result = rendered
    assert result.contact_sheet == out / "contact.html"
    page = Page()
    page.feed(result.contact_sheet.read_text())
    takes = read_manifest(out)["takes"]
    assert len(page.cards) == len(takes) == 12
    assert page.audio == [t["file"] for t in takes]            # relative paths, in manifest order
    assert all((out / src).is_file() for src in page.audio)
    assert page.images == ["waveform", "spectrogram"] * 12
    assert page.names == [t["name"] for t in takes]            # whole names, seed and variation included
    for take, flags in zip(takes, page.flags):
        test = take["model_name"] == "tiny"
        assert take["test_model"] is test
        assert ("TEST MODEL: noise, not music" in flags) is test
        assert ("NON-COMMERCIAL" in flags) is (not take["commercial_use"])
    assert any(not t["commercial_use"] for t in takes) and any(t["commercial_use"] for t in takes)
    assert page.warnings[0] == "6 of 12 takes come from a test model (random weights): they are noise, not music."
    assert page.warnings[1].startswith("6 of 12 takes may not be used commercially (CC-BY-NC-4.0")


def _chromium_dom(page: Path, width: int, height: int) -> str:
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [find_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--hide-scrollbars", "--force-device-scale-factor=1",
             f"--user-data-dir={profile}", f"--window-size={width},{height}", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


# Run inside the sheet by Chromium: measures the laid-out page, then ticks takes 2 and 5 the way a
# click does and asks the page for its picks export.
PROBE = """<script>
(function () {
  const W = window.innerWidth, cards = Array.from(document.querySelectorAll(".card"));
  const out = {width: W, page_width: document.documentElement.scrollWidth, cards: cards.map(c => {
    const r = c.getBoundingClientRect(), n = c.querySelector(".name"), img = c.querySelector("img");
    return {left: Math.round(r.left), right: r.right, name_fits: n.scrollWidth <= n.clientWidth,
            name_right: n.getBoundingClientRect().right, img_right: img.getBoundingClientRect().right,
            flags: c.querySelectorAll(".flag").length};
  })};
  [1, 4].forEach(i => cards[i].querySelector("input.pick").click());
  out.count = document.getElementById("count").textContent;
  out.export_enabled = !document.getElementById("export").disabled;
  out.picked_cards = cards.filter(c => c.classList.contains("picked")).map(c => c.id);
  out.picks = JSON.parse(window.stemdPicks());
  const pre = document.createElement("pre"); pre.id = "probe"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script></body>"""


@needs_chromium
@pytest.mark.parametrize("width", WIDTHS)
def test_in_chromium_the_sheet_fits_the_window_and_exports_the_picks(rendered, tmp_path, width):
    out, result = rendered
    probe = out / f"probe-{width}.html"
    probe.write_text(result.contact_sheet.read_text().replace("</body>", PROBE))
    try:
        dom = _chromium_dom(probe, width, 900)
    finally:
        probe.unlink()
    m = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert m, "the sheet's script did not run in Chromium"
    seen = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert seen["width"] == width
    assert seen["page_width"] <= width                                   # no sideways scrolling
    assert len({c["left"] for c in seen["cards"]}) == columns_at(width) == (3 if width == 1280 else 1)
    for card in seen["cards"]:
        assert card["left"] >= 0 and card["right"] <= width
        assert card["name_fits"] and card["name_right"] <= card["right"]   # the whole name is shown
        assert card["img_right"] <= card["right"]
    assert [c["flags"] for c in seen["cards"]] == [0] * 6 + [2] * 6   # click takes, then the test model's
    takes = read_manifest(out)["takes"]
    assert seen["count"] == "2 of 12 picked" and seen["export_enabled"]
    assert seen["picked_cards"] == ["take-2", "take-5"]
    picks = seen["picks"]
    assert picks["format"] == "stemd-picks" and picks["version"] == 1 and picks["folder"] == str(out.resolve())
    assert [p["name"] for p in picks["accepted"]] == [takes[1]["name"], takes[4]["name"]]
    assert [p["sha256"] for p in picks["accepted"]] == [takes[1]["sha256"], takes[4]["sha256"]]

    # what the page exported, accepted with the real CLI from a copy of the folder
    folder = tmp_path / "takes"
    shutil.copytree(out, folder)
    (tmp_path / "picks.json").write_text(json.dumps(picks))
    accepted = _accept(tmp_path / "picks.json", "--out", str(folder))
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.split() == [str(folder / "accepted" / takes[i]["file"]) for i in (1, 4)]
    for i in (1, 4):
        assert (folder / "accepted" / takes[i]["file"]).read_bytes() == (out / takes[i]["file"]).read_bytes()
        assert (folder / "accepted" / f"{takes[i]['name']}.json").is_file()
    doc = json.loads((folder / "accepted" / "accepted.json").read_text())
    assert [t["name"] for t in doc["takes"]] == [takes[1]["name"], takes[4]["name"]]
    assert all("license" in t and "commercial_use" in t and "test_model" in t for t in doc["takes"])


def _accept(picks: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stemd", "render", "--accept", str(picks), *extra],
                          capture_output=True, text=True, timeout=120)


def _picks(folder: Path, takes: list, *indices: int) -> dict:
    return {"format": "stemd-picks", "version": 1, "folder": str(folder),
            "accepted": [{k: takes[i][k] for k in ("name", "file", "sha256", "take_key")} for i in indices]}


def test_accept_finds_the_folder_the_picks_name_and_a_second_accept_replaces_the_first(rendered, tmp_path):
    out, _ = rendered
    folder = tmp_path / "takes"
    shutil.copytree(out, folder)
    takes = read_manifest(folder)["takes"]
    picks = tmp_path / "Downloads" / "picks.json"
    picks.parent.mkdir()
    picks.write_text(json.dumps(_picks(folder, takes, 0, 7)))
    first = _accept(picks)                                  # no --out: the folder named in the picks
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in (folder / "accepted").glob("*.wav")) == sorted([takes[0]["file"], takes[7]["file"]])
    picks.write_text(json.dumps(_picks(folder, takes, 7)))
    second = _accept(picks)
    assert second.returncode == 0, second.stderr
    assert [p.name for p in (folder / "accepted").glob("*.wav")] == [takes[7]["file"]]
    assert not (folder / "accepted" / f"{takes[0]['name']}.json").exists()
    assert "2 files of earlier picks removed" in second.stderr


def test_accept_refuses_a_take_changed_since_it_was_picked_or_not_in_the_folder(rendered, tmp_path):
    out, _ = rendered
    folder = tmp_path / "takes"
    shutil.copytree(out, folder)
    takes = read_manifest(folder)["takes"]
    picks = tmp_path / "picks.json"
    picks.write_text(json.dumps(_picks(folder, takes, 3)))
    audio = folder / takes[3]["file"]
    audio.write_bytes(audio.read_bytes()[:-4] + b"\0\0\0\1")
    changed = _accept(picks)
    assert changed.returncode == 2
    assert changed.stderr.strip().splitlines() == [
        f"stemd render: take {takes[3]['name']} changed since it was picked (its audio's SHA-256 differs): "
        "pick again from the new contact.html"]
    assert not (folder / "accepted").exists()

    stranger = _picks(folder, takes, 2)
    stranger["accepted"][0]["name"] = "someone-elses-take_v1"
    picks.write_text(json.dumps(stranger))
    assert "is not in" in _accept(picks).stderr
    picks.write_text(json.dumps({"takes": []}))
    assert "is not a picks file" in _accept(picks).stderr
    moved = _picks(tmp_path / "gone", takes, 2)
    picks.write_text(json.dumps(moved))
    missing = _accept(picks)
    assert missing.returncode == 2 and "give the render folder the picks came from with --out" in missing.stderr


@needs_chromium
@pytest.mark.parametrize("width", WIDTHS)
def test_the_screenshot_shows_every_take_at_both_widths(rendered, tmp_path, width):
    from PIL import Image

    out, result = rendered
    png = screenshot(result.contact_sheet, tmp_path / "contact.png", page_height(12, width), width=width)
    assert png == tmp_path / "contact.png" and not any(tmp_path.glob("contact.png.partial*"))
    shot = np.asarray(Image.open(png).convert("RGB")).astype(int)
    assert shot.shape[1] == width
    colours = [badge_colour(i) for i in range(1, 13)]
    assert len(set(colours)) == 12
    lefts = []
    for i, colour in enumerate(colours, start=1):
        ys, xs = np.nonzero(np.all(shot == colour, axis=2))
        assert len(ys) > 200, f"take {i}'s badge is not in the {width} px screenshot"
        lefts.append(xs.min())
        # the take's waveform is drawn below its badge, inside its card
        region = shot[ys.min(): ys.min() + 200, xs.min(): min(width, xs.min() + 300)]
        assert np.all(region == WAVE_COLOUR, axis=2).sum() > 50, f"take {i}'s waveform is not drawn"
    assert len(set(lefts)) == columns_at(width)
    # trimmed to the page: the last card's bottom is near the picture's
    assert shot.shape[0] < page_height(12, width)


def test_the_default_screenshot_is_written_with_the_sheet(rendered):
    out, result = rendered
    if find_chromium() is None:
        assert result.contact_png is None
    else:
        assert result.contact_png == out / "contact.png" and (out / "contact.png").stat().st_size > 10_000
