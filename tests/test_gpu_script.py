"""bench/gpu.sh: every GPU measurement in one script; its dry run checks each command's arguments here."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_dry_run_prints_every_gpu_measurement_and_each_ones_arguments_parse():
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--dry-run"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stdout + done.stderr
    commands = [line for line in done.stdout.splitlines() if line.startswith("[")]
    assert len(commands) == done.stdout.count("  arguments parse") >= 10
    text = "\n".join(commands)
    for needed in ("bench/diffusion.py --device cuda --dtype bfloat16 --arch sa3-small --bars 8",
                   "--variations 8", "--backend compiled", "--memory", "tests/test_fast_decode.py", "tests/test_diffusion_compiled.py -k cuda",
                   "bench/fast_decode.py --device cuda", "bench/decode.py --device cuda --backend cuda-graph",
                   "--arch musicgen-large", "bench/daemon.py", "--backend auto", "bench/models.py --device cuda",
                   "sa3-medium acestep-turbo"):
        assert needed in text, needed


def test_a_command_line_that_does_not_parse_is_caught_without_running():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "argcheck.py"), "bench/diffusion.py",
                           "--backend", "tensorrt"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "invalid choice: 'tensorrt'" in done.stderr


def test_gpu_sh_refuses_an_unknown_argument():
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--fast"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "unknown argument --fast" in done.stderr
