"""Lesson: BatchNorm normalises columns, LayerNorm normalises rows.

For a (N, D) batch of N examples with D features, BatchNorm (Ioffe & Szegedy, 2015) gives
each *feature* zero mean and unit variance across the batch, so an example's output depends
on the other examples, and inference needs running estimates of the batch statistics.
LayerNorm (Ba et al., 2016) gives each *example* zero mean and unit variance across its own
features: no batch coupling, no running state, the same in training and at inference,
which is why transformers use it. Both are written by hand here (LayerNorm is the one in
models/gpt.py) and checked against ``torch.nn``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from quillgpt.models.gpt import LayerNorm1d


class BatchNorm1d(nn.Module):
    """The lecture's BatchNorm1d: batch statistics when training, running statistics at inference.

    Same parameter and buffer names as ``nn.BatchNorm1d``. As there, the batch is normalised
    with its biased variance, while the running variance is updated with the unbiased one:
    the running estimate stands for the population (Ioffe & Szegedy, 2015, Algorithm 2).
    """

    def __init__(self, dim: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(dim))  # gamma
        self.bias = nn.Parameter(torch.zeros(dim))  # beta
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            mean = x.mean(0)  # one mean per feature (column), over the batch
            var = x.var(0, unbiased=False)
            with torch.no_grad():
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * x.var(0, unbiased=True))
        else:
            mean, var = self.running_mean, self.running_var
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


@dataclass
class NormsLesson:
    shape: tuple[int, int]
    batchnorm_max_diff: float  # ours vs nn.BatchNorm1d, training mode
    running_stats_max_diff: float  # running_mean and running_var after the steps (relative)
    batchnorm_eval_max_diff: float  # ours vs nn.BatchNorm1d, eval mode
    layernorm_max_diff: float  # models/gpt.py's LayerNorm1d vs nn.LayerNorm
    batchnorm_column_mean: float  # largest |mean| of a column of the BatchNorm output
    batchnorm_column_std: float  # mean std of its columns (about 1)
    batchnorm_row_std: float  # mean std of its rows (not 1)
    layernorm_row_mean: float  # largest |mean| of a row of the LayerNorm output
    layernorm_row_std: float  # mean std of its rows (about 1)
    layernorm_column_std: float  # mean std of its columns (not 1)

    @property
    def all_match(self) -> bool:
        return max(self.batchnorm_max_diff, self.running_stats_max_diff, self.batchnorm_eval_max_diff,
                   self.layernorm_max_diff) < 1e-5

    @property
    def checks(self) -> dict[str, bool]:
        """What the lesson verifies; any False is a bug (``quill lesson`` exits 1)."""
        return {"BatchNorm1d and LayerNorm1d match torch.nn": self.all_match}

    @property
    def ok(self) -> bool:
        return all(self.checks.values())


def _relative_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b| relative to |b| (absolute below 1): the running variances reach ~100 here."""
    return ((a - b).abs() / b.abs().clamp(min=1.0)).max().item()


def _stats(y: torch.Tensor, dim: int) -> tuple[float, float]:
    """Largest |mean| and the mean (biased) std along ``dim``."""
    return y.mean(dim).abs().max().item(), y.std(dim, unbiased=False).mean().item()


def run(seed: int = 1337, shape: tuple[int, int] = (32, 100), steps: int = 3, verbose: bool = True) -> NormsLesson:
    """Run both norms on seeded (N, D) batches of ``shape`` (features with different means and scales)."""
    N, D = shape
    say = print if verbose else _silent
    generator = torch.Generator().manual_seed(seed)
    # Each feature has its own offset and scale, and each example its own too, so that
    # normalising columns and normalising rows visibly differ.
    col_scale = torch.rand(D, generator=generator) * 4 + 0.5
    row_scale = torch.rand(N, 1, generator=generator) * 4 + 0.5

    def batch() -> torch.Tensor:
        return (torch.randn(N, D, generator=generator) + 2) * col_scale * row_scale

    ours, theirs = BatchNorm1d(D), nn.BatchNorm1d(D)
    diff = 0.0
    for _ in range(steps):  # training mode: each call also updates the running statistics
        x = batch()
        y_bn = ours(x)
        diff = max(diff, (y_bn - theirs(x)).abs().max().item())
    running = max(_relative_diff(ours.running_mean, theirs.running_mean),
                  _relative_diff(ours.running_var, theirs.running_var))
    ours.eval()
    theirs.eval()
    x_test = batch()
    eval_diff = (ours(x_test) - theirs(x_test)).abs().max().item()
    say(f"BatchNorm1d by hand vs torch.nn.BatchNorm1d on ({N}, {D}) batches, {steps} training steps:")
    say(f"   largest difference: training {diff:.1e}, running mean/var {running:.1e} (relative), "
        f"eval mode {eval_diff:.1e}")

    layer_ours, layer_theirs = LayerNorm1d(D), nn.LayerNorm(D)
    y_ln = layer_ours(x)
    ln_diff = (y_ln - layer_theirs(x)).abs().max().item()
    say(f"LayerNorm1d (models/gpt.py) vs torch.nn.LayerNorm: largest difference {ln_diff:.1e}\n")

    bn_col_mean, bn_col_std = _stats(y_bn, 0)
    _, bn_row_std = _stats(y_bn, 1)
    ln_row_mean, ln_row_std = _stats(y_ln, 1)
    _, ln_col_std = _stats(y_ln, 0)
    say("which dimension does each normalise? (last training batch; gain 1 and bias 0, as initialised)")
    say("                 per column (a feature over the batch)   per row (one example's features)")
    say(f"   BatchNorm    |mean| <= {bn_col_mean:.1e}, std {bn_col_std:.3f}        "
        f"std {bn_row_std:.3f} (varies by row)")
    say(f"   LayerNorm    std {ln_col_std:.3f} (varies by column)          "
        f"|mean| <= {ln_row_mean:.1e}, std {ln_row_std:.3f}")
    return NormsLesson((N, D), diff, running, eval_diff, ln_diff, bn_col_mean, bn_col_std, bn_row_std,
                       ln_row_mean, ln_row_std, ln_col_std)


def _silent(*args: object, **kwargs: object) -> None:
    """``print`` when the lesson runs quietly."""
