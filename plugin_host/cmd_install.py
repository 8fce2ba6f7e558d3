"""``stemd install-host-scripts --daw reaper|ableton|ardour``: copy stemd's in-DAW scripts where the DAW
looks for them, and say what to click next."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
ARDOUR_VERSIONS = (8, 7)   # newest first


def _home() -> Path:
    return Path.home()


def default_folder(daw: str, platform: Optional[str] = None) -> Path:
    """Where each DAW looks for user scripts, per platform."""
    platform = platform or sys.platform
    appdata = Path(os.environ.get("APPDATA") or _home() / "AppData" / "Roaming")
    localappdata = Path(os.environ.get("LOCALAPPDATA") or _home() / "AppData" / "Local")
    config = Path(os.environ.get("XDG_CONFIG_HOME") or _home() / ".config")     # Linux: the XDG folder
    if daw == "reaper":
        base = {"darwin": _home() / "Library" / "Application Support" / "REAPER",
                "win32": appdata / "REAPER"}.get(platform, config / "REAPER")
        return base / "Scripts" / "stemd"
    if daw == "ableton":
        documents = _home() / ("Music" if platform == "darwin" else "Documents")
        return documents / "Ableton" / "User Library" / "Remote Scripts"
    if daw == "ardour":
        # Ardour keeps one folder per major version: the newest that exists (8, then 7), else 7's
        parent, name = {"darwin": (_home() / "Library" / "Preferences", "Ardour{}"),
                        "win32": (localappdata, "Ardour{}")}.get(platform, (config, "ardour{}"))
        found = [parent / name.format(v) for v in ARDOUR_VERSIONS if (parent / name.format(v)).is_dir()]
        return (found[0] if found else parent / name.format(ARDOUR_VERSIONS[-1])) / "scripts"
    raise ValueError(daw)


NEXT_STEPS = {
    "reaper": """In REAPER:
  1. Actions > Show action list > New action > Load ReaScript..., choose {target}
  2. Right-click the new action "Script: stemd_insert.py" > Copy selected action command ID
  3. Preferences > Control/OSC/web > Add > OSC (Open Sound Control): pattern config Default,
     mode "Configure device IP+local port", device port 9000, device IP 127.0.0.1, local listen port 8000
  4. Run the bridge:  stemd bridge --follow reaper --insert reaper --reaper-action <the ID> --out <project>/stemd""",
    "ableton": """In Ableton Live 12 (12.0.5 or newer):
  1. Restart Live, then Settings > Link, Tempo & MIDI > Control Surface: choose "stemd_live" (no ports needed)
  2. The status bar says "stemd: listening on udp 127.0.0.1:11000" (quit AbletonOSC first if it is running)
  3. Run the bridge:  stemd bridge --follow ableton --insert ableton --track 1 --out <project folder>""",
    "ardour": """In Ardour 7 or 8:
  1. Edit > Lua Scripts > Script Manager > Action Hooks > New Hook > "stemd: import takes" > Add
  2. Run the bridge:  stemd bridge --follow ardour --insert ardour --session <session folder> --track <track name>
     (Edit > Preferences > Control Surfaces > Open Sound Control: enable it for --follow ardour)
  For a closed session:  stemd bridge ... --insert ardour-session --session <session>/<name>.ardour""",
}


def install(daw: str, dest: Optional[Path] = None) -> list[Path]:
    folder = Path(dest) if dest else default_folder(daw)
    folder.mkdir(parents=True, exist_ok=True)
    if daw == "reaper":
        return [Path(shutil.copy2(HERE / "reaper" / "stemd_insert.py", folder / "stemd_insert.py"))]
    if daw == "ardour":
        return [Path(shutil.copy2(HERE / "ardour" / "stemd_takes.lua", folder / "stemd_takes.lua"))]
    target = folder / "stemd_live"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(HERE / "ableton" / "stemd_live", target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return [target]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--daw", required=True, choices=["reaper", "ableton", "ardour"])
    p.add_argument("--dest", default=None, help="install here instead of where the DAW looks by default")


def run(args: argparse.Namespace) -> int:
    try:
        paths = install(args.daw, Path(args.dest) if args.dest else None)
    except OSError as e:
        from stemd.errors import StemdError

        raise StemdError(f"cannot install the {args.daw} scripts: {e}", "bad_arguments") from None
    for path in paths:
        print(f"installed {path}")
    target = paths[0]
    print(NEXT_STEPS[args.daw].format(target=target))
    return 0
