"""What every language model here shares: the loss, and ``generate``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def language_model_loss(logits: torch.Tensor, targets: torch.Tensor,
                        loss_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy; with ``loss_mask`` only the masked-in positions count."""
    flat_logits = logits.reshape(-1, logits.size(-1)).float()
    flat_targets = targets.reshape(-1)
    if loss_mask is None:
        return F.cross_entropy(flat_logits, flat_targets)
    per_token = F.cross_entropy(flat_logits, flat_targets, reduction="none")
    mask = loss_mask.reshape(-1).to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


class LanguageModel(nn.Module):
    """Base class: ``forward(idx, targets=None, loss_mask=None) -> (logits, loss)``."""

    block_size: int

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, **sampling: object) -> torch.Tensor:
        """Append ``max_new_tokens`` sampled tokens to ``idx`` (B, T); see ``quillgpt.sample``."""
        from quillgpt.sample import generate  # sample.py depends only on torch

        return generate(self, idx, max_new_tokens, **sampling)
