"""The other half of "Attention Is All You Need": an encoder, and cross-attention into it.

The GPT is a decoder only: causal self-attention, so position t sees positions <= t, which
is what lets it generate text left to right. The original transformer (Vaswani et al., 2017,
figure 1) also has an *encoder* that reads a whole source sequence (a French sentence, say)
with no causal mask, and a decoder whose blocks add a third sublayer, *cross-attention*:
queries come from the decoder's tokens, keys and values from the encoder's output, so every
generated token can look anywhere in the source.

    encoder block:  x = x + Attention(LN(x), LN(x))                 every token sees every token
    decoder block:  y = y + MaskedSelfAttention(LN(y))              causal, as in the GPT
                    y = y + Attention(LN(y), memory)                cross-attention into the source
                    y = y + FeedForward(LN(y))

Written in the lecture's style (one module per head), pre-norm like the GPT here, with
``FeedForward`` and ``MultiHeadAttention`` reused from the decoder-only model. Padding is
masked out of the keys, so a short source never attends to its padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from quillgpt.errors import ConfigError
from quillgpt.models.attention import MultiHeadAttention
from quillgpt.models.base import language_model_loss
from quillgpt.models.gpt import FeedForward, make_norm


class FullHead(nn.Module):
    """One head of attention with no causal mask; queries from ``x``, keys and values from ``source``.

    With ``source`` = ``x`` it is the encoder's self-attention; with ``source`` = the encoder
    output it is cross-attention. ``key_mask`` (B, S), True where a key is real, hides padding.
    """

    def __init__(self, n_embd: int, head_size: int, dropout: float) -> None:
        super().__init__()
        self.key = nn.Linear(n_embd, head_size, bias=False)
        self.query = nn.Linear(n_embd, head_size, bias=False)
        self.value = nn.Linear(n_embd, head_size, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, source: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        q = self.query(x)  # (B, T, hs): what each target position looks for
        k = self.key(source)  # (B, S, hs): what each source position offers
        wei = q @ k.transpose(-2, -1) * k.shape[-1] ** -0.5  # (B, T, S), scaled as in Head
        if key_mask is not None:
            wei = wei.masked_fill(~key_mask[:, None, :], float("-inf"))
        wei = self.dropout(F.softmax(wei, dim=-1))
        return wei @ self.value(source)  # (B, T, hs)


class FullMultiHeadAttention(nn.Module):
    """Unmasked heads in parallel, concatenated and projected, like ``MultiHeadAttention``."""

    def __init__(self, n_embd: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.heads = nn.ModuleList([FullHead(n_embd, n_embd // n_head, dropout) for _ in range(n_head)])
        self.proj = nn.Linear(n_embd, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, source: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        source = x if source is None else source
        out = torch.cat([h(x, source, key_mask) for h in self.heads], dim=-1)
        return self.dropout(self.proj(out))


class CrossAttention(FullMultiHeadAttention):
    """Queries from the decoder, keys and values from the encoder output ("memory")."""

    def forward(self, x: torch.Tensor, source: torch.Tensor | None = None,
                key_mask: torch.Tensor | None = None) -> torch.Tensor:
        if source is None:
            raise ValueError("cross-attention needs the encoder output as source")
        return super().forward(x, source, key_mask)


class EncoderBlock(nn.Module):
    """A GPT block without the causal mask: every source token sees every other one."""

    def __init__(self, n_embd: int, n_head: int, dropout: float, norm: str = "torch") -> None:
        super().__init__()
        self.sa = FullMultiHeadAttention(n_embd, n_head, dropout)
        self.ffwd = FeedForward(n_embd, dropout)
        self.ln1 = make_norm(norm, n_embd)
        self.ln2 = make_norm(norm, n_embd)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.sa(self.ln1(x), key_mask=key_mask)
        return x + self.ffwd(self.ln2(x))


class DecoderBlock(nn.Module):
    """Causal self-attention, then cross-attention into the encoder output, then the MLP."""

    def __init__(self, n_embd: int, n_head: int, block_size: int, dropout: float, norm: str = "torch") -> None:
        super().__init__()
        self.sa = MultiHeadAttention(n_embd, n_head, block_size, dropout)  # the GPT's causal heads
        self.ca = CrossAttention(n_embd, n_head, dropout)
        self.ffwd = FeedForward(n_embd, dropout)
        self.ln1 = make_norm(norm, n_embd)
        self.ln2 = make_norm(norm, n_embd)
        self.ln3 = make_norm(norm, n_embd)

    def forward(self, y: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None) -> torch.Tensor:
        y = y + self.sa(self.ln1(y))
        y = y + self.ca(self.ln2(y), memory, memory_mask)
        return y + self.ffwd(self.ln3(y))


@dataclass
class Seq2SeqConfig:
    """Shape of the encoder-decoder; source and target share one vocabulary here."""

    vocab_size: int
    block_size: int  # longest source and longest target sequence (positions)
    n_layer: int = 2  # encoder blocks, and as many decoder blocks
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.0
    pad_id: int = 0

    def validate(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")


class Seq2SeqTransformer(nn.Module):
    """Encoder-decoder transformer: ``forward(src, tgt_in, targets=None) -> (logits, loss)``."""

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        c = config
        self.token_embedding_table = nn.Embedding(c.vocab_size, c.n_embd)  # shared by source and target
        self.source_position_table = nn.Embedding(c.block_size, c.n_embd)
        self.target_position_table = nn.Embedding(c.block_size, c.n_embd)
        self.encoder = nn.ModuleList([EncoderBlock(c.n_embd, c.n_head, c.dropout) for _ in range(c.n_layer)])
        self.ln_enc = nn.LayerNorm(c.n_embd)
        self.decoder = nn.ModuleList([DecoderBlock(c.n_embd, c.n_head, c.block_size, c.dropout)
                                      for _ in range(c.n_layer)])
        self.ln_f = nn.LayerNorm(c.n_embd)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):  # as in the GPT: N(0, 0.02), zero biases
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _check_length(self, t: torch.Tensor, what: str) -> None:
        if t.size(1) > self.config.block_size:
            raise ConfigError(f"{what} of {t.size(1)} tokens is longer than block_size {self.config.block_size}")

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Source ids (B, S) -> (memory (B, S, C), key mask (B, S): True where the token is not padding)."""
        self._check_length(src, "a source")
        mask = src != self.config.pad_id
        x = self.token_embedding_table(src) + self.source_position_table(torch.arange(src.size(1), device=src.device))
        for block in self.encoder:
            x = block(x, mask)
        return self.ln_enc(x), mask

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor) -> torch.Tensor:
        """Target ids so far (B, T) and the encoder output -> next-token logits (B, T, vocab)."""
        self._check_length(tgt_in, "a target")
        positions = torch.arange(tgt_in.size(1), device=tgt_in.device)
        y = self.token_embedding_table(tgt_in) + self.target_position_table(positions)
        for block in self.decoder:
            y = block(y, memory, memory_mask)
        return self.lm_head(self.ln_f(y))

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor,
                targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        memory, mask = self.encode(src)
        logits = self.decode(tgt_in, memory, mask)
        loss = None if targets is None else language_model_loss(logits, targets)  # -100 targets are ignored
        return logits, loss

    @torch.no_grad()
    def greedy_decode(self, src: torch.Tensor, bos_id: int, eos_id: int, max_len: int) -> torch.Tensor:
        """Most likely target for each source: (B, <= max_len) ids after BOS, ``eos_id`` once finished.

        The source is encoded once; the decoder reruns on the growing target (no KV cache:
        the targets here are a few tokens long).
        """
        memory, mask = self.encode(src)
        out = torch.full((src.size(0), 1), bos_id, dtype=torch.long, device=src.device)
        done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
        # The decoder input grows from 1 token (BOS) to block_size tokens: block_size steps at most.
        for _ in range(min(max_len, self.config.block_size)):
            nxt = self.decode(out, memory, mask)[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
            out = torch.cat([out, nxt[:, None]], dim=1)
            done |= nxt == eos_id
            if bool(done.all()):
                break
        return out[:, 1:]
