"""The MLP language model of Bengio et al. 2003 ("A Neural Probabilistic Language Model"), makemore part 2.

    x = concat(C[w_{t-n+1}], ..., C[w_t])      a learned embedding per token, context_len of them
    h = tanh(H x + d)                           one hidden layer
    logits = U h + b                            (the paper's eq. 1 without the direct connections W x)

Every position t of a (B, T) window is predicted from its own last ``context_len`` tokens, so
the model trains on every position of a batch, as the GPT does. Positions near the start of a
window have fewer real tokens before them: the missing ones are an extra "before the start"
token (id vocab_size), like makemore's '.' padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from quillgpt.config import ModelConfig
from quillgpt.models.base import LanguageModel, language_model_loss


class MLPLanguageModel(LanguageModel):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.block_size = config.block_size
        self.context_len = config.context_len
        self.pad = config.vocab_size  # the "before the start" token
        hidden = 4 * config.n_embd  # as wide as the GPT's feed-forward
        self.embedding = nn.Embedding(config.vocab_size + 1, config.n_embd)  # the paper's C
        self.hidden = nn.Linear(config.context_len * config.n_embd, hidden)  # H, d
        self.lm_head = nn.Linear(hidden, config.vocab_size)  # U, b
        with torch.no_grad():  # small output weights: the first loss is close to ln(vocab_size)
            self.lm_head.weight.mul_(0.1)
            self.lm_head.bias.zero_()

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                loss_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        padded = F.pad(idx, (self.context_len - 1, 0), value=self.pad)  # (B, n - 1 + T)
        windows = padded.unfold(1, self.context_len, 1)  # (B, T, n): row t holds tokens t-n+1 .. t
        x = self.embedding(windows).flatten(2)  # (B, T, n * n_embd): the concatenation
        logits = self.lm_head(torch.tanh(self.hidden(x)))  # (B, T, vocab)
        loss = None if targets is None else language_model_loss(logits, targets, loss_mask)
        return logits, loss
