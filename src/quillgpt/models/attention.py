"""Causal self-attention, the lecture's way and the fast way, with one set of weights.

``Head`` and ``MultiHeadAttention`` are the lecture's code: every head is its own module
with its own key/query/value projections, run one after another and concatenated.
``FusedMultiHeadAttention`` is the same module with the same parameters (a checkpoint of
one loads into the other), but it stacks the per-head weights into one matrix, projects
all heads in one matmul, and calls PyTorch's fused ``scaled_dot_product_attention``.
tests/test_attention.py checks that both give the same logits and gradients.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from quillgpt.models import matvec


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm (Zhang & Sennrich 2019, eq. 4): x / sqrt(mean(x^2) + eps) * weight, over the last dim.

    LayerNorm without re-centering (no mean, no bias): the paper finds the re-scaling is what
    matters, at a lower cost.
    """
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE; Su et al. 2021, arXiv 2104.09864, eq. 34).

    Features (2i, 2i+1) of a query or key at position m are rotated by the angle m * theta_i,
    theta_i = 10000^(-2i / head_size). Since a rotation by m then by -n is a rotation by m - n,
    the score q_m . k_n depends on the tokens and on the offset m - n only, never on m itself.
    No parameters; the cos/sin tables are rebuilt from block_size, like ``Head.tril``.
    """

    def __init__(self, head_size: int, block_size: int, base: float = 10000.0) -> None:
        super().__init__()
        theta = base ** (-torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)  # (hs/2,)
        angles = torch.arange(block_size, dtype=torch.float32)[:, None] * theta[None, :]  # (block, hs/2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, start: int | torch.Tensor = 0) -> torch.Tensor:
        """Rotate ``x`` (..., T, head_size) whose first position is ``start`` (the KV-cache offset), or
        (B, T, head_size) / (B, nh, T, head_size) whose every token has its own position, given as a
        (B, T) tensor (a ragged KV cache, packed rows)."""
        if isinstance(start, torch.Tensor):
            cos, sin = self.cos[start].to(x.dtype), self.sin[start].to(x.dtype)  # (B, T, hs/2)
            if x.dim() == 4:  # (B, nh, T, hs): the same positions for every head
                cos, sin = cos[:, None], sin[:, None]
        else:
            T = x.size(-2)
            cos, sin = self.cos[start:start + T].to(x.dtype), self.sin[start:start + T].to(x.dtype)
        pairs = x.unflatten(-1, (-1, 2))  # (..., T, hs/2, 2): (x_2i, x_2i+1)
        even, odd = pairs[..., 0], pairs[..., 1]
        rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
        return rotated.flatten(-2)


class Packing(NamedTuple):
    """Several sequences packed into each row (training on short arithmetic problems): every
    token's position in its own sequence, and which tokens it may attend to.

    A sequence starts where ``positions`` is 0 and counts up by one per token, so each packed
    problem sits at positions 0, 1, 2, ... exactly as it does alone in a row at test time.
    """

    positions: torch.Tensor  # (B, T) long
    mask: torch.Tensor  # (B, T, T) bool: query t may see key s (s <= t, in t's own sequence)

    @classmethod
    def from_positions(cls, positions: torch.Tensor) -> Packing:
        """The block-diagonal causal mask of ``positions``: token t's sequence starts at t - positions[t]."""
        t = torch.arange(positions.size(-1), device=positions.device)
        start = t - positions  # (B, T): the index of the first token of each token's sequence
        keys = t[None, None, :]  # (1, 1, T)
        mask = (keys <= t[None, :, None]) & (keys >= start[:, :, None])  # (B, T, T)
        return cls(positions, mask)


