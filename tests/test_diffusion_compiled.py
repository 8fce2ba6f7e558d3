"""The compiled DiT forward (models/diffusion/compiled.py) makes the eager take, within 1e-4 in float32.

On the CPU here (Inductor, C++ kernels compiled on first use: a minute or more on a loaded 2-core machine);
on CUDA the same test runs with CUDA graphs where a GPU is.
"""

import importlib.util
import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("diffusers") is None
                                or importlib.util.find_spec("torch") is None,
                                reason="diffusers and torch are not installed")


def cuda_missing():
    import torch

    return None if torch.cuda.is_available() else "no CUDA device"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from stemd.models.diffusion.testmodels import write_test_pipeline

    path = tmp_path_factory.mktemp("sa3-tiny")
    write_test_pipeline(path, "sa3-tiny")
    return path


@pytest.fixture(scope="module")
def engine(folder):
    from stemd.models.registry import load_engine

    return load_engine(str(folder), device="cpu")


@pytest.fixture(scope="module", params=["cpu", "cuda"])
def device_engine(request, folder):
    """The test model on the CPU (blocks compiled by Inductor) and, where a GPU is, on CUDA (the whole
    forward with CUDA graphs, ``reduce-overhead``), float32 on both."""
    from stemd.models.registry import load_engine

    if request.param == "cuda" and cuda_missing():
        pytest.skip(cuda_missing())
    return load_engine(str(folder), device=request.param, dtype="float32")


def spec(bars=1, variations=1):
    from stemd.models.base import GenerationSpec
    from stemd.timing import Grid

    return GenerationSpec(grid=Grid(97, "3/4"), bars=bars, prompt="test", seed=7, sample_rate=48000,
                          variations=variations)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("clang++") is None,
                    reason="Inductor needs a C++ compiler on the CPU")
def test_the_compiled_forward_makes_the_eager_take_within_1e_4(device_engine):
    from torch._dynamo.utils import counters

    from stemd.models.diffusion.compiled import backend_of, use_backend

    engine = device_engine
    assert backend_of(engine) == "eager"
    eager = engine.raw(spec(variations=2))
    use_backend(engine, "compiled")
    held = engine.pipe.transformer._stemd_compiled
    assert held.scope == ("forward, reduce-overhead" if engine.device.type == "cuda" else "2 blocks")
    graphs = counters["stats"]["unique_graphs"]
    try:
        compiled = engine.raw(spec(variations=2))
        assert backend_of(engine) == "compiled"         # it ran compiled, not the eager fallback
        assert counters["stats"]["unique_graphs"] > graphs     # and Dynamo compiled a graph for it
        assert compiled.shape == eager.shape
        assert np.max(np.abs(compiled - eager)) <= 1e-4
        assert np.max(np.abs(eager)) > 1e-3             # a take, not silence on both sides
    finally:
        use_backend(engine, "eager")
    assert backend_of(engine) == "eager"
    assert np.array_equal(engine.raw(spec(variations=2)), eager)


def test_a_forward_that_cannot_be_compiled_runs_eagerly(engine, monkeypatch):
    from stemd.models.diffusion import compiled as module

    expected = engine.raw(spec())

    def broken(*_args, **_kwargs):
        raise RuntimeError("no C++ compiler")

    use_backend = module.use_backend
    use_backend(engine, "compiled")
    held = engine.pipe.transformer._stemd_compiled
    monkeypatch.setattr(held, "compiled", broken)
    try:
        got = engine.raw(spec())
        assert module.backend_of(engine) == "eager" and "no C++ compiler" in held.failed
        assert np.array_equal(got, expected)
    finally:
        use_backend(engine, "eager")


def test_an_unknown_backend_is_a_clear_error(engine):
    from stemd.models.diffusion.compiled import use_backend

    with pytest.raises(ValueError, match="eager, compiled"):
        use_backend(engine, "tensorrt")


def test_a_models_backend_setting_compiles_its_dit_and_eager_is_the_default(engine):
    from stemd.models.diffusion.compiled import backend_of
    from stemd.models.registry import load_engine

    folder = str(engine.folder)
    assert backend_of(load_engine(folder, device="cpu")) == "eager"
    assert backend_of(load_engine(folder, device="cpu", backend="auto")) == "eager"
    compiled = load_engine(folder, device="cpu", backend="compiled")
    assert isinstance(compiled.pipe.transformer.forward, __import__(
        "stemd.models.diffusion.compiled", fromlist=["CompiledForward"]).CompiledForward)
