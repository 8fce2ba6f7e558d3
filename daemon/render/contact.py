"""The contact sheet: one page to choose takes from, written next to the manifest.

``contact.html`` has a card per finished take: a numbered colour badge, its full name, its rights
(a take from a test model or under a non-commercial licence says so on its card and at the top),
its waveform and spectrogram (PNG, inline), its parameters and an ``<audio>`` player with a
relative path, so the folder can be moved or shared as a whole. The grid reflows from one column on
a phone to as many as fit on a wide screen.

A producer picks takes with each card's "accept" box (kept in the browser's storage for that
folder) and "Export picks" downloads ``picks.json`` (:data:`PICKS_FORMAT`), which
``stemd render --accept picks.json`` turns into an ``accepted/`` folder (:mod:`.picks`).

``contact.png`` is a picture of the page taken with headless Chromium (when one is installed), for
a quick look or a chat message.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from stemd.chromium import find_chromium
from stemd.daemon.render.manifest import guide_text, read_manifest

WAVE_SIZE, SPEC_SIZE = (360, 70), (360, 110)
MIN_CARD_WIDTH, GAP, PADDING = 320, 16, 16   # the grid: as many columns of at least 320 px as fit
SCREENSHOT_WIDTH = 1280
MAX_SCREENSHOT_HEIGHT = 16000  # Chromium's screenshots stop being reliable above this
BACKGROUND = (17, 19, 24)
PICKS_FORMAT = "stemd-picks"   # picks.json: {"format", "version": 1, "folder", "accepted": [take, ...]}


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


def _rights(take: dict) -> tuple[str, list[tuple[str, str]]]:
    """The rights line of a card and its flags (css class, text)."""
    flags = []
    if take.get("test_model"):
        flags.append(("test", "TEST MODEL: noise, not music"))
    if not take.get("commercial_use"):
        flags.append(("nc", "NON-COMMERCIAL"))
    line = f'{take.get("license") or "licence unknown"}, ' + (
        "commercial use allowed" if take.get("commercial_use") else "not for commercial use")
    return line, flags


def _card(index: int, take: dict, folder: Path) -> str:
    mono, rate = _read_mono(folder / take["file"])
    r, g, b = badge_colour(index)
    rights, flags = _rights(take)
    model = take.get("model_name") or take["model"]
    params = [("model", f'{model} ({take["model"]})' if model != take["model"] else model), ("rights", rights),
              ("seed", take["seed"]), ("variation", take["variation"]),
              ("bars", f'{take["bars"]} @ {take["tempo"]:g} BPM {take["meter"]}'),
              ("length", f'{take["seconds"]:.3f} s, {take["sample_rate"]} Hz, {take["format"]}')]
    if take.get("musical_key"):
        params.append(("key", take["musical_key"]))
    if take.get("lufs") is not None:
        params.append(("loudness", f'{take["lufs"]:.1f} LUFS'))
    if take.get("stems"):
        params.append(("stems", ", ".join(take["stems"])))
    if take.get("guide"):
        params.append(("chords" if take["guide"].get("chords") else "guide", guide_text(take["guide"])))
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in params)
    prompt = take["prompt"] or "(no prompt)"
    name = html.escape(take["name"])
    flag_html = "".join(f'<span class="flag {c}">{html.escape(t)}</span>' for c, t in flags)
    return f"""<div class="card" id="take-{index}">
  <div class="head"><span class="badge" style="background:rgb({r},{g},{b})">{index}</span>
  <span class="name">{name}</span>
  <label class="pick"><input type="checkbox" class="pick" data-name="{name}"> accept</label></div>
  <div class="flags">{flag_html}</div>
  <div class="prompt" title="{html.escape(prompt)}">{html.escape(prompt)}</div>
  <img alt="waveform" src="{waveform_png(mono)}" width="{WAVE_SIZE[0]}" height="{WAVE_SIZE[1]}">
  <img alt="spectrogram" src="{spectrogram_png(mono, rate)}" width="{SPEC_SIZE[0]}" height="{SPEC_SIZE[1]}">
  <table>{rows}</table>
  <audio controls preload="none" src="{html.escape(take['file'])}"></audio>