class Head(nn.Module):
    """One head of causal self-attention."""

    def __init__(self, n_embd: int, head_size: int, block_size: int, dropout: float,
                 rope: RotaryEmbedding | None = None, qk_norm: bool = False, qkv_bias: bool = False) -> None:
        super().__init__()
        # No biases in the lecture; qkv_bias adds them for GPT-2 checkpoints (quill import).
        self.key = nn.Linear(n_embd, head_size, bias=qkv_bias)
        self.query = nn.Linear(n_embd, head_size, bias=qkv_bias)
        self.value = nn.Linear(n_embd, head_size, bias=qkv_bias)
        self.rope = rope  # shared by all heads; None: positions come from the GPT's position table
        # QK-norm: a per-head RMSNorm of q and k (see ModelConfig.qk_norm)
        self.q_norm, self.k_norm = (RMSNorm(head_size), RMSNorm(head_size)) if qk_norm else (None, None)
        # Lower-triangular mask: position t may only look at positions <= t. Not a
        # parameter and not saved: it is rebuilt from block_size.
        self.register_buffer("tril", torch.tril(torch.ones(block_size, block_size)), persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, packing: Packing | None = None) -> torch.Tensor:
        B, T, C = x.shape
        k = self.key(x)  # (B, T, hs)
        q = self.query(x)  # (B, T, hs)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            start = 0 if packing is None else packing.positions  # packed rows: each token's own position
            q, k = self.rope(q, start), self.rope(k, start)
        # Scaled by 1/sqrt(head_size) so the scores have unit variance at init and the
        # softmax stays diffuse instead of collapsing onto one position ("Attention Is
        # All You Need", eq. 1).
        wei = q @ k.transpose(-2, -1) * k.shape[-1] ** -0.5  # (B, T, T)
        if packing is None:
            wei = wei.masked_fill(self.tril[:T, :T] == 0, float("-inf"))
        else:  # several sequences per row: each token sees only the earlier tokens of its own
            wei = wei.masked_fill(~packing.mask, float("-inf"))
        wei = F.softmax(wei, dim=-1)
        wei = self.dropout(wei)
        v = self.value(x)  # (B, T, hs)
        return wei @ v  # (B, T, hs)


class MultiHeadAttention(nn.Module):
    """Several heads in parallel, concatenated, then projected back into the residual stream."""

    def __init__(self, n_embd: int, n_head: int, block_size: int, dropout: float, rope: bool = False,
                 qk_norm: bool = False, qkv_bias: bool = False) -> None:
        super().__init__()
        head_size = n_embd // n_head
        self.rope = RotaryEmbedding(head_size, block_size) if rope else None
        self.heads = nn.ModuleList([Head(n_embd, head_size, block_size, dropout, self.rope, qk_norm, qkv_bias)
                                    for _ in range(n_head)])
        self.proj = nn.Linear(n_embd, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, packing: Packing | None = None) -> torch.Tensor:
        out = torch.cat([h(x, packing) for h in self.heads], dim=-1)  # (B, T, n_embd)
        return self.dropout(self.proj(out))


