"""The contact sheet: one page to choose takes from, written next to the manifest.

``contact.html`` has a card per finished take: a numbered colour badge, its waveform and
spectrogram (PNG, inline), its parameters and an ``<audio>`` player with a relative path, so the
folder can be moved or shared as a whole. ``contact.png`` is a picture of the page taken with
headless Chromium (when one is installed), for a quick look or a chat message.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from stemd.daemon.render.manifest import read_manifest

WAVE_SIZE, SPEC_SIZE = (360, 70), (360, 110)
COLUMNS, CARD_WIDTH, CARD_HEIGHT, HEADER_HEIGHT = 3, 400, 372, 64
PAGE_WIDTH = COLUMNS * (CARD_WIDTH + 16) + 32
MAX_SCREENSHOT_HEIGHT = 16000  # Chromium's screenshots stop being reliable above this
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def badge_colour(index: int) -> tuple[int, int, int]:
    """A distinct, saturated colour per take number (also how a test finds every card in the PNG)."""
    return (40 + (index * 67) % 200, 40 + (index * 131) % 200, 220 - (index * 29) % 180)


def _png(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def waveform_png(mono: np.ndarray, size=WAVE_SIZE) -> str:
    """Min/max per pixel column, drawn as bars around the centre line."""
    from PIL import Image, ImageDraw

    w, h = size
    img = Image.new("RGB", size, (24, 26, 32))
    draw = ImageDraw.Draw(img)
    cols = np.array_split(mono, w) if len(mono) >= w else [mono[i:i + 1] for i in range(len(mono))]
    for x, col in enumerate(cols):
        if not col.size:
            continue
        lo, hi = float(np.clip(col.min(), -1, 1)), float(np.clip(col.max(), -1, 1))
        draw.line([(x, (1 - hi) * (h - 1) / 2), (x, (1 - lo) * (h - 1) / 2)], fill=(120, 200, 255))
    return _png(img)


def _colour_map(values: np.ndarray) -> np.ndarray:
    """0..1 -> RGB through black, purple, orange, pale yellow."""
    stops = np.array([[0, 0, 4], [80, 18, 123], [182, 54, 121], [251, 136, 97], [252, 253, 191]], float)
    pos = np.clip(values, 0, 1) * (len(stops) - 1)
    i = np.minimum(pos.astype(int), len(stops) - 2)
    frac = (pos - i)[..., None]
    return (stops[i] * (1 - frac) + stops[i + 1] * frac).astype(np.uint8)


def spectrogram_png(mono: np.ndarray, sample_rate: int, size=SPEC_SIZE) -> str:
    """Log-frequency magnitude spectrogram (30 Hz to Nyquist, 80 dB range)."""
    from PIL import Image

    w, h = size
    n_fft = 2048
    padded = np.pad(mono.astype(np.float64), (n_fft // 2, n_fft // 2))
    hop = max(1, (len(padded) - n_fft) // max(1, w - 1))
    starts = np.arange(0, max(1, len(padded) - n_fft + 1), hop)[:w]
    frames = np.stack([padded[s:s + n_fft] for s in starts]) * np.hanning(n_fft)
    db = 20 * np.log10(np.abs(np.fft.rfft(frames, axis=1)) + 1e-9)
    freqs = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    rows = np.geomspace(30, sample_rate / 2, h)[::-1]
    picked = db[:, np.clip(np.searchsorted(freqs, rows), 0, len(freqs) - 1)].T  # (h, frames)
    top = picked.max() if np.isfinite(picked.max()) else 0.0
    img = Image.fromarray(_colour_map((picked - top + 80) / 80)).resize(size, Image.NEAREST)
    return _png(img)


def _read_mono(path: Path) -> tuple[np.ndarray, int]:
    import soundfile

    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    return data.mean(axis=1), rate


def _card(index: int, take: dict, folder: Path) -> str:
    mono, rate = _read_mono(folder / take["file"])
    r, g, b = badge_colour(index)
    rights = f'{take.get("license") or "licence unknown"}, ' + (
        "commercial use allowed" if take.get("commercial_use") else "NON-COMMERCIAL")
    if take.get("test_model"):
        rights += "; test model: noise, not music"
    params = [("model", f'{take["model"]} ({rights})'), ("seed", take["seed"]), ("variation", take["variation"]),
              ("bars", f'{take["bars"]} @ {take["tempo"]:g} BPM {take["meter"]}'),
              ("length", f'{take["seconds"]:.3f} s, {take["sample_rate"]} Hz, {take["format"]}')]
    if take.get("lufs") is not None:
        params.append(("loudness", f'{take["lufs"]:.1f} LUFS'))
    if take.get("stems"):
        params.append(("stems", ", ".join(take["stems"])))
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in params)
    prompt = html.escape(take["prompt"] or "(no prompt)")
    return f"""<div class="card" id="take-{index}">
  <div class="head"><span class="badge" style="background:rgb({r},{g},{b})">{index}</span>
  <span class="name" title="{html.escape(take['name'])}">{html.escape(take['name'])}</span></div>
  <div class="prompt">{prompt}</div>
  <img alt="waveform" src="{waveform_png(mono)}" width="{WAVE_SIZE[0]}" height="{WAVE_SIZE[1]}">
  <img alt="spectrogram" src="{spectrogram_png(mono, rate)}" width="{SPEC_SIZE[0]}" height="{SPEC_SIZE[1]}">
  <table>{rows}</table>
  <audio controls preload="none" src="{html.escape(take['file'])}"></audio>
