"""Look inside a trained GPT: the attention weights of every head, for one piece of text.

The training fast path (``FusedMultiHeadAttention``) never materialises the (T, T) weight
matrix: PyTorch's fused kernel computes softmax(q k^T / sqrt(hs)) v in one go. Rather than
add a switch to that hot path, this module runs the model's blocks one at a time and, at
each block, recomputes every head's weights from the head's own key and query projections
("Attention Is All You Need", eq. 1, with the causal mask). Classic and fused attention
hold the same per-head parameters (see models/attention.py), so this works for both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from quillgpt.errors import ConfigError
from quillgpt.models.gpt import GPT


def head_weights(head: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One head's causal attention weights for its input ``x`` (B, T, C): (B, T, T), rows sum to 1.

    The same arithmetic as ``Head.forward`` up to the softmax, without dropout.
    """
    T = x.size(1)
    q, k = head.query(x), head.key(x)  # (B, T, hs) each
    scores = q @ k.transpose(-2, -1) * k.size(-1) ** -0.5  # (B, T, T)
    future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
    return F.softmax(scores.masked_fill(future, float("-inf")), dim=-1)


@dataclass
class Inspection:
    """What a GPT does with one sequence of T tokens."""

    attention: torch.Tensor  # (n_layer, n_head, T, T): [l, h, i, j] is how much i attends to j; rows sum to 1
    probs: torch.Tensor  # (T, vocab): the next-token distribution after each position


@torch.no_grad()
def inspect(model: torch.nn.Module, idx: torch.Tensor) -> Inspection:
    """Attention weights of every layer and head, and the next-token probabilities, for the tokens
    ``idx`` (T,) or (1, T), in one pass through the blocks (in eval mode: no dropout)."""
    if not isinstance(model, GPT):
        raise ConfigError(f"{type(model).__name__} has no attention layers: give a GPT model (arch gpt)")
    if idx.dim() == 1:
        idx = idx[None]
    if idx.dim() != 2 or idx.size(0) != 1:
        raise ConfigError(f"expected the token ids of one text, shape (T,) or (1, T), got {tuple(idx.shape)}")
    T = idx.size(1)
    if not 1 <= T <= model.block_size:
        raise ConfigError(f"the text is {T} tokens: give 1 to {model.block_size} (the model's block_size)")
    was_training = model.training
    model.eval()  # the weights the model uses at inference
    try:
        x = model.token_embedding_table(idx) + model.position_embedding_table(torch.arange(T, device=idx.device))
        layers = []
        for block in model.blocks:
            normed = block.ln1(x)  # each head sees the block's first LayerNorm output
            layers.append(torch.stack([head_weights(head, normed)[0] for head in block.sa.heads]))
            x = block(x)
        logits = model.lm_head(model.ln_f(x))[0]
    finally:
        model.train(was_training)
    return Inspection(torch.stack(layers).float(), F.softmax(logits.float(), dim=-1))


def attention_weights(model: torch.nn.Module, idx: torch.Tensor) -> torch.Tensor:
    """(n_layer, n_head, T, T) attention weights of every layer and head (``inspect``): entry
    [l, h, i, j] is how much position i attends to position j (zero for j > i; rows sum to 1)."""
    return inspect(model, idx).attention


def top_alternatives(probs: torch.Tensor, k: int) -> tuple[list[list[int]], list[list[float]]]:
    """The k most likely next tokens after each position, with their probabilities."""
    values, indices = torch.topk(probs, min(k, probs.size(-1)), dim=-1)
    return indices.tolist(), values.tolist()
