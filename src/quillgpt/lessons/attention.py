"""Lesson: the mathematical trick in self-attention, four ways.

Every position t of a (B, T, C) sequence gets the mean of the positions 0..t ("bag of
words", xbow). The lecture computes it four times, each a step closer to self-attention:

1. explicit loops over batch and time;
2. a matmul with a lower-triangular matrix whose rows are normalised to sum to 1;
3. a softmax over a matrix of zeros whose future entries are -inf (the same matrix);
4. a self-attention head: the zeros become data-dependent affinities q k^T, so each
   position decides how much of each past position it takes (Vaswani et al., 2017, eq. 1).

The first three must agree to float precision; the fourth must stay causal with rows
summing to 1. The last part shows why the scores are divided by sqrt(head_size).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from quillgpt.models.attention import Head


@dataclass
class AttentionLesson:
    """The numbers of the lesson (all checked by the lesson itself and by the tests)."""

    shape: tuple[int, int, int]
    head_size: int
    max_diff_loop_matmul: float  # version 1 vs 2
    max_diff_loop_softmax: float  # version 1 vs 3
    first_three_agree: bool
    attention_causal: bool  # version 4: no weight on the future
    attention_rows_sum_to_one: bool
    matches_library_head: bool  # version 4 equals quillgpt.models.attention.Head with the same weights
    big_head_size: int
    var_unscaled: float  # variance of q @ k^T at big_head_size, q and k unit Gaussian
    var_scaled: float  # ... times big_head_size ** -0.5
    max_weight_unscaled: float  # mean over rows of the largest softmax weight
    max_weight_scaled: float

    @property
    def checks(self) -> dict[str, bool]:
        """What the lesson claims and verifies; any False is a bug (``quill lesson`` exits 1)."""
        return {"versions 1, 2, 3 agree": self.first_three_agree,
                "self-attention is causal": self.attention_causal,
                "attention rows sum to 1": self.attention_rows_sum_to_one,
                "self-attention equals quillgpt's Head": self.matches_library_head}

    @property
    def ok(self) -> bool:
        return all(self.checks.values())


def xbow_loops(x: torch.Tensor) -> torch.Tensor:
    """Version 1: xbow[b, t] = mean of x[b, 0..t], with two Python loops."""
    B, T, C = x.shape
    xbow = torch.zeros(B, T, C)
    for b in range(B):
        for t in range(T):
            xbow[b, t] = x[b, : t + 1].mean(0)
    return xbow


def averaging_matrix(size: int) -> torch.Tensor:
    """Version 2's weights: lower-triangular ones, each row divided by its sum."""
    wei = torch.tril(torch.ones(size, size))
    return wei / wei.sum(1, keepdim=True)


def softmax_matrix(size: int) -> torch.Tensor:
    """Version 3's weights: softmax of zeros, with the future set to -inf (exp(-inf) = 0)."""
    tril = torch.tril(torch.ones(size, size))
    wei = torch.zeros(size, size).masked_fill(tril == 0, float("-inf"))
    return F.softmax(wei, dim=-1)


