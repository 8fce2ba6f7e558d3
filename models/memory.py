"""What a model costs a device: its weights, and what one request adds, estimated from the architecture.

Read from the checkpoint's files before anything loads (no torch): the weights from the safetensors
headers (element counts times the bytes of the dtype the model will run in; other weight files by
their size), the per-request memory from the config files. The daemon's model pool decides with
these figures which model to evict, refuses a request that cannot fit with ``too_large`` before any
work starts, and derives how many variations fit; once a model is loaded, the bytes its tensors
really hold replace the weights estimate.

Per request (``Footprint.request``), by family, times ``SAFETY``:

- MusicGen: the KV cache (layers x 2 x rows x positions x hidden), the text K/V (256 tokens), the
  logits of a step, EnCodec's streaming decode of one chunk; rows are 2 per variation (guidance).
- Stable Audio 3 and ACE-Step: the DiT's activations over the canvas (rows x tokens x hidden x
  (4 + 2 x ffn ratio), plus attention scores rows x heads x tokens^2), the latents, and the
  autoencoder's decode at full rate (variations x samples x its widest full-rate channels, float32,
  three buffers): at 48 kHz that decode, not the DiT, is usually the peak.
- click: nothing on a device.

These are estimates. What they miss, out-of-memory recovery catches (the request fails with
``engine_error``, the engine's caches are reset and the next request runs).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from stemd.models.diffusion.canvas import canvas_bound
from stemd.models.weights import WEIGHT_SUFFIXES

SAFETY = 1.25
GIB = 2 ** 30
#: safetensors dtype -> bytes per element (floating types are re-sized to the dtype the model runs in)
_SAFETENSORS_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
                      "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_FLOATING = {"F64", "F32", "F16", "BF16"}
DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}

MUSICGEN_TEXT_TOKENS = 256      # cross-attention K/V: the longest prompt the estimate allows for
MUSICGEN_WINDOW_SECONDS = 30.0  # a take longer than the window slides: the cache never grows past it
MUSICGEN_CODEC_SECONDS = 2.0    # EnCodec decodes a chunk with its context at a time


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2 ** 20:.1f} MiB"


def safetensors_tensors(path: Path) -> list[tuple[str, str, int]]:
    """``(name, dtype, elements)`` of every tensor in a safetensors file, from its header alone."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > 100 * 2 ** 20:
            raise ValueError(f"{path}: a safetensors header of {n} bytes")
        header = json.loads(f.read(n))
    return [(name, e["dtype"], math.prod(e["shape"])) for name, e in header.items() if name != "__metadata__"]


#: ``sizer(tensor name, stored dtype) -> bytes per element once loaded``
Sizer = Callable[[str, str], int]


def cast_to(dtype_bytes: Optional[int], keep: tuple = ()) -> Sizer:
    """Floating tensors loaded at ``dtype_bytes`` (None: as stored), except names starting with ``keep``."""
    def size(name: str, dtype: str) -> int:
        stored = _SAFETENSORS_BYTES.get(dtype, 4)
        if not dtype_bytes or dtype not in _FLOATING or name.startswith(keep):
            return stored
        return dtype_bytes
    return size


def weight_bytes(folder: Path, dtype_bytes: Optional[int] = None, sizer: Optional[Sizer] = None) -> int:
    """The bytes ``folder``'s weights take once loaded with floating tensors of ``dtype_bytes`` bytes
    (None: as stored; ``sizer``: per tensor). A folder holding both safetensors and pickled copies counts
    the safetensors."""
    sizer = sizer or cast_to(dtype_bytes)
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    safe = [p for p in files if p.suffix == ".safetensors"]
    total = 0
    for path in safe:
        for name, dtype, n in safetensors_tensors(path):
            total += n * sizer(name, dtype)
    covered = {p.parent for p in safe}
    for path in files:
        if path.suffix != ".safetensors" and path.parent not in covered:
            size = path.stat().st_size          # a pickle: about its float32 tensors' bytes
            total += size * dtype_bytes // 4 if dtype_bytes else size
    return total


