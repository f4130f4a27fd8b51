"""The lecture's GPT: embeddings, a stack of pre-norm transformer blocks, and a linear head.

    x = token_embedding(idx) + position_embedding(t)
    for each Block:  x = x + MultiHeadAttention(LayerNorm(x))
                     x = x + FeedForward(LayerNorm(x))
    logits = lm_head(LayerNorm(x))

With vocab 65, n_embd 384, n_head 6, n_layer 6 and block 256 it has 10,788,929 parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from quillgpt.config import POSITION_SCHEMES, ModelConfig
from quillgpt.errors import ConfigError
from quillgpt.models import decode, matvec
from quillgpt.models.attention import (
    ByteDropout,
    FusedMultiHeadAttention,
    Head,
    KVCache,
    MultiHeadAttention,
    Packing,
    RMSNorm,
    RotaryEmbedding,
    byte_dropout,
)
from quillgpt.models.base import LanguageModel, language_model_loss


class LayerNorm1d(nn.Module):
    """The lecture's LayerNorm written out: normalise each position's features, then scale and shift.

    Same parameter names as ``nn.LayerNorm`` so either loads the other's weights. Uses the
    biased variance, as ``nn.LayerNorm`` does (Ba et al., 2016, eq. 4).
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


ACTIVATION_MODULES = {"relu": nn.ReLU, "gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh")}


class FeedForward(nn.Module):
    """A per-position MLP, 4x wider inside ("Attention Is All You Need", section 3.3).

    ``activation`` "gelu" swaps ReLU for GELU, x * Phi(x) (Hendrycks & Gimpel 2016); "gelu_tanh" for
    its tanh approximation, which is what GPT-2's checkpoints were trained with.
    """

    def __init__(self, n_embd: int, dropout: float, activation: str = "relu") -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd),
            ACTIVATION_MODULES[activation](),
            nn.Linear(4 * n_embd, n_embd),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FastFeedForward(FeedForward):
    """``FeedForward`` with the same parameters: byte-mask dropout when training on CPU, and
    one-token decoding through ``matvec`` (see there)."""

    def __init__(self, n_embd: int, dropout: float, activation: str = "relu") -> None:
        super().__init__(n_embd, dropout, activation)
        self._prepared = matvec.PreparedWeights()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expand, act, project, dropout = self.net
        if self.training and dropout.p > 0 and x.device.type == "cpu":
            # As in FusedMultiHeadAttention: bernoulli_ masks cost ~7% of a bf16 step on CPU.
            return byte_dropout(project(act(expand(x))), dropout.p)
        if not matvec.applies(x, expand.weight):
            return self.net(x)
        hidden = act(matvec.linear(x, expand.weight, expand.bias, self._prepared, "expand"))
        # no dropout call: training on CPU with p > 0 returned above, so here it is the identity
        return matvec.linear(hidden, project.weight, project.bias, self._prepared, "project")


class SwiGLUFeedForward(nn.Module):
    """FFN_SwiGLU(x) = (Swish(x W) * x V) W2 (Shazeer 2020, "GLU Variants Improve Transformer", eq. 6).

    Three matrices instead of two, so the hidden width is 2/3 of the usual 4 * n_embd (as in the
    paper's section 2, d_ff 3072 -> 2048): the same parameters and FLOPs as the ReLU FeedForward.
    It is rounded up to a multiple of 8 for friendlier matmul shapes. No biases, as in the paper.
    """

    def __init__(self, n_embd: int, dropout: float) -> None:
        super().__init__()
        hidden = swiglu_hidden(n_embd)
        self.gate = nn.Linear(n_embd, hidden, bias=False)  # W, through Swish (= SiLU)
        self.up = nn.Linear(n_embd, hidden, bias=False)  # V, the linear half of the gated unit
        self.proj = nn.Linear(hidden, n_embd, bias=False)  # W2
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.silu(self.gate(x)) * self.up(x)))


def swiglu_hidden(n_embd: int) -> int:
    return 8 * math.ceil(2 * 4 * n_embd / 3 / 8)


