"""A WaveNet-style language model (van den Oord et al. 2016, arXiv 1609.03499), makemore part 5.

A stack of causal convolutions of kernel 2 whose dilation doubles layer by layer (1, 2, 4, ...):
layer i mixes position t with position t - 2^i, so after n_layer layers each output sees the
last 2^n_layer tokens (the receptive field; makemore's "hierarchical" fusing of pairs is the
same tree). Causal: the input is padded on the left only, so output t never sees t + 1.
Each layer is a gated activation unit with a residual connection (the paper's eq. 2 and fig. 4):

    z = tanh(W_f * x) . sigmoid(W_g * x)       (* a dilated causal convolution)
    x = x + W_r z                               (a 1x1 convolution)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quillgpt.config import ModelConfig
from quillgpt.models.base import LanguageModel, language_model_loss


class CausalConvLayer(nn.Module):
    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.dilation = dilation
        self.conv = nn.Conv1d(channels, 2 * channels, kernel_size=2, dilation=dilation)  # W_f and W_g
        self.residual = nn.Conv1d(channels, channels, kernel_size=1)  # W_r

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        filt, gate = self.conv(F.pad(x, (self.dilation, 0))).chunk(2, dim=1)  # left pad: causal
        return x + self.residual(torch.tanh(filt) * torch.sigmoid(gate))


class WaveNetLanguageModel(LanguageModel):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.block_size = config.block_size
        self.embedding = nn.Embedding(config.vocab_size, config.n_embd)
        self.layers = nn.ModuleList([CausalConvLayer(config.n_embd, 2 ** i) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size)

    @property
    def receptive_field(self) -> int:
        return 2 ** len(self.layers)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                loss_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.embedding(idx).transpose(1, 2)  # (B, C, T): Conv1d wants channels first
        for layer in self.layers:
            x = layer(x)
        logits = self.lm_head(self.ln_f(x.transpose(1, 2)))  # (B, T, vocab)
        loss = None if targets is None else language_model_loss(logits, targets, loss_mask)
        return logits, loss
