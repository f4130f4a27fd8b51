"""Continuous batching: one forward pass for many sequences, each at its own length.

The GPT's position embeddings are absolute and ``KVCache`` keeps one length for the whole
batch, so sequences that started at different times cannot share it. ``RaggedKVCache`` keeps
one length per row instead: row b's new tokens sit at positions ``lengths[b], lengths[b] + 1, ...``
(``positions``), are written there in the cache (``update``), and may attend to cached keys
``0 .. lengths[b] + t`` only (``row_mask``); the rest of the row (padding up to the longest
row, or stale keys of a finished sequence) is masked out. That is the iteration-level
scheduling of Orca (Yu et al., OSDI 2022): sequences join and leave the batch between steps
(``extend``, ``keep``), so a short request never waits for a long one.

``sample_rows`` draws one token per row, each with its own sampling parameters and its own
random generator, so a request's tokens for a given seed do not depend on which other
requests happened to share its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from quillgpt.models.attention import KVCache
from quillgpt.sample import filter_logits


class RaggedKVCache(KVCache):
    """A KV cache whose rows hold sequences of different lengths (see the module docstring)."""

    ragged = True

    def __init__(self, n_layer: int, batch: int, n_head: int, block_size: int, head_size: int,
                 device: torch.device | str, dtype: torch.dtype) -> None:
        # Not KVCache.__init__: its one ``length`` is a property here, derived from ``lengths``.
        self._allocate(n_layer, batch, n_head, block_size, head_size, device, dtype)
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)

    @classmethod
    def for_model(cls, model: torch.nn.Module, batch: int) -> RaggedKVCache:
        c = model.config
        weight = model.lm_head.weight
        return cls(c.n_layer, batch, c.n_head, c.block_size, c.head_size, weight.device, weight.dtype)

    @property
    def batch(self) -> int:
        return self.lengths.numel()

    @property
    def length(self) -> int:  # the longest row: GPT.features checks it against block_size
        return int(self.lengths.max()) if self.batch else 0

    def reset(self) -> None:
        self.lengths.zero_()

    def positions(self, n: int) -> torch.Tensor:
        """(B, n) absolute positions of the next n tokens of every row (rows continue at their own lengths)."""
        return self.lengths[:, None] + torch.arange(n, device=self.lengths.device)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write each row's (nh, T, hs) new keys/values at its own positions; return every row up to the longest."""
        T = k.size(2)
        end = self.length + T
        if end > self.block_size:
            raise ValueError(f"KV cache overflow: {end} positions > block_size {self.block_size}")
        rows = torch.arange(self.batch, device=k.device)[:, None]  # (B, 1)
        where = self.positions(T)  # (B, T)
        # Advanced indices around a slice put their dims first: the target is (B, T, nh, hs).
        self.keys[layer][rows, :, where] = k.transpose(1, 2)
        self.values[layer][rows, :, where] = v.transpose(1, 2)
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def row_mask(self, n: int) -> torch.Tensor:
        """(B, 1, n, L) bool, True where new query t of row b may see key j: j <= lengths[b] + t."""
        keys = torch.arange(self.length + n, device=self.lengths.device)  # (L,)
        last = self.positions(n)  # (B, T): the position of each query, the last key it may see
        return (keys[None, None, :] <= last[:, :, None])[:, None]

    def attention_mask(self, n: int) -> tuple[torch.Tensor, bool]:
        """``(attn_mask, is_causal)`` for SDPA: each row its own causal mask (``row_mask``), never SDPA's."""
        return self.row_mask(n), False

    def advance(self, n: int) -> None:
        self.lengths += n

    def keep(self, rows: Sequence[int]) -> None:
        """Keep only these rows, in this order (finished sequences leave the batch)."""
        index = torch.tensor(list(rows), dtype=torch.long, device=self.lengths.device)
        self.keys = [k.index_select(0, index) for k in self.keys]
        self.values = [v.index_select(0, index) for v in self.values]
        self.lengths = self.lengths.index_select(0, index)

    def extend(self, other: RaggedKVCache) -> None:
        """Append the rows of ``other`` (a prefilled new sequence joins the batch)."""
        self.keys = [torch.cat((a, b)) for a, b in zip(self.keys, other.keys, strict=True)]
        self.values = [torch.cat((a, b)) for a, b in zip(self.values, other.values, strict=True)]
        self.lengths = torch.cat((self.lengths, other.lengths))


@dataclass(frozen=True)
class RowParams:
    """How one row samples: temperature 0 means greedy (argmax), as in the OpenAI API."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None


def sample_rows(logits: torch.Tensor, params: Sequence[RowParams],
                generators: Sequence[torch.Generator]) -> list[int]:
    """One token per row of ``logits`` (B, vocab), each row with its own parameters and generator.

    Rows that share parameters are filtered together by ``quillgpt.sample.filter_logits``
    (one call when every request uses the same settings); each row then draws one uniform
    number from its own generator and inverts its cumulative distribution.
    """
    logits = logits.float()
    probs = torch.empty_like(logits)
    groups: dict[RowParams, list[int]] = {}
    for row, p in enumerate(params):
        groups.setdefault(p, []).append(row)
    for p, rows in groups.items():
        index = torch.tensor(rows, dtype=torch.long, device=logits.device)
        if p.temperature == 0:  # greedy: all the mass on the argmax
            one_hot = F.one_hot(logits[index].argmax(-1), logits.size(-1)).to(probs.dtype)
            probs.index_copy_(0, index, one_hot)
        else:
            filtered = filter_logits(logits[index], p.temperature, p.top_k, p.top_p)
            probs.index_copy_(0, index, F.softmax(filtered, dim=-1))
    cdf = probs.cumsum(-1)
    u = torch.stack([torch.rand((), generator=g) for g in generators]).to(logits.device)
    # The first token whose cumulative mass exceeds u * total (right side: never a zero-mass token).
    picks = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp_(max=logits.size(-1) - 1)
    return picks[:, 0].tolist()