def byte_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Dropout whose mask comes from random bytes: ~10x cheaper than ``bernoulli_`` on CPU.

    One 64-bit random draw gives 8 mask bytes; an element is kept when its byte is below
    round((1 - p) * 256), so the drop probability is p rounded to a multiple of 1/256
    (0.2 -> 51/256 = 0.199). Kept elements are scaled by 256/threshold so the expected
    value is unchanged, as in ``nn.Dropout``.
    """
    threshold = round((1.0 - p) * 256)
    if threshold >= 256:
        return x
    n_words = (x.numel() + 7) // 8
    # The full int64 range, so all 8 bytes of a word are uniform (a narrower range biases the top byte).
    words = torch.randint(-(2**63), 2**63 - 1, (n_words,), dtype=torch.int64, device=x.device)
    keep = words.view(torch.uint8)[: x.numel()].view(x.shape) < threshold
    return x * keep.to(x.dtype) * (256.0 / threshold)


class ByteDropout(nn.Dropout):
    """``nn.Dropout`` that draws its mask with ``byte_dropout`` when training on CPU.

    On CPU, ``bernoulli_`` (what ``nn.Dropout`` and SDPA's dropout use) is most of the cost of
    dropout; elsewhere this is plain ``nn.Dropout``. No parameters, so checkpoints are unchanged.
    """

    def uses_byte_mask(self, x: torch.Tensor) -> bool:
        return self.training and self.p > 0 and x.device.type == "cpu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:  # identity; skipping F.dropout's checks matters once per layer per decoded token
            return x
        return byte_dropout(x, self.p) if self.uses_byte_mask(x) else super().forward(x)


class KVCache:
    """Keys and values of the tokens seen so far, per layer, so each new token costs one position.

    Preallocated as (B, n_head, block_size, head_size) per layer; ``length`` tokens are filled.
    The GPT's position embeddings are absolute, so a full cache cannot slide by one token:
    ``quillgpt.sample`` empties it and refills it from the most recent tokens instead.
    Every row has the same length; a ``ragged`` subclass (``quillgpt.serve.batching``) keeps
    one length per row. Each cache says where its new tokens sit (``positions``) and which
    keys they may see (``attention_mask``), so attention need not know which kind it has.
    With RoPE the keys are stored already rotated to their positions.
    """

    ragged = False

    def __init__(self, n_layer: int, batch: int, n_head: int, block_size: int, head_size: int,
                 device: torch.device | str, dtype: torch.dtype) -> None:
        self._allocate(n_layer, batch, n_head, block_size, head_size, device, dtype)
        self.length = 0

    def _allocate(self, n_layer: int, batch: int, n_head: int, block_size: int, head_size: int,
                  device: torch.device | str, dtype: torch.dtype) -> None:
        shape = (batch, n_head, block_size, head_size)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.block_size = block_size

    def reset(self) -> None:
        self.length = 0

    def positions(self, n: int) -> int | torch.Tensor:
        """Where the next n tokens sit: every row continues at ``length``, so just that first position."""
        return self.length

    def attention_mask(self, n: int) -> tuple[torch.Tensor | None, bool]:
        """``(attn_mask, is_causal)`` for SDPA: which keys each of the n new queries may see.

        New query i sits at position length + i and may see keys 0 .. length + i.
        """
        past = self.length
        if past == 0:  # nothing cached yet: the usual causal mask among the new tokens
            return None, True
        if n == 1:  # one new token sees every cached key and itself: no mask at all
            return None, False
        return torch.ones(n, past + n, dtype=torch.bool, device=self.keys[0].device).tril(diagonal=past), False

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new (B, nh, T, hs) keys/values after the cached ones; return all of them."""
        start, end = self.length, self.length + k.size(2)
        if end > self.block_size:
            raise ValueError(f"KV cache overflow: {end} positions > block_size {self.block_size}")
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n: int) -> None:
        """Count ``n`` new tokens as cached (after every layer has stored them)."""
        self.length += n


