"""The Elman recurrent network (Elman 1990, "Finding Structure in Time") as a language model.

    h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)        (torch.nn.RNN's equation)
"""

from __future__ import annotations

import torch

from quillgpt.models.zoo.recurrent import RecurrentCell, RecurrentLanguageModel


class ElmanCell(RecurrentCell):
    gates = 1

    def step(self, xw: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(xw + state @ self.weight_hh.T + self.bias_hh)
        return h, h


class RNNLanguageModel(RecurrentLanguageModel):
    cell = ElmanCell
