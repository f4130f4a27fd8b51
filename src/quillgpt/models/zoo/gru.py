"""The gated recurrent unit (Cho et al. 2014, arXiv 1406.1078, eqs. 5-8, in torch.nn.GRU's form).

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)           reset gate
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)           update gate
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))        candidate
    h' = (1 - z) * n + z * h

Gates stacked in torch.nn.GRU's order (r, z, n). Two gates instead of the LSTM's three, and no
separate cell: the interpolation with z is the additive path through time.
"""

from __future__ import annotations

import torch

from quillgpt.models.zoo.recurrent import RecurrentCell, RecurrentLanguageModel


class GRUCell(RecurrentCell):
    gates = 3

    def step(self, xw: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_r, x_z, x_n = xw.chunk(3, dim=-1)
        h_r, h_z, h_n = (state @ self.weight_hh.T + self.bias_hh).chunk(3, dim=-1)
        r = torch.sigmoid(x_r + h_r)
        z = torch.sigmoid(x_z + h_z)
        n = torch.tanh(x_n + r * h_n)
        h = (1 - z) * n + z * state
        return h, h


class GRULanguageModel(RecurrentLanguageModel):
    cell = GRUCell
