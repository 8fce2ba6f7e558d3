"""The ``stemd`` command: a table of subcommands, each a module with ``add_arguments`` and ``run``.

Only the chosen subcommand's module is imported, and those modules import heavy things (torch,
the daemon) inside ``run``: ``stemd bridge --help`` works on a laptop without torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from stemd.errors import StemdError
from stemd.protocol import VERSION

#: name -> (module, one line of help)
COMMANDS = {
    "serve": ("stemd.daemon.cmd_serve", "run the daemon: keep a model warm and serve DAWs over OSC"),
    "bridge": ("stemd.bridge.cmd_bridge", "the DAW-side client: follow the transport, request and deliver takes"),
    "render": ("stemd.daemon.cmd_render", "render takes offline to WAV files with JSON sidecars"),
    "conform": ("stemd.models.cmd_conform", "conform an audio file to a tempo grid (rate, tempo, bars)"),
    "pull": ("stemd.models.cmd_pull", "fetch a model from the Hugging Face hub into its cache (the one command that downloads)"),
    "make-test-model": ("stemd.models.cmd_make_test_model",
                        "write a small random-weight MusicGen checkpoint (a test model: it makes noise)"),
    "install-host-scripts": ("stemd.plugin_host.cmd_install", "install stemd's scripts into a DAW"),
    "doctor": ("stemd.cmd_doctor", "check this machine: Python, torch, device, models, MIDI, audio, ports"),
}


class CommandError(StemdError):
    """A problem the user can fix: printed as one line, exit code 2."""

    code = "bad_arguments"


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<22}{text}" for name, (_m, text) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="stemd", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="stemd: a warm MusicGen daemon that streams bar-locked stems into your DAW.",
        epilog=f"commands:\n{lines}\n\n'stemd COMMAND --help' tells more.")
    parser.add_argument("--version", action="version", version=f"stemd {VERSION}")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        parser = _top_parser()
        parser.parse_args(argv)
        parser.print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"stemd: unknown command {name!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module_name, text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"stemd {name}", description=text)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except StemdError as e:
        print(f"stemd {name}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
