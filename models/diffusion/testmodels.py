"""Random-weight diffusion pipelines in diffusers' on-disk layout, for tests, benchmarks and offline use.

``write_test_pipeline(dir, arch)`` builds diffusers' own Stable Audio 3 or ACE-Step 1.5 components from
configs, initialises them randomly (seeded), saves the pipeline with ``save_pretrained`` (a folder with
``model_index.json`` and one sub-folder per component, exactly as a released checkpoint) and adds a
tokenizer built here, offline. ``model_index.json`` carries ``"stemd_test_model": true``: such a model
makes noise, not music, and stemd says so wherever it reports the model.

``*-tiny`` architectures build in about a second for tests; ``sa3-small``, ``sa3-medium`` and
``acestep-turbo`` have the released sizes (their DiTs: 437M, 1453M and 1575M parameters; published: 433M,
1.4B, 1.6B) for
benchmarks of speed and memory, never of sound.
"""

from __future__ import annotations

import json
from pathlib import Path

from stemd.models.musicgen.testmodel import SENTENCES, TEST_MODEL_KEY

#: SA3's T5Gemma encoder, as in google/t5gemma-b-b-ul2 (hidden 768, 12 layers)
T5GEMMA_B = dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                 num_key_value_heads=12, head_dim=64, max_position_embeddings=512, sliding_window=4096)

SA3_ARCHS = {
    # conditioning width 16: text hidden size = DiT cond/global dims = duration embedder output
    "sa3-tiny": dict(
        transformer=dict(io_channels=8, patch_size=1, embed_dim=32, depth=2, num_heads=4, cond_token_dim=16,
                         global_cond_dim=16, local_add_cond_dim=9, timestep_features_dim=16, ff_mult=2,
                         num_memory_tokens=3, use_differential_attention=False),
        # the real latent rate (256 x 16 = 4096 samples, about 93 ms at 44.1 kHz) with tiny widths
        vae=dict(audio_channels=2, patch_size=256, encoder_channels=8, encoder_c_mults=(2,), encoder_strides=(16,),
                 encoder_transformer_depths=(1,), latent_dim=8, use_differential_attention=False, dim_heads=4,
                 ff_mult=2, sampling_rate=44100),
        text=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=8, max_position_embeddings=512, sliding_window=512),
        duration=dict(output_dim=16, fourier_dim=16, max_val=120.0),
    ),
    # the released small-music size (DiT 437M, published 433M; SAME-S autoencoder; 120 s at most)
    "sa3-small": dict(transformer=dict(embed_dim=1024, depth=16, num_heads=16), vae=dict(),
                      text=T5GEMMA_B, duration=dict(max_val=120.0)),
    # the released medium size (the classes' defaults: DiT about 1453M; SAME-L autoencoder; 380 s)
    "sa3-medium": dict(transformer=dict(), vae=dict(encoder_channels=256, encoder_transformer_depths=(12,)),
                       text=T5GEMMA_B, duration=dict()),
}

#: ACE-Step's text encoder, as in Qwen/Qwen3-Embedding-0.6B (hidden 1024, 28 layers)
QWEN3_EMBEDDING_06B = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                           num_key_value_heads=8, head_dim=128, vocab_size=151669, max_position_embeddings=32768)

ACESTEP_ARCHS = {
    "acestep-tiny": dict(
        transformer=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=8, in_channels=24, audio_acoustic_hidden_dim=8,
                         patch_size=2, rope_theta=10000.0, sliding_window=16, is_turbo=True, model_version="turbo"),
        condition=dict(hidden_size=32, intermediate_size=64, text_hidden_dim=32, timbre_hidden_dim=8,
                       num_lyric_encoder_hidden_layers=2, num_timbre_encoder_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=8, rope_theta=10000.0, sliding_window=16),
        # the real latent rate (1920 samples, 40 ms at 48 kHz) with tiny widths
        vae=dict(encoder_hidden_size=16, downsampling_ratios=[2, 4, 4, 6, 10], channel_multiples=[1, 1, 1, 1, 1],
                 decoder_channels=4, decoder_input_channels=8, audio_channels=2, sampling_rate=48000),
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=8, max_position_embeddings=4096),
        # the 5 Hz audio tokenizer and its detokenizer: what the cover task hears of its source audio
        audio_tokens=dict(hidden_size=32, intermediate_size=64, audio_acoustic_hidden_dim=8, pool_window_size=5,
                          num_attention_pooler_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                          head_dim=8, sliding_window=16),
    ),
    # the released turbo size (the classes' defaults: DiT about 1575M; 48 kHz Oobleck VAE, 1920x)
    "acestep-turbo": dict(
        transformer=dict(is_turbo=True, model_version="turbo"), condition=dict(),
        vae=dict(encoder_hidden_size=128, downsampling_ratios=[2, 4, 4, 6, 10], channel_multiples=[1, 2, 4, 8, 16],
                 decoder_channels=128, decoder_input_channels=64, audio_channels=2, sampling_rate=48000),
        text=QWEN3_EMBEDDING_06B,
    ),
}

ARCHS = tuple(SA3_ARCHS) + tuple(ACESTEP_ARCHS)


