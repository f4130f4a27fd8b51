"""The bigram model: each token looks up the logits of the next one in a table.

It has no context at all, which is why it is the lecture's baseline: whatever a bigger
model gains over it, it gains from looking back.
"""

from __future__ import annotations

import torch
from torch import nn

from quillgpt.config import ModelConfig
from quillgpt.models.base import LanguageModel, language_model_loss


class BigramLanguageModel(LanguageModel):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.block_size = config.block_size
        # Row i holds the (unnormalised) log-probabilities of the token after token i.
        self.token_embedding_table = nn.Embedding(config.vocab_size, config.vocab_size)
        nn.init.normal_(self.token_embedding_table.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                loss_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits = self.token_embedding_table(idx)  # (B, T, vocab)
        loss = None if targets is None else language_model_loss(logits, targets, loss_mask)
        return logits, loss
