import json
import socket
import subprocess
import sys


def doctor(*args, env=None):
    out = subprocess.run([sys.executable, "-m", "stemd", "doctor", "--json", *args], capture_output=True,
                         text=True, env=env)
    return {c["check"]: c for c in json.loads(out.stdout)}


def test_doctor_reports_python_and_a_busy_daemon_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        checks = doctor("--port", str(port))
    assert checks["python"]["status"] == "ok"
    assert checks["daemon port"]["status"] == "warn" and str(port) in checks["daemon port"]["detail"]
    assert {"torch", "models", "midi backends", "chromium"} <= set(checks)
    import shutil

    assert (checks["chromium"]["status"] == "ok") == any(shutil.which(n) for n in ("chromium", "chromium-browser",
                                                                                 "google-chrome", "google-chrome-stable"))


def test_doctor_lists_models_present_in_the_hf_cache(tmp_path):
    import os

    snap = tmp_path / "hub" / "models--facebook--musicgen-small" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    env = dict(os.environ, HF_HOME=str(tmp_path))
    env.pop("HF_HUB_CACHE", None)
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    checks = doctor(env=env)
    assert checks["models"]["status"] == "ok"
    assert "facebook/musicgen-small" in checks["models"]["detail"]


def test_doctor_checks_each_model_a_daemon_would_serve(tiny, tmp_path):
    models = tmp_path / "models.toml"
    models.write_text(f'[models]\nmono = "{tiny}"\ngone = "{tmp_path / "nothing"}"\n')
    out = subprocess.run([sys.executable, "-m", "stemd", "doctor", "--json", "--models", str(models), "--model",
                          "click"], capture_output=True, text=True)
    checks = {c["check"]: c for c in json.loads(out.stdout)}
    assert out.returncode == 1                                  # a model that is not there is a failure
    assert checks["model mono"]["status"] == "ok" and "musicgen at" in checks["model mono"]["detail"]
    assert "a test model" in checks["model mono"]["detail"] and "commercial use NO" in checks["model mono"]["detail"]
    assert checks["model gone"]["status"] == "fail" and "not found" in checks["model gone"]["detail"]
    assert checks["model click"]["status"] == "ok"
