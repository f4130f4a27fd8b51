"""What the model looks at: per-head attention weights and the next-token alternatives at every position.

The fused attention never materialises its weights (SDPA computes them on the fly), so
``inspect`` runs the blocks by hand and, in each block, recomputes every head's softmax from
the lecture's per-head ``query``/``key`` projections of ``ln1(x)``, exactly as ``Head.forward``
does: ``softmax(mask(q k^T / sqrt(head_size)))`` (Vaswani et al., eq. 1). Both attention
classes keep those per-head modules, so this works for either.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Inspection:
    attention: torch.Tensor  # (n_layer, n_head, T, T): row t is where position t looks; rows sum to 1
    probs: torch.Tensor  # (T, vocab): the next-token distribution after each position


def head_weights(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(n_head, T, T) causal attention weights of one block for its input ``x`` (1, T, C)."""
    h = block.ln1(x)
    T = x.size(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    rows = []
    for head in block.sa.heads:
        q, k = head.query(h)[0], head.key(h)[0]  # (T, hs)
        scores = (q @ k.T) * k.size(-1) ** -0.5
        rows.append(F.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1))
    return torch.stack(rows)


@torch.no_grad()
def inspect(model: nn.Module, ids: list[int]) -> Inspection:
    """Attention weights of every layer and head, and next-token probabilities, for one sequence."""
    if not ids or len(ids) > model.block_size:
        raise ValueError(f"inspect needs 1..{model.block_size} tokens, got {len(ids)}")
    device = model.lm_head.weight.device
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    T = idx.size(1)
    x = model.token_embedding_table(idx) + model.position_embedding_table(torch.arange(T, device=device))
    layers = []
    for block in model.blocks:
        layers.append(head_weights(block, x))
        x = block(x)
    logits = model.lm_head(model.ln_f(x))[0]
    return Inspection(torch.stack(layers).float(), F.softmax(logits.float(), dim=-1))


def top_alternatives(probs: torch.Tensor, k: int) -> tuple[list[list[int]], list[list[float]]]:
    """The k most likely next tokens after each position, with their probabilities."""
    values, indices = torch.topk(probs, min(k, probs.size(-1)), dim=-1)
    return indices.tolist(), values.tolist()
