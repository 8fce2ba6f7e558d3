"""From ``--model`` (a hub id or a path) to our modules, without the network and without audiocraft.

Two on-disk formats:

* Hugging Face MusicGen (facebook/musicgen-small, -medium, -large, -stereo-*): ``config.json`` plus
  ``model.safetensors`` (or shards with an index, or ``pytorch_model.bin``) and tokenizer files; a
  local folder or a snapshot in the HF cache (``HF_HOME`` / ``HF_HUB_CACHE``; we only ever read it).
* audiocraft (community fine-tunes): ``state_dict.bin`` (the LM) and ``compression_state_dict.bin``
  (EnCodec); renamed here to the HF layout. The text encoder (t5-base) comes from the HF cache.

Weights are read one tensor at a time and cast straight to the target dtype, so the peak memory is
the model in that dtype, not a float32 copy of it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch

from stemd.models.base import ModelNotFound
from stemd.models.musicgen.model import LMArgs, MusicGenLM, sinusoids
from stemd.models.musicgen.testmodel import TEST_MODEL_KEY
from stemd.models.registry import HUB_ID

AUDIOCRAFT_FILES = ("state_dict.bin", "compression_state_dict.bin")
MAX_TEXT_TOKENS = 256


@dataclass
class Checkpoint:
    """Everything the engine runs, on its device."""

    name: str
    lm: MusicGenLM
    text_encoder: torch.nn.Module        # transformers T5EncoderModel
    tokenizer: object
    codec: torch.nn.Module               # transformers EncodecModel (kept in float32)
    sample_rate: int
    frame_rate: int
    audio_channels: int
    test_model: bool
    generation: dict
    melody: Optional[object] = None      # a melody checkpoint's melody.ChromaSettings; None for plain MusicGen

    @property
    def device(self) -> torch.device:
        return self.lm.layer_norm.weight.device

    @property
    def hop(self) -> int:
        return self.sample_rate // self.frame_rate

    @torch.no_grad()
    def text_ids(self, words: str, grid: str = "") -> list[int]:
        """``"<words>. <grid>"`` as T5 token ids ending in its end token, at most MAX_TEXT_TOKENS: a long
        prompt loses its last words, never the grid."""
        text = ". ".join(t for t in (words, grid) if t)
        whole = self.tokenizer(text)["input_ids"] if len(text) < 4 * MAX_TEXT_TOKENS else None
        if whole is not None and len(whole) <= MAX_TEXT_TOKENS:
            return whole
        tail = self.tokenizer((". " if words else "") + grid, add_special_tokens=False)["input_ids"] if grid else []
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        room = max(0, MAX_TEXT_TOKENS - len(tail) - len(eos))
        head = self.tokenizer(words, add_special_tokens=False, truncation=True,
                              max_length=room)["input_ids"] if words and room else []
        return (head + tail)[:MAX_TEXT_TOKENS - len(eos)] + eos

    def encode_text(self, words: str, variations: int, guided: bool,
                    grid: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """T5's hidden states and mask for the words and the grid (``text_ids``), one row per variation, then
        the unconditional half (no text at all) when ``guided``."""
        ids = torch.tensor([self.text_ids(words, grid)], dtype=torch.long, device=self.device)
        mask = torch.ones_like(ids)
        hidden = self.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        hidden, mask = hidden.expand(variations, -1, -1), mask.expand(variations, -1)
        if guided:
            hidden = torch.cat([hidden, torch.zeros_like(hidden)])
            mask = torch.cat([mask, torch.zeros_like(mask)])
        return hidden, mask

    @torch.no_grad()
    def encode_audio(self, audio, max_frames: int) -> torch.Tensor:
        """A continuation (the DAW's selection, ``base.Audio``) -> EnCodec codes ``(K, P)``: its last whole
        frames, at most ``max_frames``, so that the generated audio starts exactly where the selection ends."""
        import numpy as np

        samples = np.asarray(audio.samples, dtype=np.float32)
        if samples.ndim == 1:
            samples = samples[None]
        if audio.sample_rate != self.sample_rate:
            import soxr

            samples = soxr.resample(samples.T, audio.sample_rate, self.sample_rate, quality="HQ").T
        if self.audio_channels == 1:
            samples = samples.mean(axis=0, keepdims=True)
        elif samples.shape[0] == 1:
            samples = np.repeat(samples, 2, axis=0)
        else:
            samples = samples[:2]
        frames = min(samples.shape[-1] // self.hop, max_frames)
        if frames == 0:
            return torch.zeros(self.lm.args.num_codebooks, 0, dtype=torch.long)
        x = torch.from_numpy(np.ascontiguousarray(samples[:, samples.shape[-1] - frames * self.hop:]))
        x = x.to(self.device)
        k = self.lm.args.num_codebooks // self.audio_channels
        per_channel = [self.codec.encode(x[c][None, None]).audio_codes[0, 0, :k] for c in range(x.shape[0])]
        if self.audio_channels == 2:  # interleave: left codebook i at 2i, right at 2i + 1
            codes = torch.stack(per_channel, dim=1).reshape(-1, per_channel[0].shape[-1])
        else:
            codes = per_channel[0]
        return codes[:, :frames]


# -- finding the files ------------------------------------------------------------------------------

def fetch_hint(model: str) -> str:
    if HUB_ID.fullmatch(model) and not os.path.exists(os.path.expanduser(model)) \
            and not model.startswith((".", "/", "~")):
        return f"stemd pull {model}"
    return "stemd pull facebook/musicgen-small, or stemd make-test-model DIR (random weights: noise, for trying stemd)"


def hf_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def resolve(model: str) -> Path:
    """A local folder holding the checkpoint; raises ModelNotFound with where we looked."""
    path = Path(model).expanduser()
    if path.is_dir():
        if (path / "config.json").exists() or all((path / f).exists() for f in AUDIOCRAFT_FILES):
            return path
        raise ModelNotFound(f"model {model!r}: folder {path} has neither config.json (Hugging Face format) nor "
                            f"{' + '.join(AUDIOCRAFT_FILES)} (audiocraft format)")
    if path.exists():
        raise ModelNotFound(f"model {model!r}: {path} is a file; pass the checkpoint's folder")
    cache = hf_cache_dir()
    if HUB_ID.fullmatch(model):
        from huggingface_hub import snapshot_download

        try:  # local_files_only: we never download at run time, whatever HF_HUB_OFFLINE says
            return Path(snapshot_download(model, local_files_only=True, cache_dir=cache))
        except Exception:
            pass
    raise ModelNotFound(f"model {model!r} not found: no folder {path.resolve()} and no snapshot in the Hugging Face "
                        f"cache {cache}; fetch it with: {fetch_hint(model)}")


# -- reading tensors --------------------------------------------------------------------------------

def iter_hf_tensors(folder: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every weight of an HF checkpoint, one at a time."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").exists():
        files = ["model.safetensors"]
    elif (folder / "pytorch_model.bin").exists():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True, mmap=True)
        yield from state.items()
        return
    else:
        raise ModelNotFound(f"model folder {folder} has a config.json but no model.safetensors, shards or "
                            f"pytorch_model.bin")
    for name in files:
        yield from read_safetensors(folder / name)


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}


def read_safetensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) read one at a time with plain reads, not a memory map: the mapped file would
    count in the process's resident memory until closed, doubling the peak of a bfloat16 load."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        base = 8 + n
        entries = sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                         key=lambda kv: kv[1]["data_offsets"][0])
        for key, meta in entries:
            start, stop = meta["data_offsets"]
            f.seek(base + start)
            buf = bytearray(stop - start)
            f.readinto(buf)
            dtype = SAFETENSORS_DTYPES[meta["dtype"]]
            t = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
            yield key, t.reshape(meta["shape"])


def split_components(tensors: Iterator[tuple[str, torch.Tensor]], lm_dtype: torch.dtype = torch.float32,
                     text_dtype: torch.dtype = torch.float32) -> dict[str, dict[str, torch.Tensor]]:
    """HF MusicGen names -> {"lm": ..., "text": ..., "codec": ...} with each prefix stripped; each tensor is
    cast as it is read, so a bfloat16 load never holds the float32 model."""
    parts: dict[str, dict[str, torch.Tensor]] = {"lm": {}, "text": {}, "codec": {}}
    heads: dict[int, torch.Tensor] = {}
    for key, t in tensors:
        if key.startswith("decoder.model.decoder."):
            parts["lm"][key[len("decoder.model.decoder."):]] = t.to(lm_dtype)
        elif m := re.fullmatch(r"decoder\.lm_heads\.(\d+)\.weight", key):
            heads[int(m.group(1))] = t.to(lm_dtype)
        elif key.startswith(("enc_to_dec_proj.", "audio_enc_to_dec_proj.")):
            parts["lm"][key] = t.to(lm_dtype)
        elif key.startswith("text_encoder."):
            parts["text"][key[len("text_encoder."):]] = t.to(text_dtype)
        elif key.startswith("audio_encoder."):
            parts["codec"][key[len("audio_encoder."):]] = t
    if heads:
        parts["lm"]["lm_head.weight"] = torch.cat([heads[i] for i in range(len(heads))], dim=0)
    return parts


def codec_key(key: str) -> str:
    """Old weight-norm names (weight_g / weight_v) to torch's parametrizations, as transformers does."""
    key = re.sub(r"\.weight_g$", ".parametrizations.weight.original0", key)
    return re.sub(r"\.weight_v$", ".parametrizations.weight.original1", key)


def load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, dtype=None,
              ignore: tuple[str, ...] = ()) -> None:
    """Copy ``state`` into ``module`` (cast to ``dtype``), insisting every parameter is covered."""
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(ignore)]
    if missing:
        raise ModelNotFound(f"checkpoint is missing {len(missing)} {what} weights, e.g. {missing[:3]}")
    with torch.no_grad():
        for key, target in own.items():
            if key in state:
                src = state.pop(key)
                if src.shape != target.shape:
                    raise ModelNotFound(f"{what} weight {key} has shape {tuple(src.shape)}, "
                                        f"the config says {tuple(target.shape)}")
                target.copy_(src.to(target.dtype))


