"""Random-weight MusicGen checkpoints in the Hugging Face on-disk format, for tests and offline use.

``write_test_model(dir, arch)`` builds transformers' own ``MusicgenForConditionalGeneration`` from a
config, initialises it randomly (seeded), saves it with ``save_pretrained`` and adds a T5-compatible
tokenizer trained here on a few sentences. The config carries ``"stemd_test_model": true``: such a
model makes noise, not music, and stemd says so wherever it reports the model.
"""

from __future__ import annotations

import json
from pathlib import Path

TEST_MODEL_KEY = "stemd_test_model"

#: the EnCodec 32 kHz codec MusicGen ships with (50 frames/s, 4 codebooks), sizes overridable
ENCODEC_32K = dict(audio_channels=1, chunk_length_s=None, codebook_size=2048, compress=2, dilation_growth_rate=2,
                   hidden_size=128, kernel_size=7, last_kernel_size=7, norm_type="weight_norm", normalize=False,
                   num_filters=64, num_lstm_layers=2, num_residual_layers=1, overlap=None, pad_mode="reflect",
                   residual_kernel_size=3, sampling_rate=32000, target_bandwidths=[2.2], trim_right_ratio=1.0,
                   upsampling_ratios=[8, 5, 4, 4], use_causal_conv=False, use_conv_shortcut=False)

T5_BASE = dict(d_model=768, d_ff=3072, d_kv=64, num_heads=12, num_layers=12, vocab_size=32128,
               relative_attention_num_buckets=32, relative_attention_max_distance=128,
               feed_forward_proj="relu", layer_norm_epsilon=1e-6, dropout_rate=0.1)

DECODER_SMALL = dict(hidden_size=1024, ffn_dim=4096, num_hidden_layers=24, num_attention_heads=16, vocab_size=2048,
                     num_codebooks=4, max_position_embeddings=2048, audio_channels=1, dropout=0.1,
                     activation_function="gelu")

ARCHS = {
    "musicgen-small": dict(text=T5_BASE, audio=ENCODEC_32K, decoder=DECODER_SMALL),
    # audiocraft's model scales (dim, heads, layers; ffn 4 x dim), T5-base text encoder as for small
    "musicgen-medium": dict(text=T5_BASE, audio=ENCODEC_32K,
                            decoder=dict(DECODER_SMALL, hidden_size=1536, ffn_dim=6144, num_hidden_layers=48,
                                         num_attention_heads=24)),
    "musicgen-large": dict(text=T5_BASE, audio=ENCODEC_32K,
                           decoder=dict(DECODER_SMALL, hidden_size=2048, ffn_dim=8192, num_hidden_layers=48,
                                        num_attention_heads=32)),
    "musicgen-stereo-small": dict(text=T5_BASE, audio=ENCODEC_32K,
                                  decoder={**DECODER_SMALL, "num_codebooks": 8, "audio_channels": 2}),
    # small enough that a whole test file runs in seconds on two CPU cores
    "tiny": dict(text=dict(T5_BASE, d_model=32, d_ff=64, d_kv=16, num_heads=2, num_layers=2),
                 audio=dict(ENCODEC_32K, codebook_size=64, hidden_size=16, num_filters=4),
                 decoder=dict(DECODER_SMALL, hidden_size=48, ffn_dim=96, num_hidden_layers=2,
                              num_attention_heads=4, vocab_size=64)),
    "tiny-stereo": dict(text=dict(T5_BASE, d_model=32, d_ff=64, d_kv=16, num_heads=2, num_layers=2),
                        audio=dict(ENCODEC_32K, codebook_size=64, hidden_size=16, num_filters=4),
                        decoder=dict(DECODER_SMALL, hidden_size=48, ffn_dim=96, num_hidden_layers=2,
                                     num_attention_heads=4, vocab_size=64, num_codebooks=8, audio_channels=2)),
}
# melody checkpoints (MusicgenMelodyForConditionalGeneration): the chroma of a melody, prepended with the text
ARCHS["musicgen-melody"] = dict(ARCHS["musicgen-medium"], melody=True)
ARCHS["musicgen-melody-tiny"] = dict(ARCHS["tiny"], melody=True)
ARCHS["musicgen-melody-tiny-stereo"] = dict(ARCHS["tiny-stereo"], melody=True)