def _config(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


@dataclass(frozen=True)
class Footprint:
    """A model's cost on a device: ``weights`` bytes, and ``request(seconds, variations)`` more per request."""

    family: str
    weights: int
    dtype_bytes: int = 4
    arch: dict = field(default_factory=dict)

    def request(self, seconds: float, variations: int) -> int:
        return int(SAFETY * _REQUEST[self.family](self.arch, float(seconds), int(variations), self.dtype_bytes))



def _musicgen(arch: dict, seconds: float, variations: int, b: int) -> int:
    rows = 2 * variations
    frames = math.ceil(min(seconds * 1.1, MUSICGEN_WINDOW_SECONDS) * arch["frame_rate"]) + arch["codebooks"] + 2
    positions = min(64 * math.ceil(frames / 64), arch["max_positions"])
    layers, hidden = arch["layers"], arch["hidden"]
    kv = layers * 2 * rows * positions * hidden * b
    text = layers * 2 * rows * MUSICGEN_TEXT_TOKENS * hidden * b
    step = rows * (arch["codebooks"] * arch["vocab"] * 4 * 4 + 4 * arch["ffn"] * b)
    samples = MUSICGEN_CODEC_SECONDS * arch["sample_rate"]
    codec = variations * samples * arch["codec_width"] * 4 * 3
    return int(kv + text + step + codec)


def _diffusion(arch: dict, seconds: float, variations: int, b: int) -> int:
    rows = 2 * variations                         # guided: the unconditional half too
    canvas = canvas_bound(seconds)
    frames = math.ceil(canvas / arch["latent_seconds"])
    tokens = math.ceil(frames / arch.get("patch", 1))
    hidden = arch["hidden"]
    dit = rows * tokens * hidden * (4 + 2 * arch["ffn_ratio"]) * b + rows * arch["heads"] * tokens ** 2 * b
    latents = rows * frames * arch["latent_dim"] * 4 * 4
    samples = canvas * arch["sample_rate"]
    decode = variations * samples * arch["vae_width"] * 4 * 3
    return int(dit + latents + decode)


_REQUEST = {"click": lambda arch, seconds, variations, b: 0, "musicgen": _musicgen, "musicgen-melody": _musicgen,
            "stable-audio-3": _diffusion, "ace-step": _diffusion}


def musicgen_arch(folder: Path) -> dict:
    """The numbers the MusicGen estimate uses, from an HF checkpoint's config.json (audiocraft
    checkpoints: musicgen-small's)."""
    cfg = _config(Path(folder) / "config.json")
    dec, audio = cfg.get("decoder", {}), cfg.get("audio_encoder", {})
    ratios = audio.get("upsampling_ratios", [8, 5, 4, 4])
    rate = int(audio.get("sampling_rate", 32000))
    filters = int(audio.get("num_filters", 64))
    hidden = int(dec.get("hidden_size", 1024))
    return {"layers": int(dec.get("num_hidden_layers", 24)), "hidden": hidden,
            "ffn": int(dec.get("ffn_dim", 4 * hidden)), "codebooks": int(dec.get("num_codebooks", 4)),
            "vocab": int(dec.get("vocab_size", 2048)), "max_positions": int(dec.get("max_position_embeddings", 2048)),
            "frame_rate": rate / math.prod(ratios), "sample_rate": rate,
            "codec_width": filters * 2 ** len(ratios) // 2}


def diffusion_arch(folder: Path, family: str) -> dict:
    """The numbers the diffusion estimate uses, from a diffusers pipeline's transformer and vae configs."""
    folder = Path(folder)
    dit, vae = _config(folder / "transformer" / "config.json"), _config(folder / "vae" / "config.json")
    hidden = int(dit.get("embed_dim") or dit.get("hidden_size") or 1024)
    heads = int(dit.get("num_heads") or dit.get("num_attention_heads") or 16)
    ffn_ratio = float(dit.get("ff_mult") or (dit.get("intermediate_size", 4 * hidden) / hidden))
    rate = int(vae.get("sampling_rate", 48000 if family == "ace-step" else 44100))
    if family == "ace-step":
        ratio = math.prod(vae.get("downsampling_ratios", [2, 4, 4, 6, 10]))
        width = int(vae.get("decoder_channels", 128)) * int((vae.get("channel_multiples") or [1])[0])
        latent_dim = int(vae.get("decoder_input_channels", 64))
        patch = int(dit.get("patch_size", 2))
    else:
        ratio = int(vae.get("patch_size", 256)) * math.prod(vae.get("encoder_strides", [16]))
        width = int(vae.get("encoder_channels", 128)) * int(max(vae.get("encoder_c_mults", [1]) or [1]))
        width = max(2, width // int(vae.get("patch_size", 256)) * 4)  # full rate: the patches' channels
        latent_dim = int(vae.get("latent_dim", 64))
        patch = int(dit.get("patch_size", 1))
    return {"hidden": hidden, "heads": heads, "ffn_ratio": ffn_ratio, "latent_seconds": ratio / rate,
            "patch": patch, "latent_dim": latent_dim, "sample_rate": rate, "vae_width": width}


def _musicgen_lm(dtype_bytes: int) -> Sizer:
    """MusicGen's language model alone (not T5, not EnCodec) at ``dtype_bytes`` per floating weight."""
    lm = cast_to(dtype_bytes)
    return lambda name, stored: 0 if name.startswith(("text_encoder.", "audio_encoder.")) else lm(name, stored)


def footprint(family: str, folder: Optional[Path], dtype: str = "float32", backend: Optional[str] = None) -> Footprint:
    """``family``'s footprint for the checkpoint in ``folder`` running in ``dtype`` (a torch dtype's name);
    ``backend``: MusicGen's decoding backend, for the CPU paths that hold the language model otherwise
    (``int8``: its matrices in int8, instead of ``dtype``; ``onnx``: ONNX Runtime's float32 copy of the
    step beside the float32 model; ``onnx-int8``: an int8 copy beside it; both ONNX paths also hold a
    float32 copy of EnCodec's decoder, which decodes the chunks where it measures faster)."""
    dtype_bytes = DTYPE_BYTES.get(dtype, 4)
    if family == "click" or folder is None:
        return Footprint("click", 0, dtype_bytes)
    if family in ("musicgen", "musicgen-melody"):
        # as stemd's loader casts: the LM to the dtype; T5 too in bfloat16, else float32 (it is fragile in
        # float16); EnCodec as stored; plus the LM's sinusoid table (float32)
        arch = musicgen_arch(folder)
        lm = cast_to(dtype_bytes, keep=("audio_encoder.",))
        text = cast_to(2 if dtype in ("bfloat16", "bf16") else 4)
        sizer = lambda name, stored: (text if name.startswith("text_encoder.") else lm)(name, stored)  # noqa: E731
        weights = weight_bytes(folder, sizer=sizer) + arch["max_positions"] * arch["hidden"] * 4
        if backend in ("int8", "onnx", "onnx-int8"):
            lm_float32 = weight_bytes(folder, sizer=_musicgen_lm(4))
            if backend == "int8":
                weights += lm_float32 // 4 - weight_bytes(folder, sizer=_musicgen_lm(dtype_bytes))
            else:
                codec = weight_bytes(folder, sizer=lambda name, stored: 4 if name.startswith(
                    ("audio_encoder.decoder.", "audio_encoder.quantizer.")) else 0)
                weights += (lm_float32 if backend == "onnx" else lm_float32 // 4) + codec
        return Footprint(family, weights, dtype_bytes, arch)
    arch = diffusion_arch(folder, family)
    return Footprint(family, weight_bytes(folder, dtype_bytes), dtype_bytes, arch)
