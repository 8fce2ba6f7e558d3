"""The whole decoding step as one function over fixed-shape device state, with no host control flow.

``generate.decode_one_token`` takes the position as a host int (the slice of ``tokens`` it reads and
the column it writes are chosen in Python). Here the position is a ``(1,)`` long tensor that the step
itself reads and advances, the tokens are read and written with ``index_select``/``index_copy_``, and
the sampling noise is an input drawn from the request's generator just before the step (the same
draw ``generate.sample`` makes, so the tokens are the same for the same seed). Nothing in ``step``
depends on tensor values on the host, so it traces into one graph (``torch.compile(fullgraph=True)``)
and can be captured as one CUDA graph and replayed.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from stemd.models.musicgen.generate import sample_with_noise
from stemd.models.musicgen.model import MusicGenLM


def step(lm: MusicGenLM, tokens: Tensor, pattern: Tensor, pos: Tensor, noise: Optional[Tensor],
         guidance: Tensor, temperature: Tensor, top_p: Optional[Tensor], guided: bool, greedy: bool, top_k: int,
         span: int) -> None:
    """Advance one position in place: read ``tokens[:, :, pos]`` ``(V, K, max_seq)``, write the next
    tokens (sampled, or forced by ``pattern``) at ``pos + 1`` and add 1 to ``pos``.

    ``noise`` ``(V, K, vocab)`` float32 Exp(1) draws (None when greedy); ``guidance``, ``temperature``
    and ``top_p`` are 0-dim tensors (a new value needs no new graph); ``guided``, ``greedy``, ``top_k``
    and ``span`` (the cache positions attention reads, ``generate.attention_span``) choose the graph."""
    cur = tokens.index_select(2, pos)                                  # (V, K, 1)
    if guided:
        cur = torch.cat([cur, cur], dim=0)
    logits = lm(cur, pos, span)[:, :, -1].float()                      # (B, K, vocab)
    if guided:
        cond, uncond = logits.chunk(2, dim=0)
        logits = uncond + (cond - uncond) * guidance
    if greedy:
        nxt = logits.argmax(dim=-1)
    else:
        nxt = sample_with_noise(logits, temperature, top_k, top_p, noise)
    nxt_pos = pos + 1
    forced = pattern.index_select(2, nxt_pos)[..., 0]                 # (V, K)
    nxt = torch.where(forced >= 0, forced, nxt)
    tokens.index_copy_(2, nxt_pos, nxt[..., None])
    pos.copy_(nxt_pos)
