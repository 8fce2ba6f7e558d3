"""``stemd install-host-scripts --daw reaper|ableton|ardour``: copy stemd's in-DAW scripts where the DAW
looks for them, and say what to click next. ``--plugin``: copy the built stemd plugin (VST3, CLAP, LV2
bundles from ``make plugin``) into the user's plugin folders."""

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


PLUGIN_BUNDLES = {"vst3": "stemd.vst3", "clap": "stemd.clap", "lv2": "stemd.lv2"}
PLUGIN_BUILD = HERE.parent / "build" / "plugin"   # where `make plugin` puts them in a source checkout


def plugin_folders(platform: Optional[str] = None) -> dict[str, Path]:
    """Where hosts look for each plugin format of the user's own (no administrator rights needed, except
    Windows' VST3 and CLAP folders, which are system-wide by their specs)."""
    platform = platform or sys.platform
    if platform == "darwin":
        base = _home() / "Library" / "Audio" / "Plug-Ins"
        return {"vst3": base / "VST3", "clap": base / "CLAP", "lv2": base / "LV2"}
    if platform == "win32":
        common = Path(os.environ.get("COMMONPROGRAMFILES") or "C:/Program Files/Common Files")
        appdata = Path(os.environ.get("APPDATA") or _home() / "AppData" / "Roaming")
        return {"vst3": common / "VST3", "clap": common / "CLAP", "lv2": appdata / "LV2"}
    return {"vst3": _home() / ".vst3", "clap": _home() / ".clap", "lv2": _home() / ".lv2"}


def install_plugin(build: Optional[Path] = None, dest: Optional[Path] = None) -> list[Path]:
    """Copies each built bundle (replacing an older copy) into its folder, or all into ``dest``."""
    build = Path(build) if build else PLUGIN_BUILD
    missing = [name for name in PLUGIN_BUNDLES.values() if not (build / name).exists()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} not in {build}: build the plugin first (make plugin, "
                                "or --from the folder that holds the bundles)")
    folders = plugin_folders()
    installed = []
    for fmt, name in PLUGIN_BUNDLES.items():
        folder = Path(dest) if dest else folders[fmt]
        folder.mkdir(parents=True, exist_ok=True)
        source, target = build / name, folder / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        if source.is_dir():
            shutil.copytree(source, target, symlinks=True)
        else:
            shutil.copy2(source, target)
        installed.append(target)
    return installed


PLUGIN_NEXT_STEPS = """Rescan plugins in your DAW and put "stemd" (an instrument) on a track; docs/plugin.md says how per DAW.
The plugin asks the daemon at $STEMD_DAEMON (default 127.0.0.1:9130) for takes: start it with  stemd serve
The JACK standalone stays in the build folder: {build}/stemd"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--daw", choices=["reaper", "ableton", "ardour"])
    what.add_argument("--plugin", action="store_true",
                      help="install the stemd plugin (VST3, CLAP, LV2) built by `make plugin` into your plugin folders")
    p.add_argument("--dest", default=None, help="install here instead of where the DAW looks by default")
    p.add_argument("--from", dest="build", default=None,
                   help="--plugin: the folder holding the built bundles (default: build/plugin of this checkout)")


def run(args: argparse.Namespace) -> int:
    if args.plugin:
        from stemd.errors import StemdError

        try:
            paths = install_plugin(Path(args.build) if args.build else None, Path(args.dest) if args.dest else None)
        except OSError as e:
            raise StemdError(f"cannot install the stemd plugin: {e}", "bad_arguments") from None
        for path in paths:
            print(f"installed {path}")
        print(PLUGIN_NEXT_STEPS.format(build=Path(args.build) if args.build else PLUGIN_BUILD))
        return 0
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