</div>"""


STYLE = f"""*{{box-sizing:border-box}}
body{{margin:0;padding:{PADDING}px;background:rgb{BACKGROUND};color:#e8e8ea;font:13px/1.35 sans-serif}}
h1{{font-size:20px;margin:0 0 4px}} .sub{{color:#9aa;margin-bottom:8px}}
.bar{{display:flex;flex-wrap:wrap;align-items:center;gap:12px;margin-bottom:12px}}
.bar button{{font:inherit;padding:4px 12px}}
.warn{{margin:0 0 8px;padding:6px 10px;border-radius:4px}} .warn.test{{background:#7a1f1f}} .warn.nc{{background:#6b4a00}}
.grid{{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,{MIN_CARD_WIDTH}px),1fr));gap:{GAP}px}}
.card{{background:#1b1e26;border-radius:6px;padding:10px 12px;min-width:0;border:3px solid transparent}}
.card.picked{{border-color:#5fd35f}}
.head{{display:flex;align-items:flex-start;gap:8px}}
.badge{{flex:none;min-width:24px;height:24px;border-radius:3px;text-align:center;line-height:24px;font-weight:bold;color:#000}}
.name{{flex:1;min-width:0;font-family:monospace;overflow-wrap:anywhere;padding-top:4px}}
label.pick{{flex:none;white-space:nowrap;padding-top:3px;cursor:pointer}}
.flags{{display:flex;flex-wrap:wrap;gap:4px;margin:4px 0 0}}
.flag{{font-size:11px;font-weight:bold;padding:1px 6px;border-radius:3px}}
.flag.test{{background:#d33;color:#fff}} .flag.nc{{background:#e9a000;color:#000}}
.prompt{{color:#ffd479;margin:4px 0;overflow:hidden;display:-webkit-box;-webkit-line-clamp:3;-webkit-box-orient:vertical}}
img{{display:block;width:100%;height:auto;margin-bottom:4px;image-rendering:pixelated}}
table{{border-collapse:collapse;font-size:11px;width:100%}}
th{{text-align:left;color:#9aa;font-weight:normal;padding-right:8px;vertical-align:top;white-space:nowrap}}
td{{overflow-wrap:anywhere}} audio{{width:100%;height:32px;margin-top:4px}}"""

SCRIPT = f"""(function () {{
  const data = JSON.parse(document.getElementById("stemd-takes").textContent);
  const store = "stemd-picks:" + data.folder;
  const boxes = Array.from(document.querySelectorAll("input.pick"));
  function picked() {{ return boxes.filter(b => b.checked).map(b => b.dataset.name); }}
  window.stemdPicks = function () {{
    const names = new Set(picked());
    return JSON.stringify({{format: "{PICKS_FORMAT}", version: 1, folder: data.folder,
                           accepted: data.takes.filter(t => names.has(t.name))}}, null, 2);
  }};
  function update(save) {{
    boxes.forEach(b => b.closest(".card").classList.toggle("picked", b.checked));
    const n = picked().length;
    document.getElementById("count").textContent = n + " of " + boxes.length + " picked";
    document.getElementById("export").disabled = n === 0;
    if (save) {{ try {{ localStorage.setItem(store, JSON.stringify(picked())); }} catch (e) {{}} }}
  }}
  try {{
    const kept = new Set(JSON.parse(localStorage.getItem(store) || "[]"));
    boxes.forEach(b => {{ b.checked = kept.has(b.dataset.name); }});
  }} catch (e) {{}}
  boxes.forEach(b => b.addEventListener("change", () => update(true)));
  document.getElementById("export").addEventListener("click", () => {{
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([window.stemdPicks() + "\\n"], {{type: "application/json"}}));
    link.download = "picks.json";
    document.body.appendChild(link);
    link.click();
    link.remove();
  }});
  update(false);
}})();"""


def _warnings(takes: list[dict]) -> str:
    lines = []
    test = sum(1 for t in takes if t.get("test_model"))
    if test:
        lines.append(("test", f"{test} of {len(takes)} takes come from a test model (random weights): they are "
                              "noise, not music."))
    nc = [t for t in takes if not t.get("commercial_use")]
    if nc:
        licences = ", ".join(sorted({t.get("license") or "licence unknown" for t in nc}))
        lines.append(("nc", f"{len(nc)} of {len(takes)} takes may not be used commercially ({licences}): "
                            "not for release."))
    return "".join(f'<p class="warn {c}">{html.escape(t)}</p>' for c, t in lines)


def _script_json(value) -> str:
    """JSON that cannot close the <script> element it sits in."""
    return json.dumps(value).replace("<", "\\u003c")


def contact_html(folder: Path) -> str:
    folder = Path(folder)
    manifest = read_manifest(folder)
    takes = manifest["takes"]
    cards = "\n".join(_card(i + 1, t, folder) for i, t in enumerate(takes))
    sub = f'{manifest["finished"]} of {manifest["planned"]} takes finished'
    data = {"folder": str(folder.resolve()),
            "takes": [{k: t.get(k) for k in ("name", "file", "sha256", "take_key")} for t in takes]}
    return f"""<!doctype html><html><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>stemd takes</title>
<style>{STYLE}</style></head><body><h1>stemd takes</h1><div class="sub">{html.escape(sub)}</div>
{_warnings(takes)}
<div class="bar"><span id="count"></span><button id="export" type="button">Export picks</button>
<span class="sub">then: stemd render --accept picks.json</span></div>
<div class="grid">
{cards}
</div>
<script type="application/json" id="stemd-takes">{_script_json(data)}</script>
<script>{SCRIPT}</script>
</body></html>
"""


def columns_at(width: int) -> int:
    """How many columns the grid has in a window ``width`` px wide."""
    return max(1, (width - 2 * PADDING + GAP) // (MIN_CARD_WIDTH + GAP))


def page_height(n_takes: int, width: int = SCREENSHOT_WIDTH) -> int:
    """A height that holds the whole page at ``width`` (generous: the picture is trimmed afterwards)."""
    cols = columns_at(width)
    card = (width - 2 * PADDING - (cols - 1) * GAP) / cols
    card_height = 300 + card * (WAVE_SIZE[1] + SPEC_SIZE[1]) / WAVE_SIZE[0]
    return int(220 + math.ceil(n_takes / cols) * (card_height + GAP))


def _trim(png_path: Path) -> None:
    """Cut the empty background below the page's content (the window was made taller than needed)."""
    from PIL import Image

    with Image.open(png_path) as img:
        shot = np.asarray(img.convert("RGB"))
    rows = np.nonzero(np.any(np.abs(shot.astype(int) - BACKGROUND).sum(axis=2) > 0, axis=1))[0]
    if rows.size and rows[-1] + 1 + PADDING < shot.shape[0]:
        Image.fromarray(shot[: rows[-1] + 1 + PADDING]).save(png_path, optimize=True)


def screenshot(html_path: Path, png_path: Path, height: int, width: int = SCREENSHOT_WIDTH,
               timeout: float = 120.0) -> Optional[Path]:
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
               f"--window-size={width},{height}", html_path.resolve().as_uri()]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, start_new_session=True)
        except subprocess.TimeoutExpired:
            print("stemd render: chromium did not finish the contact.png in time", file=sys.stderr)
            return None
        if proc.returncode != 0 or not partial.exists():
            tail = (proc.stderr or "").strip().splitlines()[-1:] or [""]
            print(f"stemd render: chromium failed to draw contact.png: {tail[0]}", file=sys.stderr)
            return None
        _trim(partial)
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
