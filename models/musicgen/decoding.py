"""Which decoding backend a MusicGen engine runs, chosen once at load and handed to it as a value.

``load`` reads the checkpoint in the dtype the backend needs and returns it with a ``Decoding``: the
backend's name, its step object (handed to every ``generate.Generation``), who decodes the chunks and
why. ``int8`` is the eager loop on a copy of the language model with int8 weights (``fast/int8.py``);
``onnx-int8`` the ONNX Runtime step with weight-only int8 matrices (``fast/onnx_step.py``).
``auto`` picks CUDA graphs on CUDA and eager on other accelerators; on a CPU it times ONNX Runtime
(float32 and int8), the eager loop (in the dtype eager would run in) and int8 against each other and keeps
that verdict on disk per model files, CPU model, threads and versions (``fast/choose.py``), so the
next start on that kind of machine does not measure again.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Optional

import torch

from stemd.models.base import EngineError
from stemd.models.devices import DTYPE_NAMES, gpu_dtype, named_dtype
from stemd.models.musicgen.generate import EagerStep
from stemd.models.musicgen.loading import Checkpoint, is_melody, load_checkpoint, resolve
from stemd.models.registry import DECODE_BACKENDS

log = logging.getLogger("stemd.models.musicgen")


#: the backends whose step runs in ONNX Runtime on a float32 model, and those that run only on a CPU
ONNX_BACKENDS = ("onnx", "onnx-int8")
CPU_BACKENDS = (*ONNX_BACKENDS, "int8")


@dataclass
class Decoding:
    backend: str                      # one of DECODE_BACKENDS except auto
    step: object                      # the step object every Generation of the engine is handed
    reason: str = "asked for"         # what info() says about the choice
    codec: Optional[object] = None    # fast.choose.CodecChoice: who decodes the chunks (None: torch)
    rates: Optional[dict] = None      # steps/s that auto measured (or kept)

    def session_bytes(self) -> int:
        """What ONNX Runtime holds beside torch's tensors: the files of the exported step and EnCodec
        decoder it loaded (their weights; 0 for the torch paths)."""
        paths = [getattr(self.step, "path", None), getattr(self.codec.run, "path", None) if self.codec else None]
        total = 0
        for path in filter(None, paths):
            total += sum(f.stat().st_size for f in path.parent.iterdir() if f.name.startswith(path.name))
        return total

    def info(self) -> dict:
        onnx_codec = self.codec is not None and self.codec.run is not None
        out = {"decode_backend": self.backend, "decode_backend_reason": self.reason,
               "codec_decode": "onnx" if onnx_codec else "torch"}
        if self.rates:
            out["decode_steps_per_s"] = dict(self.rates)
        if self.codec is not None:
            out["codec_decode_reason"] = self.codec.reason
        return out


def cpu_has_native_bf16() -> bool:
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(cpu, name, lambda: False)() for name in checks)


def pick_dtype(dtype: Optional[str], device: torch.device) -> torch.dtype:
    """bfloat16 on GPUs and CPUs that compute in it natively (AVX512-BF16, AMX: half the memory traffic
    per step), float16 on other GPUs and on Apple silicon, float32 on other CPUs."""
    if dtype and dtype != "auto":
        return named_dtype(dtype)
    if device.type != "cpu":
        return gpu_dtype(device) or torch.float32
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def check(backend: str, device: torch.device) -> None:
    if backend not in DECODE_BACKENDS:
        raise EngineError(f"backend must be one of {', '.join(DECODE_BACKENDS)}; got {backend!r}")
    if backend == "cuda-graph" and device.type != "cuda":
        raise EngineError(f"the cuda-graph decoding backend needs a CUDA device, not {device}")
    if backend in CPU_BACKENDS and device.type != "cpu":
        raise EngineError(f"the {backend} decoding backend runs on the CPU, not {device}")


def make(backend: str, ck: Checkpoint, reason: str = "asked for") -> Decoding:
    """The ``Decoding`` of a named backend (not auto) for a loaded checkpoint."""
    if backend == "eager":
        return Decoding("eager", EagerStep(), reason)
    if backend in ONNX_BACKENDS:
        if ck.device.type != "cpu" or ck.lm.layer_norm.weight.dtype != torch.float32:
            raise EngineError(f"the {backend} decoding backend runs a float32 model on the CPU, not "
                              f"{str(ck.lm.layer_norm.weight.dtype).replace('torch.', '')} on {ck.device}")
        choose = _onnx_parts()
        onnx = choose.setup_onnx(ck, int8=backend == "onnx-int8")
        return Decoding(backend, onnx.step, reason, codec=onnx.codec)
    from stemd.models.musicgen.fast.backends import make_backend

    try:
        return Decoding(backend, make_backend(backend, ck.device), reason)
    except ValueError as e:
        raise EngineError(str(e)) from None


def _onnx_parts():
    try:
        from stemd.models.musicgen.fast import choose
    except ImportError as e:
        raise EngineError(f"the onnx decoding backend needs onnx, onnxscript and onnxruntime "
                          f"(pip install 'stemd[daemon]'): {e}") from None
    return choose


def asks_float32(dtype: Optional[str]) -> bool:
    """``--dtype`` unset, auto or a name of float32 (the ONNX paths' and auto's CPU timing's dtype)."""
    return dtype in (None, "auto") or DTYPE_NAMES.get(dtype) == "float32"


def auto_without_timing(device: torch.device, dtype: Optional[str]) -> Optional[tuple[str, str]]:
    """What ``auto`` runs where it times nothing, and why: CUDA graphs on CUDA, eager on other
    accelerators and on a CPU asked for another dtype than float32; None on a CPU in float32, where it
    times the CPU paths (the model pool plans for that case too: ``backend_plan.planned_backend``)."""
    if device.type == "cuda":
        return "cuda-graph", "auto: a CUDA device, so decoding steps replay as CUDA graphs"
    if device.type != "cpu":
        return "eager", f"auto: no faster backend than eager on {device.type}"
    if not asks_float32(dtype):
        return "eager", f"auto: ONNX Runtime decodes float32 and this model is loaded in {dtype}, so eager"
    return None


def load(model: str, device: torch.device, dtype: Optional[str], backend: str,
         reason: str = "asked for") -> tuple[Checkpoint, Decoding]:
    """The checkpoint in the dtype ``backend`` needs, and its ``Decoding``. ``onnx`` and a CPU ``auto``
    load float32 unless another dtype is asked for."""
    check(backend, device)
    dt = pick_dtype(dtype, device)
    if is_melody(model):
        if backend not in ("auto", "eager"):
            raise EngineError(f"a MusicGen melody checkpoint decodes with the eager backend, not {backend}")
        return _load(model, device, dt), Decoding("eager", EagerStep(), "melody checkpoints decode eagerly (their "
                                                  "conditioning is a prefix the faster steps do not run)")
    if backend in ONNX_BACKENDS and not asks_float32(dtype):
        raise EngineError(f"the {backend} decoding backend runs float32, not {dtype}")
    if backend == "int8":
        if dtype not in (None, "auto"):
            raise EngineError(f"the int8 decoding backend holds int8 weights and computes in bfloat16; "
                              f"--dtype {dtype} does not apply")
        return _int8(_load(model, device, torch.float32), reason)
    if backend != "auto":
        ck = _load(model, device, torch.float32 if backend in ONNX_BACKENDS else dt)
        return ck, make(backend, ck, reason)
    fixed = auto_without_timing(device, dtype)
    if fixed is not None:
        chosen, why = fixed
        return _load(model, device, dt), Decoding(chosen, _cuda_graph() if chosen == "cuda-graph" else EagerStep(), why)
    try:
        from stemd.models.musicgen.fast import choose
    except ImportError as e:
        return _load(model, device, dt), Decoding("eager", EagerStep(), f"auto: ONNX Runtime is not installed ({e}), "
                                                                        "so eager")
    return _auto_cpu(model, device, dt, choose)


def _auto_cpu(model: str, device: torch.device, eager_dt: torch.dtype, choose) -> tuple[Checkpoint, Decoding]:
    """The fastest CPU path: the verdict kept on disk, else measured now (and kept); then the winner is
    built from a checkpoint loaded as it needs (float32 for the ONNX and int8 paths, ``eager_dt`` for eager)."""
    key = choose.decision_key(resolve(model), eager_dt)
    kept = choose.load_decision(key)
    ck, codec = None, None
    if kept:
        backend, rates = kept["backend"], dict(kept["rates"])
        figures = ", ".join(f"{k} {v:.2f}" for k, v in rates.items())
        reason = f"auto: measured {kept['measured']} (kept on disk), steps/s: {figures} -> {backend}"
    else:
        ck = _load(model, device, torch.float32)
        log.info("auto: timing the CPU decoding paths for %s on this machine (once; the verdict is kept)", ck.name)
        m = choose.measure_cpu(ck, eager_dt)
        choose.save_decision(key, m)
        backend, rates, reason, codec = m.backend, m.rates, "auto: " + m.reason, m.codec
    if backend == "eager" and eager_dt != torch.float32:
        if ck is None:
            ck = _load(model, device, eager_dt)
        else:                          # the float32 model it was timed from, cast in place
            with torch.inference_mode(False), torch.no_grad():
                ck.lm.to(eager_dt)
    elif ck is None:
        ck = _load(model, device, torch.float32)
    if backend == "int8":
        ck, d = _int8(ck, reason)
        d.codec = codec or choose.setup_codec(ck)      # the chunks still go where they decode faster
    elif backend in ONNX_BACKENDS:
        onnx = choose.setup_onnx(ck, int8=backend == "onnx-int8", codec=codec)
        d = Decoding(backend, onnx.step, reason, codec=onnx.codec)
    else:
        d = Decoding("eager", EagerStep(), reason, codec=codec or choose.setup_codec(ck))
    d.rates = rates
    return ck, d


def _int8(ck: Checkpoint, reason: str) -> tuple[Checkpoint, Decoding]:
    """``ck`` (float32) with its language model quantized to int8 weights, and the eager step on it."""
    from stemd.models.musicgen.fast import int8

    if not int8.available():
        raise EngineError("the int8 decoding backend needs torch's int8 CPU kernel (aten._weight_int8pack_mm), "
                          "which this torch lacks")
    with torch.inference_mode(False), torch.no_grad():
        ck = dataclasses.replace(ck, lm=int8.quantize(ck.lm))
    return ck, Decoding("int8", EagerStep(), reason)


def _cuda_graph():
    from stemd.models.musicgen.fast.cuda_graph import CUDAGraphStep

    return CUDAGraphStep()


def _load(model: str, device: torch.device, dtype: torch.dtype) -> Checkpoint:
    with torch.inference_mode(False), torch.no_grad():
        return load_checkpoint(model, device, dtype)
