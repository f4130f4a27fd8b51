"""Sampling: turn next-token logits into text, one token at a time.

``stream`` yields each new token as soon as it is drawn (the CLI prints it at once);
``generate`` collects them. Both run the model in eval mode (no dropout) without
gradients and crop the context to the model's block_size, since position embeddings
exist only for block_size positions.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from quillgpt.errors import SamplingError


def check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise a one-line SamplingError for parameters that make no sense."""
    if max_new_tokens < 0:
        raise SamplingError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise SamplingError(f"temperature must be > 0, got {temperature}: use e.g. 0.8, or --top-k 1 for greedy")
    if top_k is not None and top_k < 1:
        raise SamplingError(f"top_k must be >= 1, got {top_k}: use 1 for greedy, or leave it out")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise SamplingError(f"top_p must be in (0, 1], got {top_p}: e.g. 0.95, or 1 to turn it off")


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """Apply temperature, then keep the top-k tokens, then the nucleus of mass top_p.

    Removed tokens get -inf, so softmax gives them probability zero.
    """
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        # Nucleus sampling (Holtzman et al., 2019): keep the smallest set of most likely
        # tokens whose probabilities add up to at least top_p. A token is dropped when the
        # mass *before* it already reaches top_p, so the most likely token always stays.
        # Stable: among tied tokens the lower id comes first, so the kept set agrees with argmax.
        sorted_logits, order = torch.sort(logits, descending=True, stable=True, dim=-1)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token per row of ``logits`` (B, vocab); returns (B, 1)."""
    probs = F.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


def cache_window(cached: int, block_size: int) -> int:
    """How many of the most recent tokens to feed the model next, given ``cached`` tokens in the cache.

    0 cached: fill the cache with up to block_size tokens. Room left: feed just the newest
    token. Full: the position embeddings are absolute, so the cache cannot slide by one;
    refill it from the newest ``block_size // 2`` tokens (one recompute per block_size // 2
    new tokens). So past block_size the model sees between block_size // 2 and block_size
    tokens of context; without the cache it always sees block_size.
    """
    if cached == 0:
        return block_size
    if cached < block_size:
        return 1
    return max(1, block_size // 2)


@torch.no_grad()
def stream(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None,
           generator: torch.Generator | None = None, use_cache: bool = True) -> Iterator[torch.Tensor]:
    """Yield ``max_new_tokens`` tokens (each (B, 1)) continuing ``idx`` (B, T).

    With ``use_cache`` (and a model that supports it) each step runs the model on the new
    token only, reusing the keys/values of the earlier ones (see ``cache_window``).
    """
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    was_training = model.training
    model.eval()
    cache = model.new_kv_cache(idx.size(0)) if use_cache and getattr(model, "supports_kv_cache", False) else None
    try:
        for _ in range(max_new_tokens):
            if cache is None:
                logits, _ = model(idx[:, -model.block_size:])
            else:
                window = cache_window(cache.length, model.block_size)
                if cache.length == 0 or cache.length >= model.block_size:
                    cache.reset()  # (re)fill from the newest `window` tokens
                logits, _ = model(idx[:, -window:], kv_cache=cache)
            next_token = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)
            idx = torch.cat((idx, next_token), dim=1)
            yield next_token
    finally:
        model.train(was_training)


def generate(model: nn.Module, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None,
             generator: torch.Generator | None = None, use_cache: bool = True) -> torch.Tensor:
    """Return ``idx`` with ``max_new_tokens`` sampled tokens appended (B, T + new)."""
    new = list(stream(model, idx, max_new_tokens, temperature, top_k, top_p, generator, use_cache))
    return torch.cat([idx, *new], dim=1)
