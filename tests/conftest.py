"""Fixtures every test file can use, without importing them:

- ``tiny`` / ``tiny_stereo``: MusicGen test checkpoints (the real architecture, random weights: they
  make noise, not music), written once per session; ``engine``: the tiny one loaded on the CPU in
  float32, once per test module.
- ``start_daemon`` / ``daemon``: a real ``stemd serve`` process (tests/daemon_fixtures.py).
- ``peer``: a stemd protocol peer with the click engine; ``jack``: a JACK server
  (tests/test_bridge_support.py).

MusicGen decodes with the reference loop (``eager``) in every test and every daemon a test starts
(``$STEMD_DECODE_BACKEND``, inherited by subprocesses): the default, ``auto``, would export and time
ONNX Runtime steps for each test model. Tests of the other backends, and of the default itself
(tests/test_fast_decode_onnx.py), ask for theirs.
"""

from __future__ import annotations

import os

import pytest

os.environ["STEMD_DECODE_BACKEND"] = "eager"

from daemon_fixtures import daemon, start_daemon  # noqa: F401  (fixtures for every test file)
from test_bridge_support import jack, peer  # noqa: F401  (fixtures for every test file)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    from stemd.models.musicgen.testmodel import write_test_model

    return write_test_model(tmp_path_factory.mktemp("tiny"), "tiny")


@pytest.fixture(scope="session")
def tiny_stereo(tmp_path_factory):
    from stemd.models.musicgen.testmodel import write_test_model

    return write_test_model(tmp_path_factory.mktemp("tiny-stereo"), "tiny-stereo")


@pytest.fixture(scope="module")
def engine(tiny):
    from stemd.models.musicgen.engine import MusicGenEngine

    return MusicGenEngine.load(str(tiny), device="cpu", dtype="float32")