def build_tokenizer(special: list[str], pad: str, eos: str):
    """A word-level tokenizer over the test sentences (and ACE-Step's prompt template words), built in memory:
    no hub, no training data beyond a few sentences."""
    import re

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for s in SENTENCES for w in re.findall(r"\w+|[^\w\s]", s.lower())}
                   | set("# instruction caption metas lyric languages en - : bpm timesignature keyscale duration "
                         "seconds n / a fill the audio semantic mask based on given conditions".split()))
    vocab = {tok: i for i, tok in enumerate(special + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(r"<\|endoftext\|>", "isolated"),
                                                 pre_tokenizers.Whitespace()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=pad, eos_token=eos, unk_token="<unk>",
                                   model_max_length=512)


def _sa3_pipeline(spec: dict, vocab_size: int):
    from diffusers import AutoencoderSAME, FlowMatchEulerDiscreteScheduler, StableAudio3DiTModel, StableAudio3Pipeline
    from diffusers.pipelines.stable_audio_3.modeling_stable_audio_3 import StableAudio3DurationEmbedder
    from transformers import T5GemmaConfig, T5GemmaEncoderModel
    from transformers.models.t5gemma.configuration_t5gemma import T5GemmaModuleConfig

    text = dict(spec["text"])
    text.setdefault("layer_types", ["full_attention"] * text["num_hidden_layers"])
    module = T5GemmaModuleConfig(vocab_size=vocab_size, **text).to_dict()
    encoder = T5GemmaEncoderModel(T5GemmaConfig(encoder=module, decoder=module, is_encoder_decoder=False))
    # the distilled checkpoints' sampler: 8 ping-pong steps
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0, stochastic_sampling=True)
    return dict(transformer=StableAudio3DiTModel(**spec["transformer"]), vae=AutoencoderSAME(**spec["vae"]),
                text_encoder=encoder, duration_embedder=StableAudio3DurationEmbedder(**spec["duration"]),
                scheduler=scheduler), StableAudio3Pipeline


def _acestep_pipeline(spec: dict, vocab_size: int):
    from diffusers import AceStepPipeline, AutoencoderOobleck, FlowMatchEulerDiscreteScheduler
    from diffusers.models.transformers.ace_step_transformer import AceStepTransformer1DModel
    from diffusers.pipelines.ace_step import AceStepConditionEncoder
    from transformers import Qwen3Config, Qwen3Model

    text = dict(spec["text"])
    text["vocab_size"] = max(text.get("vocab_size", 0), vocab_size)
    encoder = Qwen3Model(Qwen3Config(**text))
    condition = dict(spec["condition"], text_hidden_dim=text["hidden_size"])
    return dict(transformer=AceStepTransformer1DModel(**spec["transformer"]),
                condition_encoder=AceStepConditionEncoder(**condition), vae=AutoencoderOobleck(**spec["vae"]),
                text_encoder=encoder, scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0)
                ), AceStepPipeline


def build_test_pipeline(arch: str, seed: int = 0):
    """The pipeline object of ``arch`` with random weights (seeded), not yet on disk."""
    import torch

    if arch in SA3_ARCHS:
        tokenizer = build_tokenizer(["<pad>", "<eos>", "<unk>"], "<pad>", "<eos>")
        spec, make = SA3_ARCHS[arch], _sa3_pipeline
    elif arch in ACESTEP_ARCHS:
        tokenizer = build_tokenizer(["<|endoftext|>", "<unk>"], "<|endoftext|>", "<|endoftext|>")
        spec, make = ACESTEP_ARCHS[arch], _acestep_pipeline
    else:
        raise ValueError(f"unknown test architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    torch.manual_seed(seed)
    components, cls = make(spec, len(tokenizer))
    pipe = cls(tokenizer=tokenizer, **components)
    with torch.no_grad():
        # diffusers zero-initialises output projections (the DiT's and the autoencoder's), so an untrained
        # model would ignore its noise and every take would be the same: give them small random weights
        for model in (pipe.transformer, pipe.vae):
            for _name, param in model.named_parameters():
                if param.ndim >= 2 and not param.any():
                    param.normal_(0.0, 0.05)
        if arch in ACESTEP_ARCHS:   # a released checkpoint ships a learned silence latent, not zeros
            pipe.condition_encoder.silence_latent.normal_(0.0, 0.5)
    if "audio_tokens" in spec:      # made last: the other components' weights stay what they were without them
        from diffusers.pipelines.ace_step.modeling_ace_step import AceStepAudioTokenDetokenizer, AceStepAudioTokenizer

        tokens = spec["audio_tokens"]
        pipe.register_modules(audio_tokenizer=AceStepAudioTokenizer(fsq_dim=tokens["hidden_size"], **tokens),
                              audio_token_detokenizer=AceStepAudioTokenDetokenizer(**tokens))
    return pipe


def write_test_pipeline(directory, arch: str, seed: int = 0, without: tuple = ()) -> Path:
    """Write a random-init pipeline of ``arch`` in diffusers' layout to ``directory``; returns the folder.
    ``without``: optional components left out, as a checkpoint converted without them (``model_index.json``
    names them ``[null, null]``), e.g. ACE-Step's ``audio_tokenizer`` and ``audio_token_detokenizer``."""
    pipe = build_test_pipeline(arch, seed)
    if without:
        pipe.register_modules(**{name: None for name in without})
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    index_path = out / "model_index.json"
    index = json.loads(index_path.read_text())
    index.update({TEST_MODEL_KEY: True, "stemd_test_arch": arch,
                  "stemd_note": "random weights written by `stemd make-test-model`: this model makes noise, "
                                "not music"})
    index_path.write_text(json.dumps(index, indent=2))
    (out / "README.md").write_text(
        f"# stemd test model ({arch})\n\nRandom weights (seed {seed}) in diffusers' pipeline layout, written by "
        "`stemd make-test-model`.\nIt exercises the real architecture; it makes noise, not music.\n")
    return out
