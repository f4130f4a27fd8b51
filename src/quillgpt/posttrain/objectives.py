"""The losses and estimates of post-training, each a small function tested against hand-computed values.

Shapes: rows are sampled replies, columns their token positions; ``mask`` is true on reply tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(r_chosen - r_rejected), averaged: the reward model's loss (Bradley & Terry 1952;
    InstructGPT, Ouyang et al. 2022, eq. 1). Only the difference of scores is learned."""
    return -F.logsigmoid(chosen - rejected).mean()


def pairwise_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """Share of pairs where the chosen reply scores higher (TRL's RewardTrainer "accuracy")."""
    return float((chosen > rejected).float().mean())


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from tokens sampled from the policy.

    The "k3" estimator of Schulman (2020, "Approximating KL Divergence"): with
    log r = ref_logp - logp, KL ~ (r - 1) - log r. Unbiased, and never negative, unlike log(1/r).
    """
    log_ratio = ref_logp - logp
    return torch.expm1(log_ratio) - log_ratio


def kl_per_reply(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean over replies of the summed per-token KL estimate (the "KL" RLHF reports)."""
    return float((kl_estimate(logp, ref_logp) * mask).sum() / mask.size(0))


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """GRPO's advantages (Shao et al. 2024, DeepSeekMath, eq. 3): each reward minus the mean of
    its group (the samples of one prompt), divided by the group's standard deviation when
    ``scale`` (nanochat leaves it out). A group whose samples all score the same teaches nothing: 0."""
    groups = rewards.view(-1, group_size)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (groups.std(dim=1, unbiased=False, keepdim=True) + eps)
    return centred.reshape(-1)


def signal_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Which groups (the samples of one prompt, side by side) have rewards that differ: (groups,) bool.

    A group whose rewards are all equal has zero advantage under any group baseline, so it teaches
    the policy nothing; DAPO's dynamic sampling (Yu et al. 2025) drops such groups."""
    groups = rewards.view(-1, group_size)
    return (groups != groups[:, :1]).any(dim=1)


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                        clip: float, clip_high: float | None = None) -> torch.Tensor:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), per token, as a loss to minimize:
    -min(ratio * A, clip(ratio, 1 - eps, 1 + eps_high) * A) with ratio = pi / pi_old.

    ``clip_high`` (None: ``clip``) is DAPO's clip-higher (Yu et al. 2025, 0.28 against 0.2): a
    token with a positive advantage may raise its probability further before the clip stops it,
    so a rare right answer can grow; the lower bound, which limits how far a token falls, stays."""
    high = clip if clip_high is None else clip_high
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + high) * advantages
    return -torch.minimum(unclipped, clipped)


LOSS_TYPES = ("dapo", "grpo", "dr_grpo")


def aggregate_loss(per_token: torch.Tensor, mask: torch.Tensor, loss_type: str, max_tokens: int) -> torch.Tensor:
    """One loss from per-token losses (rows: replies), named as TRL's ``loss_type``:

    - ``dapo``: the mean over every reply token of the batch (token-level, DAPO): a long reply
      counts per token, so short replies are not weighted up.
    - ``grpo``: the mean over each reply's tokens, then over replies (DeepSeekMath, eq. 3): every
      reply weighs the same, so each token of a short reply weighs more.
    - ``dr_grpo``: the sum over tokens divided by replies x ``max_tokens``, a constant (Liu et al.
      2025, Dr. GRPO): no length normalization at all.
    """
    m = mask.to(per_token.dtype)
    if loss_type == "dapo":
        return (per_token * m).sum() / m.sum().clamp(min=1)
    if loss_type == "grpo":
        return ((per_token * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)).mean()
    if loss_type == "dr_grpo":
        return (per_token * m).sum() / (per_token.size(0) * max_tokens)
    raise ValueError(f"unknown loss_type {loss_type!r}: use one of {', '.join(LOSS_TYPES)}")


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       clip: float) -> torch.Tensor:
    """PPO's value loss with the value clipped around its rollout-time estimate, per token:
    0.5 * max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2) (as in OpenAI's baselines)."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, eq. 16) over each row's reply tokens.

    delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}; the value after
    the last reply token is 0 (the episode ends). Returns (advantages, returns = A + V), zero
    outside ``mask``. Reply tokens must be contiguous in each row.
    """
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(rewards.size(0), dtype=rewards.dtype, device=rewards.device)
    running = torch.zeros_like(next_value)
    m = mask.to(rewards.dtype)
    for t in range(rewards.size(1) - 1, -1, -1):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * m[:, t]
        advantages[:, t] = running
        next_value = values[:, t] * m[:, t]  # 0 past the end of a row's reply
    return advantages, (advantages + values) * m


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit variance over the masked entries (PPO's advantage normalization)."""
    n = mask.sum().clamp(min=1)
    mean = (values * mask).sum() / n
    var = (((values - mean) * mask) ** 2).sum() / n
    return (values - mean) * torch.rsqrt(var + eps) * mask


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """Direct preference optimization (Rafailov et al. 2023, eq. 7), from summed reply log-probs:
    -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))."""
    return -F.logsigmoid(beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))).mean()


@dataclass
class AdaptiveKL:
    """The adaptive KL coefficient of Ziegler et al. 2019 (eq. 2): nudge beta so the measured KL
    tracks ``target``; the proportional error is clipped to +-0.2 per update."""

    coef: float
    target: float
    horizon: float = 10_000.0

    def update(self, measured_kl: float, batch_size: int) -> float:
        if self.target > 0 and math.isfinite(measured_kl):
            error = min(max(measured_kl / self.target - 1.0, -0.2), 0.2)
            self.coef *= 1.0 + error * batch_size / self.horizon
        return self.coef