def make_feed_forward(config: ModelConfig) -> nn.Module:
    if config.activation == "swiglu":  # one module for both attention paths
        return SwiGLUFeedForward(config.n_embd, config.dropout)
    return (FastFeedForward if config.attention == "fused" else FeedForward)(config.n_embd, config.dropout,
                                                                             config.activation)


def make_norm(kind: str, dim: int) -> nn.Module:
    if kind == "rms":
        return RMSNorm(dim)
    return LayerNorm1d(dim) if kind == "scratch" else nn.LayerNorm(dim)


class Block(nn.Module):
    """Communication (attention) then computation (feed-forward), each on a residual path.

    Pre-norm: LayerNorm is applied before each sublayer, not after, which keeps the
    residual stream an identity path and trains stably without warmup tricks.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        fast = config.attention == "fused"
        attention = FusedMultiHeadAttention if fast else MultiHeadAttention
        self.sa = attention(config.n_embd, config.n_head, config.block_size, config.dropout,
                            rope=config.position == "rope", qk_norm=config.qk_norm, qkv_bias=config.qkv_bias)
        self.ffwd = make_feed_forward(config)
        self.ln1 = make_norm(config.norm, config.n_embd)
        self.ln2 = make_norm(config.norm, config.n_embd)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                packing: Packing | None = None) -> torch.Tensor:
        attended = self.sa(self.ln1(x), packing=packing) if cache is None else self.sa(self.ln1(x), cache, layer)
        x = x + attended
        x = x + self.ffwd(self.ln2(x))
        return x


class GPT(LanguageModel):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.block_size = config.block_size
        self.token_embedding_table = nn.Embedding(config.vocab_size, config.n_embd)
        # With RoPE, positions enter inside attention (attention.RotaryEmbedding) instead. With a
        # position scheme (abacus, coupled) the same table is read at ids the task computes from the
        # digits' places (tasks/position_schemes.py), passed in as position_ids; block_size rows.
        self.position_embedding_table = (nn.Embedding(config.block_size, config.n_embd)
                                         if config.position != "rope" else None)
        self.ids_from_task = config.position in POSITION_SCHEMES
        self.blocks = nn.Sequential(*[Block(config) for _ in range(config.n_layer)])
        self.ln_f = make_norm(config.norm, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=config.head_bias)
        self.apply(self._init_weights)
        if config.tie_weights:
            # One (vocab, n_embd) matrix reads tokens in and scores them out (Press & Wolf 2017):
            # fewer parameters, and every output row is trained even for rare input tokens.
            # Checkpoints store the shared tensor under both names (checkpoint._cpu_contiguous).
            self.lm_head.weight = self.token_embedding_table.weight

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # N(0, 0.02) weights and zero biases: small logits at init, so the first loss is
        # close to ln(vocab_size), the loss of a uniform guess.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> GPT:
        decode.forget(self)  # .to(), .half(), .cuda(): the decoding copies would keep the old weights alive
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())  # deepcopy and pickle: the decode plan is rebuilt, not copied
        state.pop("_decode_plan", None)
        return state

    @property
    def supports_kv_cache(self) -> bool:
        return self.config.attention == "fused"

    def new_kv_cache(self, batch: int) -> KVCache:
        c = self.config
        weight = self.lm_head.weight
        return KVCache(c.n_layer, batch, c.n_head, c.block_size, c.head_size, weight.device, weight.dtype)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                loss_mask: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                positions: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position of ``idx`` (B, T); with ``kv_cache``, ``idx`` continues the cached tokens.

        ``positions`` (B, T): packed rows, several sequences per row (``attention.Packing``); each
        token sits at its given position and attends only to the earlier tokens of its own sequence.
        ``position_ids`` (B, T): the rows of the position table to add, for a model whose
        ``position`` is a scheme (abacus, coupled), which must be given them; with ``kv_cache``,
        the ids of the new tokens only.
        """
        self._check_position_ids(idx, position_ids)
        if targets is None and positions is None and position_ids is None and decode.applies(self, idx, kv_cache):
            plan = decode.plan_for(self, DECODE_CLASSES)  # one decoded token on CPU: the flat loop (models/decode.py)
            if plan is not None:
                return plan.step(idx, kv_cache), None
        logits = self.lm_head(self.features(idx, kv_cache, positions, position_ids))  # (B, T, vocab)
        loss = None if targets is None else language_model_loss(logits, targets, loss_mask)
        return logits, loss

    def _check_position_ids(self, idx: torch.Tensor, position_ids: torch.Tensor | None) -> None:
        if not self.ids_from_task:
            if position_ids is not None:
                raise ValueError(f"position_ids are for --position {' or '.join(POSITION_SCHEMES)}; this model's "
                                 f"is {self.config.position}")
            return
        if position_ids is None:
            raise ConfigError(f"this model's position ids (--position {self.config.position}) come from its "
                              "arithmetic problems: ask it with quill calc or quill task eval")
        if position_ids.shape != idx.shape:
            raise ValueError(f"position_ids {tuple(position_ids.shape)} must have the shape of idx {tuple(idx.shape)}")

    def features(self, idx: torch.Tensor, kv_cache: KVCache | None = None,
                 positions: torch.Tensor | None = None, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The final normalized hidden state of every position (B, T, n_embd): what lm_head reads.

        Reward and value heads (quillgpt.posttrain) read the same features.
        """
        B, T = idx.shape
        start = kv_cache.length if kv_cache is not None else 0
        if start + T > self.block_size:
            raise ConfigError(f"sequence of {start + T} tokens is longer than block_size {self.block_size}: "
                              "crop the context to the last block_size tokens")
        packing = None
        if positions is not None:  # several sequences per row, each from position 0
            if kv_cache is not None:
                raise ValueError("packed rows (positions) are for training and scoring, not for a KV cache")
            if positions.shape != idx.shape:
                raise ValueError(f"positions {tuple(positions.shape)} must have the shape of idx {tuple(idx.shape)}")
            packing = Packing.from_positions(positions)
        tok_emb = self.token_embedding_table(idx)  # (B, T, C)
        x = tok_emb
        if position_ids is not None:  # a position scheme: the ids the task gave, cached or not (B, T, C)
            low, high = (int(v) for v in torch.aminmax(position_ids))
            if low < 0 or high >= self.block_size:
                raise ValueError(f"position ids run from 0 to {self.block_size - 1} (block_size rows), "
                                 f"got {low}..{high}")
            x = x + self.position_embedding_table(position_ids)
        elif self.position_embedding_table is not None:  # learned absolute positions (None with RoPE)
            if packing is not None:  # each token at its position in its own sequence: (B, T, C)
                x = x + self.position_embedding_table(positions)
            elif kv_cache is not None and kv_cache.ragged:  # each row continues at its own position: (B, T, C)
                x = x + self.position_embedding_table(kv_cache.positions(T))
            else:
                x = x + self.position_embedding_table(torch.arange(start, start + T, device=idx.device))  # (T, C)
        if packing is not None:
            for block in self.blocks:
                x = block(x, packing=packing)
        elif kv_cache is None:
            x = self.blocks(x)
        else:
            for layer, block in enumerate(self.blocks):
                x = block(x, kv_cache, layer)
            kv_cache.advance(T)
        return self.ln_f(x)


# Every module class a GPT is built from. The decode loop (models/decode.py) reads their weights and
# inlines their forwards, so it runs only for a model made of exactly these: a subclass with a forward
# of its own, or a parametrized module (which swaps its class), keeps it out.
DECODE_CLASSES = frozenset({GPT, Block, FastFeedForward, SwiGLUFeedForward, LayerNorm1d,
                            FusedMultiHeadAttention, Head, RotaryEmbedding, RMSNorm, ByteDropout,
                            nn.Linear, nn.Embedding, nn.LayerNorm, nn.Dropout, nn.ReLU, nn.GELU,
                            nn.Sequential, nn.ModuleList})
