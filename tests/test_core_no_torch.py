"""The bridge runs on a laptop without torch: prove it in a process where importing torch fails."""

import subprocess
import sys
import textwrap

import pytest


@pytest.fixture
def torchless_env(tmp_path):
    """PYTHONPATH with a ``torch`` (and transformers) that raise ImportError when imported."""
    for name in ("torch", "transformers", "torchaudio"):
        pkg = tmp_path / name
        pkg.mkdir()
        (pkg / "__init__.py").write_text(f"raise ImportError('{name} is not installed on this machine (test)')\n")
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(tmp_path) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_importing_torch_really_fails_in_that_environment(torchless_env):
    out = subprocess.run([sys.executable, "-c", "import torch"], env=torchless_env, capture_output=True, text=True)
    assert out.returncode != 0 and "not installed" in out.stderr


def test_import_stemd_bridge_without_torch(torchless_env):
    code = textwrap.dedent("""
        import sys
        import stemd.bridge, stemd.plugin_host, stemd.protocol, stemd.timing, stemd.osc, stemd.takes
        import pkgutil, importlib
        for mod in pkgutil.walk_packages(stemd.bridge.__path__, "stemd.bridge."):
            importlib.import_module(mod.name)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "stemd")
                       and (m.startswith("torch") or m.startswith("transformers")
                            or m.startswith("stemd.models") or m.startswith("stemd.daemon")))
        assert not heavy, heavy
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], env=torchless_env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("argv", [["bridge", "--help"], ["--help"], ["install-host-scripts", "--help"]])
def test_stemd_bridge_help_without_torch(torchless_env, argv):
    out = subprocess.run([sys.executable, "-m", "stemd", *argv], env=torchless_env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "usage: stemd" in out.stdout
