"""What the recurrent language models share: embed, run a stack of cells over time, predict.

    x_t = embedding(w_t);  h_t^(1) = cell_1(x_t, h_{t-1}^(1));  ...;  logits_t = lm_head(h_t^(L))

Each cell keeps torch's parameter names and gate order (weight_ih, weight_hh, bias_ih,
bias_hh), so tests/test_zoo.py can copy its weights into ``torch.nn.RNN/LSTM/GRU`` and
compare. The input half of every gate, W_ih x_t + b_ih, is computed for all T steps in one
matmul; only the recurrent half runs step by step, as the recurrence demands. Every window
starts from a zero state (truncated backpropagation through time, window = block_size), so
sampling, which crops the context to block_size, sees what training saw.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from quillgpt.config import ModelConfig
from quillgpt.models.base import LanguageModel, language_model_loss

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class RecurrentCell(nn.Module):
    """Parameters of one layer; subclasses define ``gates``, ``zero_state`` and ``step``."""

    gates = 1

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        g = self.gates * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(g, input_size))
        self.weight_hh = nn.Parameter(torch.empty(g, hidden_size))
        self.bias_ih = nn.Parameter(torch.empty(g))
        self.bias_hh = nn.Parameter(torch.empty(g))
        bound = 1.0 / math.sqrt(hidden_size)  # torch's init: U(-1/sqrt(H), 1/sqrt(H)) for every weight
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def zero_state(self, batch: int, like: torch.Tensor) -> State:
        return like.new_zeros(batch, self.hidden_size)

    def step(self, xw: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One time step from ``xw`` = W_ih x_t + b_ih; returns (h_t, new state)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, input) -> the hidden states (B, T, hidden)."""
        xw = x @ self.weight_ih.T + self.bias_ih  # (B, T, gates * H): all input projections at once
        state = self.zero_state(x.size(0), x)
        outputs = []
        for t in range(x.size(1)):
            h, state = self.step(xw[:, t], state)
            outputs.append(h)
        return torch.stack(outputs, dim=1)


class RecurrentLanguageModel(LanguageModel):
    cell: type[RecurrentCell] = RecurrentCell

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.block_size = config.block_size
        self.embedding = nn.Embedding(config.vocab_size, config.n_embd)
        self.cells = nn.ModuleList([self.cell(config.n_embd, config.n_embd) for _ in range(config.n_layer)])
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                loss_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.embedding(idx)  # (B, T, C)
        for cell in self.cells:
            x = cell(x)
        logits = self.lm_head(x)  # (B, T, vocab)
        loss = None if targets is None else language_model_loss(logits, targets, loss_mask)
        return logits, loss