# -- building the modules ---------------------------------------------------------------------------

def build_lm(args: LMArgs, state: dict[str, torch.Tensor], dtype: torch.dtype, device) -> MusicGenLM:
    """Our decoder (a melody one for ``MelodyArgs``), created without allocating float32 weights first (meta
    device, then assigned)."""
    from stemd.models.musicgen.melody import MelodyArgs, MelodyLM

    with torch.device("meta"):
        lm = MelodyLM(args) if isinstance(args, MelodyArgs) else MusicGenLM(args)
    names = {k for k, _ in lm.named_parameters()}
    missing = names - state.keys()
    if missing:
        raise ModelNotFound(f"checkpoint is missing {len(missing)} decoder weights, e.g. {sorted(missing)[:3]}")
    params = {k: state[k].to(device=device, dtype=dtype) for k in names}
    lm.load_state_dict(params, strict=False, assign=True)
    lm.register_buffer("positions", sinusoids(args.max_positions, args.hidden_size).to(device), persistent=False)
    return lm.eval()


def build_text_encoder(config: dict, state: dict[str, torch.Tensor], dtype, device):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(**{k: v for k, v in config.items() if k not in ("architectures",)})
    if "encoder.embed_tokens.weight" not in state and "shared.weight" in state:
        state["encoder.embed_tokens.weight"] = state["shared.weight"]
    with torch.device("meta"):
        enc = T5EncoderModel(cfg)
    own = dict(enc.state_dict())
    missing = [k for k in own if k not in state]
    if missing:
        raise ModelNotFound(f"checkpoint is missing {len(missing)} text encoder weights, e.g. {missing[:3]}")
    enc.load_state_dict({k: state[k].to(device=device, dtype=dtype) for k in own}, strict=True, assign=True)
    enc.tie_weights() if hasattr(enc, "tie_weights") else None
    return enc.eval()