class FusedMultiHeadAttention(MultiHeadAttention):
    """Fast path: the same parameters as ``MultiHeadAttention``, all heads at once."""

    def __init__(self, n_embd: int, n_head: int, block_size: int, dropout: float, rope: bool = False,
                 qk_norm: bool = False, qkv_bias: bool = False) -> None:
        super().__init__(n_embd, n_head, block_size, dropout, rope, qk_norm, qkv_bias)
        self.n_head = n_head
        self.attn_dropout = ByteDropout(dropout)  # on the attention weights, like Head.dropout
        self.dropout = ByteDropout(dropout)  # on the output, replacing MultiHeadAttention's nn.Dropout
        self._stacked: tuple[tuple[int, ...], torch.Tensor] | None = None
        self._prepared = matvec.PreparedWeights()  # one-token decoding fast path, see matvec.py

    def qkv_weight(self) -> torch.Tensor:
        """The per-head projections stacked as one (3 * n_embd, n_embd) matrix: q, then k, then v.

        Without autograd (sampling, eval) the stacked copy is reused until a weight changes:
        every in-place update (optimizer step, load_state_dict) bumps a tensor's _version.
        A computed weight (a parametrization) is a new tensor at each look-up, whose version
        and address say nothing about its values, and a weight made under inference_mode has
        no version, so for those the stack is always rebuilt.
        """
        weights, all_stored = self._projection_weights()
        if torch.is_grad_enabled() or not all_stored:
            self._stacked = None
            return torch.cat(weights)
        versions = tuple(w._version for w in weights) + tuple(w.data_ptr() for w in weights)
        if self._stacked is None or self._stacked[0] != versions:
            # an ordinary tensor even under torch.inference_mode, whose tensors have no version
            # for matvec.PreparedWeights to check
            with torch.inference_mode(False), torch.no_grad():
                self._stacked = (versions, torch.cat(weights))
        return self._stacked[1]

    def _projection_weights(self) -> tuple[list[torch.Tensor], bool]:
        """Every head's query weights, then key, then value (what ``qkv_weight`` stacks), and
        whether all of them are stored parameters whose versions can be read (not computed at
        each look-up, not made under inference_mode).

        This runs once per layer per decoded token, so it reads the modules' own dicts: through
        ``Module.__getattr__`` (two look-ups per weight, 36 per 6-head layer) it took ~43 us a
        layer on the 2-core EPYC, through the dicts ~5 us, about as long as the token's attention.
        """
        weights: dict[str, list[torch.Tensor]] = {"query": [], "key": [], "value": []}
        all_stored = True
        for head in self.heads._modules.values():
            for name, column in weights.items():
                weight = head._modules[name]._parameters.get("weight")
                if weight is None:  # e.g. a parametrized weight: the ordinary look-up computes it
                    weight, all_stored = getattr(head, name).weight, False
                elif weight.is_inference():  # made under torch.inference_mode: no version to check
                    all_stored = False
                column.append(weight)
        return weights["query"] + weights["key"] + weights["value"], all_stored

    def qkv_bias(self) -> torch.Tensor | None:
        """The per-head biases stacked like ``qkv_weight`` (None without qkv_bias: the lecture's heads)."""
        heads = self.heads
        if heads[0].query.bias is None:
            return None
        return torch.cat([h.query.bias for h in heads] + [h.key.bias for h in heads] + [h.value.bias for h in heads])

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values of every head, each (B, n_head, T, head_size), from one matmul.

        (B, T, C) -> (B, n_head, T, head_size): head i owns columns i*hs:(i+1)*hs, exactly the
        order in which MultiHeadAttention concatenates its heads.
        """
        B, T, C = x.shape
        q, k, v = matvec.linear(x, self.qkv_weight(), self.qkv_bias(), self._prepared, "qkv").split(C, dim=-1)
        return tuple(t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))

    def qk_norm(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each head's RMSNorm of q and k (``Head.q_norm``/``k_norm``), gains stacked as (n_head, 1, hs)."""
        first = self.heads[0]
        if first.q_norm is None:
            return q, k
        q_gain = torch.stack([h.q_norm.weight for h in self.heads]).unsqueeze(1)
        k_gain = torch.stack([h.k_norm.weight for h in self.heads]).unsqueeze(1)
        return rms_norm(q, q_gain, first.q_norm.eps), rms_norm(k, k_gain, first.k_norm.eps)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: torch.Tensor | None = None, causal: bool = True) -> torch.Tensor:
        """softmax(q k^T / sqrt(head_size)) v ("Attention Is All You Need", eq. 1), as ``Head`` computes it.

        ``mask`` (True = may attend) and ``causal`` mean what they mean to SDPA's attn_mask/is_causal.
        """
        if not self.attn_dropout.uses_byte_mask(q):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                                  dropout_p=self.attn_dropout.p if self.training else 0.0)
        # Training on CPU with dropout: SDPA would fall back to this same math and spend most of
        # its time drawing the dropout mask with bernoulli_, so spell it out with a byte mask.
        wei = (q @ k.transpose(-2, -1)) * q.size(-1) ** -0.5
        if mask is not None:
            wei = wei.masked_fill(~mask, float("-inf"))
        elif causal:  # SDPA's is_causal: query i sees keys 0..i
            wei = wei.masked_fill(torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).triu(1),
                                  float("-inf"))
        return self.attn_dropout(F.softmax(wei, dim=-1)) @ v

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                packing: Packing | None = None) -> torch.Tensor:
        B, T, C = x.shape
        # query, key, value for all heads in one matmul: each (B, n_head, T, head_size)
        q, k, v = self.qkv(x)
        # QK-norm and rotary positions (when configured); new tokens sit after the cached ones
        q, k = self.qk_norm(q, k)
        if self.rope is not None:
            start = packing.positions if packing is not None else 0 if cache is None else cache.positions(T)
            q, k = self.rope(q, start), self.rope(k, start)
        # causal self-attention over the new tokens (packed rows: within each sequence), or over
        # everything cached as the cache masks it
        if cache is None:
            y = self.attend(q, k, v) if packing is None else self.attend(q, k, v, packing.mask[:, None])
        else:
            k, v = cache.update(layer, k, v)
            y = self.attend(q, k, v, *cache.attention_mask(T))
        # the heads side by side again, then the output projection back into the residual stream
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.dropout(matvec.linear(y, self.proj.weight, self.proj.bias, self._prepared, "proj"))