SENTENCES = [
    "lofi hip hop beat with dusty drums and warm rhodes, 90 bpm, 4/4, key of A minor",
    "driving techno bassline, 128 bpm, four on the floor kick, dark and hypnotic",
    "acoustic guitar strumming, folk, 100 bpm, G major, bright and happy",
    "ambient pad with slow evolving textures, reverb, no drums, C sharp minor",
    "funky slap bass groove with tight hi-hats, 110 bpm, E flat major",
    "orchestral strings swelling, cinematic, 70 bpm, 3/4, D minor",
    "drum and bass breakbeat, 174 bpm, rolling sub bass, 7/8 and 5/4 variations",
    "jazz piano trio, swing, brushes on the snare, 140 bpm, B flat",
    "808 trap hats and booming kick, 150 bpm, F sharp minor, 6/8",
    "synthwave arpeggio, gated reverb drums, 118 bpm, key of E minor, 12/8",
    "0 1 2 3 4 5 6 7 8 9 bpm bars key major minor sharp flat tempo meter",
]


def train_tokenizer(vocab_size: int = 300):
    """A small Unigram tokenizer with T5's special tokens (<pad>=0, </s>=1, <unk>=2), as T5TokenizerFast."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = __import__("tokenizers").decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", shrinking_factor=0.9)
    tok.train_from_iterator(SENTENCES * 4, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)


def model_classes(melody: bool) -> tuple:
    """transformers' (config, decoder config, model) classes of a MusicGen checkpoint, or of a melody one."""
    import transformers as t

    if melody:
        return t.MusicgenMelodyConfig, t.MusicgenMelodyDecoderConfig, t.MusicgenMelodyForConditionalGeneration
    return t.MusicgenConfig, t.MusicgenDecoderConfig, t.MusicgenForConditionalGeneration


def write_test_model(directory, arch: str = "tiny", seed: int = 0) -> Path:
    """Write a random-init MusicGen checkpoint (HF format) to ``directory``; returns the folder."""
    import torch
    from transformers import EncodecConfig, T5Config

    if arch not in ARCHS:
        raise ValueError(f"unknown test architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    spec = ARCHS[arch]
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer()
    text = T5Config(**spec["text"])
    audio = EncodecConfig(**spec["audio"])
    config_class, decoder_class, model_class = model_classes(spec.get("melody", False))
    decoder = decoder_class(**spec["decoder"], pad_token_id=spec["decoder"]["vocab_size"],
                            bos_token_id=spec["decoder"]["vocab_size"])
    config = config_class(text_encoder=text.to_dict(), audio_encoder=audio.to_dict(), decoder=decoder.to_dict())
    torch.manual_seed(seed)
    model = model_class(config).eval()
    # transformers initialises EnCodec's codebooks to zeros (they are learned by k-means), which would
    # make every code sound the same: give them random vectors so different tokens make different audio
    with torch.no_grad():
        for layer in model.audio_encoder.quantizer.layers:
            layer.codebook.embed.normal_()
            layer.codebook.embed_avg.copy_(layer.codebook.embed)
        # a melody model's chroma projection starts at 0.02-scale weights, so the chroma would be lost beside
        # the prefix's positional embeddings: unit-scale weights let a guide steer the test model audibly
        if spec.get("melody"):
            model.audio_enc_to_dec_proj.weight.normal_()
    gen = model.generation_config
    gen.pad_token_id = gen.decoder_start_token_id = decoder.pad_token_id
    gen.do_sample, gen.guidance_scale, gen.top_k, gen.max_length = True, 3.0, 250, 1500
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg[TEST_MODEL_KEY] = True
    cfg["stemd_test_arch"] = arch
    cfg["stemd_note"] = "random weights written by `stemd make-test-model`: this model makes noise, not music"
    cfg_path.write_text(json.dumps(cfg, indent=2))
    (out / "README.md").write_text(
        f"# stemd test model ({arch})\n\nRandom weights (seed {seed}) in the Hugging Face "
        f"{'MusicGen melody' if spec.get('melody') else 'MusicGen'} format, written "
        "by `stemd make-test-model`.\nIt exercises the real architecture; it makes noise, not music.\n")
    return out
