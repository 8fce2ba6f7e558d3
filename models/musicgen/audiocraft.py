"""audiocraft-format checkpoints (``state_dict.bin`` + ``compression_state_dict.bin``), without audiocraft.

``state_dict.bin`` is what audiocraft's ``export_lm`` writes: ``{"best_state": LM weights, "xp.cfg":
YAML text}``. Its names are renamed here to ours (fused ``in_proj_weight`` split into q, k, v; the
conditioner's ``output_proj`` is ``enc_to_dec_proj``). ``compression_state_dict.bin`` from
``export_pretrained_compression_model`` names a pretrained codec (``facebook/encodec_32khz``), loaded
from a folder or the HF cache. The text encoder named in the config (``t5-base``) comes from the HF
cache (or a folder) too. A fine-tuned EnCodec stored as raw audiocraft weights is not supported yet.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from stemd.models.base import ModelNotFound
from stemd.models.musicgen.model import LMArgs

T5_HUB_NAMES = {"t5-small": "google-t5/t5-small", "t5-base": "google-t5/t5-base", "t5-large": "google-t5/t5-large"}

RENAMES = [  # audiocraft LM name fragment -> ours, applied in order
    (r"^emb\.(\d+)\.", r"embed_tokens.\1."),
    (r"^transformer\.layers\.", "layers."),
    (r"\.cross_attention\.", ".encoder_attn."),
    (r"\.linear1\.", ".fc1."),
    (r"\.linear2\.", ".fc2."),
    (r"\.norm1\.", ".self_attn_layer_norm."),
    (r"\.norm_cross\.", ".encoder_attn_layer_norm."),
    (r"\.norm2\.", ".final_layer_norm."),
    (r"^out_norm\.", "layer_norm."),
    (r"^condition_provider\.conditioners\.description\.output_proj\.", "enc_to_dec_proj."),
]


def lm_state_from_audiocraft(state: dict[str, torch.Tensor], hidden: int) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    heads: dict[int, torch.Tensor] = {}
    for key, value in state.items():
        if m := re.fullmatch(r"linears\.(\d+)\.weight", key):
            heads[int(m.group(1))] = value
            continue
        for pattern, repl in RENAMES:
            key = re.sub(pattern, repl, key)
        if key.endswith("in_proj_weight"):
            base = key[: -len("in_proj_weight")]
            for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
                out[f"{base}{name}.weight"] = value[i * hidden: (i + 1) * hidden]
        else:
            out[key] = value
    out["lm_head.weight"] = torch.cat([heads[i] for i in range(len(heads))], dim=0)
    return out


def unsupported(cfg: dict, state: dict) -> list[str]:
    """What an audiocraft checkpoint has that stemd's decoder does not do (it would be dropped, and the
    model would run wrong): refused, each named."""
    lm = cfg.get("transformer_lm", {}) or {}
    out = []
    conditioners = cfg.get("conditioners", {}) or {}
    if "self_wav" in conditioners or any(k.startswith("condition_provider.conditioners.self_wav") for k in state):
        out.append("MusicGen-Melody's chroma conditioning (self_wav)")
    modeling = (cfg.get("codebooks_pattern", {}) or {}).get("modeling", "delay")
    if modeling != "delay":
        out.append(f"the {modeling!r} codebook pattern (stemd decodes the delay pattern)")
    if lm.get("bias_ff") or lm.get("bias_attn") or any(
            k.startswith("transformer.") and (k.endswith((".linear1.bias", ".linear2.bias", "in_proj_bias"))
                                              or k.endswith("out_proj.bias")) for k in state):
        out.append("feed-forward or attention biases")
    if lm.get("layer_scale") is not None or any("layer_scale" in k for k in state):
        out.append("layer scale")
    other = sorted({c for c in conditioners if c not in ("description", "self_wav")})
    if other:
        out.append(f"conditioners other than the text description ({', '.join(other)})")
    return out


def lm_args_from_cfg(cfg: dict, text_hidden: int) -> LMArgs:
    lm = cfg["transformer_lm"]
    stereo = bool(cfg.get("interleave_stereo_codebooks", {}).get("use", False))
    return LMArgs(hidden_size=lm["dim"], num_layers=lm["num_layers"], num_heads=lm["num_heads"],
                  ffn_dim=int(lm["dim"] * lm.get("hidden_scale", 4)), vocab_size=lm.get("card", 2048),
                  num_codebooks=lm.get("n_q", 4), audio_channels=2 if stereo else 1, text_hidden_size=text_hidden)


def load_audiocraft(model: str, folder: Path, device: torch.device, dtype: torch.dtype):
    import yaml
    from transformers import AutoTokenizer, EncodecModel, T5EncoderModel

    from stemd.models.musicgen.loading import Checkpoint, build_lm, frame_rate, resolve

    pkg = torch.load(folder / "state_dict.bin", map_location="cpu", weights_only=True, mmap=True)
    cfg = pkg.get("xp.cfg")
    cfg = yaml.safe_load(cfg) if isinstance(cfg, str) else cfg
    if not isinstance(cfg, dict) or "transformer_lm" not in cfg:
        raise ModelNotFound(f"model {model!r}: {folder}/state_dict.bin has no audiocraft config (xp.cfg)")
    lacking = unsupported(cfg, pkg.get("best_state", {}))
    if lacking:
        raise ModelNotFound(f"model {model!r}: an audiocraft checkpoint with {'; '.join(lacking)}: not supported "
                            "by stemd's MusicGen decoder (nothing is dropped silently)")
    t5_name = cfg.get("conditioners", {}).get("description", {}).get("t5", {}).get("name", "t5-base")
    t5_folder = resolve(T5_HUB_NAMES.get(t5_name, t5_name)) if not Path(t5_name).is_dir() else Path(t5_name)
    text_dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
    text_encoder = T5EncoderModel.from_pretrained(str(t5_folder), dtype=text_dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(t5_folder))

    comp = torch.load(folder / "compression_state_dict.bin", map_location="cpu", weights_only=True, mmap=True)
    if "pretrained" not in comp:
        raise ModelNotFound(f"model {model!r}: {folder}/compression_state_dict.bin holds raw audiocraft EnCodec "
                            "weights; stemd loads a pretrained codec reference (facebook/encodec_32khz) only")
    codec_folder = resolve(comp["pretrained"])
    codec = EncodecModel.from_pretrained(str(codec_folder)).to(device).eval()

    args = lm_args_from_cfg(cfg, text_encoder.config.d_model)
    state = lm_state_from_audiocraft(pkg["best_state"], args.hidden_size)
    lm = build_lm(args, state, dtype, device)
    audio_cfg = codec.config.to_dict()
    return Checkpoint(name=model, lm=lm, text_encoder=text_encoder, tokenizer=tokenizer, codec=codec,
                      sample_rate=audio_cfg["sampling_rate"], frame_rate=frame_rate(audio_cfg),
                      audio_channels=args.audio_channels, test_model=bool(cfg.get("stemd_test_model")),
                      generation={})