def self_attention(x: torch.Tensor, key: nn.Linear, query: nn.Linear,
                   value: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """Version 4: one head of causal self-attention; returns (weights (B, T, T), output (B, T, hs))."""
    T = x.size(1)
    k, q = key(x), query(x)  # (B, T, hs): what each position offers, what it looks for
    wei = q @ k.transpose(-2, -1) * k.size(-1) ** -0.5  # (B, T, T) affinities
    wei = wei.masked_fill(torch.tril(torch.ones(T, T)) == 0, float("-inf"))
    wei = F.softmax(wei, dim=-1)
    return wei, wei @ value(x)


def scaling_demo(head_size: int, seq_len: int, generator: torch.Generator) -> tuple[float, float, float, float]:
    """Variance of q k^T and softmax sharpness, unscaled and scaled by head_size ** -0.5.

    With unit-variance q and k, q . k is a sum of head_size unit-variance products, so its
    variance is head_size: at large head sizes the softmax then saturates towards one-hot,
    and each position listens to a single other one (and gradients vanish).
    """
    q = torch.randn(64, seq_len, head_size, generator=generator)
    k = torch.randn(64, seq_len, head_size, generator=generator)
    raw = q @ k.transpose(-2, -1)
    scaled = raw * head_size ** -0.5
    sharp = [F.softmax(s, dim=-1).max(-1).values.mean().item() for s in (raw, scaled)]
    return raw.var().item(), scaled.var().item(), sharp[0], sharp[1]


def _show(name: str, wei: torch.Tensor, n: int = 5) -> None:
    print(f"{name} (first {n} rows and columns):")
    for row in wei[:n, :n].tolist():
        print("   " + " ".join(f"{w:6.3f}" for w in row))


def run(seed: int = 1337, shape: tuple[int, int, int] = (4, 8, 32), head_size: int = 16,
        big_head_size: int = 256, verbose: bool = True) -> AttentionLesson:
    """Run the lesson on a seeded random (B, T, C) batch of ``shape``; print it when ``verbose``."""
    B, T, C = shape
    say = print if verbose else _silent
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, C, generator=generator)
    say(f"x: a random (B, T, C) = ({B}, {T}, {C}) batch; goal: xbow[b, t] = mean(x[b, :t+1])\n")

    xbow1 = xbow_loops(x)
    say("1. loops over b and t: xbow[b, t] = x[b, :t+1].mean(0)")
    wei2 = averaging_matrix(T)
    xbow2 = wei2 @ x  # (T, T) @ (B, T, C) -> (B, T, C), the matrix broadcast over the batch
    if verbose:
        _show("2. wei = tril(ones) / row sums; xbow = wei @ x", wei2)
    wei3 = softmax_matrix(T)
    xbow3 = wei3 @ x
    if verbose:
        _show("3. wei = softmax(zeros with -inf above the diagonal); xbow = wei @ x", wei3)
    diff12 = (xbow1 - xbow2).abs().max().item()
    diff13 = (xbow1 - xbow3).abs().max().item()
    agree = torch.allclose(xbow1, xbow2, atol=1e-6) and torch.allclose(xbow1, xbow3, atol=1e-6)
    say(f"   versions 1, 2, 3 agree: {agree} (largest differences {diff12:.1e}, {diff13:.1e})\n")

    with torch.random.fork_rng():  # seeded initial weights, without touching the caller's RNG
        torch.manual_seed(seed)
        head = Head(C, head_size, T, dropout=0.0)
    wei4, out4 = self_attention(x, head.key, head.query, head.value)
    if verbose:
        _show(f"4. self-attention, head_size {head_size}: wei = softmax(mask(q @ k^T / sqrt({head_size}))) "
              "for batch row 0", wei4[0])
    causal = bool((wei4.triu(1) == 0).all())
    rows = bool(torch.allclose(wei4.sum(-1), torch.ones(B, T), atol=1e-6))
    library = bool(torch.allclose(out4, head(x), atol=1e-6))
    say(f"   causal (zero above the diagonal): {causal}; rows sum to 1: {rows}; "
        f"equals quillgpt's Head: {library}\n")

    var_raw, var_scaled, max_raw, max_scaled = scaling_demo(big_head_size, T, generator)
    say(f"why / sqrt(head_size)? q, k unit Gaussian, head_size {big_head_size}:")
    say(f"   var(q @ k^T) = {var_raw:7.2f}   largest softmax weight per row, mean: {max_raw:.3f}  (near one-hot)")
    say(f"   var(... / sqrt({big_head_size})) = {var_scaled:.2f}   largest softmax weight per row, mean: "
        f"{max_scaled:.3f}  (diffuse: a uniform row gives 1/{T} = {1 / T:.3f}, a one-hot row 1)")
    return AttentionLesson((B, T, C), head_size, diff12, diff13, agree, causal, rows, library,
                           big_head_size, var_raw, var_scaled, max_raw, max_scaled)


def _silent(*args: object, **kwargs: object) -> None:
    """``print`` when the lesson runs quietly."""
