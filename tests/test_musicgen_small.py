"""Reference equivalence on the full musicgen-small architecture (random weights, ~2 GB on disk).

Slow: writes the checkpoint (or reuses bench/.cache/musicgen-small-random) and runs both models.
    .venv/bin/pytest -m slow tests/test_musicgen_small.py
"""

import logging
from pathlib import Path

import pytest
import torch

from stemd.models.musicgen.engine import MusicGenEngine
from stemd.models.musicgen.generate import Sampling, generate_tokens
from stemd.models.musicgen.testmodel import write_test_model

logging.getLogger("transformers").setLevel(logging.ERROR)
BENCH_CACHE = Path(__file__).resolve().parent.parent / "bench" / ".cache" / "musicgen-small-random"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    if (BENCH_CACHE / "model.safetensors").exists():
        return BENCH_CACHE
    return write_test_model(tmp_path_factory.mktemp("musicgen-small"), "musicgen-small")


def test_musicgen_small_logits_and_greedy_tokens_match_transformers(small):
    from transformers import MusicgenForConditionalGeneration

    from test_musicgen_engine import reference_greedy_codes

    engine = MusicGenEngine.load(str(small), device="cpu", dtype="float32")
    ref = MusicgenForConditionalGeneration.from_pretrained(str(small)).eval()
    prompt = "lofi hip hop beat with dusty drums, 90 bpm"
    tok = engine.ck.tokenizer([prompt], return_tensors="pt")
    lm = engine.ck.lm
    assert (lm.args.hidden_size, lm.args.num_layers, lm.args.num_codebooks) == (1024, 24, 4)
    torch.manual_seed(0)
    codes = torch.randint(0, 2049, (1, 4, 12))
    with torch.no_grad():
        expected = ref(**tok, decoder_input_ids=codes.reshape(4, 12)).logits
        hidden, mask = engine.ck.encode_text(prompt, 1, guided=True)
        lm.setup_caches(2, 64, 64)
        lm.set_conditioning(hidden, mask)
        ours = lm(torch.cat([codes, codes]), torch.arange(12))
    assert (ours[0] - expected).abs().max() < 1e-4

    frames = 20
    ref_codes = reference_greedy_codes(ref, tok, frames, guidance=3.0)
    lm.setup_caches(2, 64, 64)
    lm.set_conditioning(hidden, mask)
    assert torch.equal(generate_tokens(lm, frames, 1, Sampling(guidance=3.0, temperature=0), max_seq=64), ref_codes)