</div>"""


STYLE = f"""body{{margin:0;padding:16px;background:#111318;color:#e8e8ea;font:13px/1.3 sans-serif;width:{PAGE_WIDTH - 32}px}}
h1{{font-size:20px;margin:0 0 4px}} .sub{{color:#9aa;margin-bottom:16px;height:{HEADER_HEIGHT - 44}px}}
.grid{{display:grid;grid-template-columns:repeat({COLUMNS},{CARD_WIDTH}px);gap:16px}}
.card{{background:#1b1e26;border-radius:6px;padding:10px 20px;height:{CARD_HEIGHT - 20}px;overflow:hidden;box-sizing:content-box;width:{CARD_WIDTH - 40}px}}
.head{{display:flex;align-items:center;gap:8px;height:26px}}
.badge{{display:inline-block;min-width:24px;height:24px;border-radius:3px;text-align:center;line-height:24px;font-weight:bold;color:#000}}
.name{{font-family:monospace;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}}
.prompt{{color:#ffd479;height:18px;overflow:hidden;white-space:nowrap;text-overflow:ellipsis;margin:2px 0 4px}}
img{{display:block;margin-bottom:4px}} table{{border-collapse:collapse;font-size:11px;height:70px}}
th{{text-align:left;color:#9aa;font-weight:normal;padding-right:8px}} audio{{width:{CARD_WIDTH - 40}px;height:28px}}"""


def contact_html(folder: Path) -> str:
    manifest = read_manifest(folder)
    takes = manifest["takes"]
    cards = "\n".join(_card(i + 1, t, folder) for i, t in enumerate(takes))
    sub = f'{manifest["finished"]} of {manifest["planned"]} takes finished'
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>stemd takes</title>
<style>{STYLE}</style></head><body><h1>stemd takes</h1><div class="sub">{sub}</div>
<div class="grid">
{cards}
</div></body></html>
"""


def page_height(n_takes: int) -> int:
    rows = math.ceil(n_takes / COLUMNS)
    return 16 + HEADER_HEIGHT + rows * (CARD_HEIGHT + 16) + 16


def find_chromium() -> Optional[str]:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(html_path: Path, png_path: Path, height: int, timeout: float = 120.0) -> Optional[Path]:
    """A PNG of ``html_path`` from headless Chromium; None (with a line on stderr) when there is none."""
    chromium = find_chromium()
    if chromium is None:
        print("stemd render: no chromium found, so no contact.png (the HTML sheet is written)", file=sys.stderr)
        return None
    height = min(height, MAX_SCREENSHOT_HEIGHT)
    with tempfile.TemporaryDirectory(prefix="stemd-chromium-") as profile:
        partial = png_path.with_name(png_path.name + ".partial.png")
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", "--force-color-profile=srgb", "--force-device-scale-factor=1",
               "--allow-file-access-from-files", f"--user-data-dir={profile}", f"--screenshot={partial}",
               f"--window-size={PAGE_WIDTH},{height}", html_path.resolve().as_uri()]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, start_new_session=True)
        except subprocess.TimeoutExpired:
            print("stemd render: chromium did not finish the contact.png in time", file=sys.stderr)
            return None
        if proc.returncode != 0 or not partial.exists():
            tail = (proc.stderr or "").strip().splitlines()[-1:] or [""]
            print(f"stemd render: chromium failed to draw contact.png: {tail[0]}", file=sys.stderr)
            return None
        os.replace(partial, png_path)
    return png_path


def write_contact_sheet(folder: Path, png: bool = True) -> tuple[Path, Optional[Path]]:
    """``contact.html`` (and ``contact.png``) in ``folder`` from its manifest."""
    from stemd.takes import atomic_write

    folder = Path(folder)
    page = folder / "contact.html"
    atomic_write(page, contact_html(folder).encode())
    if not png:
        return page, None
    n = read_manifest(folder)["finished"]
    return page, screenshot(page, folder / "contact.png", page_height(n))
