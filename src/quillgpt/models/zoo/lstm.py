"""Long short-term memory (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000).

    i = sigmoid(W_ii x + b_ii + W_hi h + b_hi)     input gate
    f = sigmoid(W_if x + b_if + W_hf h + b_hf)     forget gate
    g = tanh(W_ig x + b_ig + W_hg h + b_hg)        candidate
    o = sigmoid(W_io x + b_io + W_ho h + b_ho)     output gate
    c' = f * c + i * g                              the cell: an additive path through time,
    h' = o * tanh(c')                               so gradients do not vanish as in the Elman RNN

Gates stacked in torch.nn.LSTM's order (i, f, g, o).
"""

from __future__ import annotations

import torch

from quillgpt.models.zoo.recurrent import RecurrentCell, RecurrentLanguageModel

LSTMState = tuple[torch.Tensor, torch.Tensor]


class LSTMCell(RecurrentCell):
    gates = 4

    def zero_state(self, batch: int, like: torch.Tensor) -> LSTMState:
        return like.new_zeros(batch, self.hidden_size), like.new_zeros(batch, self.hidden_size)

    def step(self, xw: torch.Tensor, state: LSTMState) -> tuple[torch.Tensor, LSTMState]:
        h, c = state
        i, f, g, o = (xw + h @ self.weight_hh.T + self.bias_hh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, (h, c)


class LSTMLanguageModel(RecurrentLanguageModel):
    cell = LSTMCell