def build_codec(config: dict, state: dict[str, torch.Tensor], device):
    from transformers import EncodecConfig, EncodecModel

    codec = EncodecModel(EncodecConfig(**config))
    load_into(codec, {codec_key(k): v for k, v in state.items()}, "EnCodec")
    return codec.to(device).eval()


def load_tokenizer(folder: Path, fallback: Optional[str] = None):
    from transformers import AutoTokenizer

    from stemd.models.quiet import quiet_loading

    if (folder / "tokenizer.json").exists() or (folder / "spiece.model").exists():
        with quiet_loading():
            return AutoTokenizer.from_pretrained(str(folder))
    if fallback:
        with quiet_loading():
            return AutoTokenizer.from_pretrained(str(resolve(fallback)))
    raise ModelNotFound(f"model folder {folder} has no tokenizer (tokenizer.json or spiece.model)")


def is_melody(model: str) -> bool:
    """Whether ``model`` is a melody checkpoint (``musicgen_melody`` in its config.json)."""
    config = resolve(model) / "config.json"
    return config.exists() and json.loads(config.read_text()).get("model_type") == "musicgen_melody"


def load_checkpoint(model: str, device: torch.device, dtype: torch.dtype) -> Checkpoint:
    folder = resolve(model)
    if not (folder / "config.json").exists():
        from stemd.models.musicgen.audiocraft import load_audiocraft

        return load_audiocraft(model, folder, device, dtype)
    config = json.loads((folder / "config.json").read_text())
    if config.get("model_type") not in ("musicgen", "musicgen_melody"):
        raise ModelNotFound(f"model {model!r}: {folder}/config.json is a {config.get('model_type')!r} model, "
                            f"not musicgen or musicgen_melody")
    # T5 is numerically fragile in float16: keep it in float32 unless asked for bfloat16
    text_dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
    parts = split_components(iter_hf_tensors(folder), dtype, text_dtype)
    text_cfg, audio_cfg, dec_cfg = config["text_encoder"], config["audio_encoder"], config["decoder"]
    args = LMArgs.from_hf(dec_cfg, text_cfg["d_model"])
    melody = None
    if config["model_type"] == "musicgen_melody":
        from stemd.models.musicgen.melody import ChromaSettings, MelodyArgs

        args = MelodyArgs(**vars(args), num_chroma=config.get("num_chroma", 12),
                          chroma_length=config.get("chroma_length", 235))
        pre = folder / "preprocessor_config.json"
        melody = ChromaSettings.from_preprocessor(json.loads(pre.read_text()) if pre.exists() else {})
    text_encoder = build_text_encoder(text_cfg, parts.pop("text"), text_dtype, device)
    codec = build_codec(audio_cfg, parts.pop("codec"), device)
    lm = build_lm(args, parts.pop("lm"), dtype, device)
    generation = {}
    if (folder / "generation_config.json").exists():
        generation = json.loads((folder / "generation_config.json").read_text())
    return Checkpoint(name=model, lm=lm, text_encoder=text_encoder, tokenizer=load_tokenizer(folder, "t5-base"),
                      codec=codec, sample_rate=audio_cfg.get("sampling_rate", 32000),
                      frame_rate=frame_rate(audio_cfg), audio_channels=args.audio_channels,
                      test_model=bool(config.get(TEST_MODEL_KEY)), generation=generation, melody=melody)


def frame_rate(audio_cfg: dict) -> int:
    hop = 1
    for r in audio_cfg.get("upsampling_ratios", [8, 5, 4, 4]):
        hop *= r
    return audio_cfg.get("sampling_rate", 32000) // hop
