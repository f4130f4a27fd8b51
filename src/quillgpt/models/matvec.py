"""Fast path for decoding one token at a time on CPU: ``y = x @ W.T + b`` with a single row ``x``.

With the KV cache, each new token multiplies one row vector by every weight matrix, so a
decoding step is bound by *reading the weights* (43 MB in fp32 for seed-gpt, more than
the L3 cache). For an fp32 (1, in) x (in, out) product PyTorch calls a BLAS
matrix-vector kernel that runs on one core; on the 2-core EPYC we measure it reading an
``nn.Linear`` weight at ~10 GB/s, a third of what both cores can stream.

The fix: cut the output features into one slice per thread and run the slices as one
batched matmul, which PyTorch parallelises over the batch. Which layout of the slices
is fastest depends on the shape (measured here, 2 threads, fp32):

* out >= in (qkv, fc1, proj): a contiguous (threads, in, out / threads) copy of the weight,
  2.2-3x faster than ``F.linear``; the copy is kept in a ``PreparedWeights`` cache and
  rebuilt when the weight changes;
* out < in (fc2): the weight itself viewed as (threads, out / threads, in), no copy, 1.5x.

Only fp32 takes this path (bf16 products already go to a parallel oneDNN kernel), and only
without autograd, on CPU, with one row. ``models/decode.py`` runs a whole decoded token on
these products; ``quill bench sample`` measures the effect; tests/test_matvec.py checks them
against ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class PreparedWeights:
    """Weight copies laid out for the decode kernel, one per name, rebuilt when the weight changes.

    Every in-place update (optimizer step, load_state_dict) bumps a tensor's ``_version``
    and ``.to()`` changes its storage, so (version, data_ptr, threads) says when a copy is stale.
    """

    def __init__(self) -> None:
        self._copies: dict[str, tuple[tuple[int, ...], torch.Tensor]] = {}

    def split_columns(self, name: str, weight: torch.Tensor, parts: int) -> torch.Tensor:
        """``weight`` (out, in) as a contiguous (parts, in, out / parts): slice p holds outputs p*out/parts..."""
        key = (weight._version, weight.data_ptr(), parts)
        entry = self._copies.get(name)
        if entry is None or entry[0] != key:
            out, inp = weight.shape
            entry = (key, weight.detach().view(parts, out // parts, inp).transpose(1, 2).contiguous())
            self._copies[name] = entry
        return entry[1]

    def clear(self) -> None:
        self._copies.clear()


def applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Is this a one-row fp32 CPU product without autograd that the fast path can split?"""
    parts = torch.get_num_threads()
    return (not torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype == torch.float32
            and weight.dtype == torch.float32 and weight.is_contiguous() and x.numel() == x.size(-1) and parts > 1
            and weight.size(0) % parts == 0 and not weight.is_inference())  # (no version to follow)


def operand(weight: torch.Tensor, parts: int, prepared: PreparedWeights, name: str) -> torch.Tensor:
    """``weight`` (out, in) as the (parts, in, out / parts) right-hand side of the split product.

    out >= in: a contiguous copy, kept in ``prepared``; out < in: a view of the weight itself.
    """
    if weight.size(0) >= weight.size(1):
        return prepared.split_columns(name, weight, parts)
    out, inp = weight.shape
    return weight.view(parts, out // parts, inp).transpose(1, 2)  # a view: no copy


def split_bias(bias: torch.Tensor | None, parts: int) -> torch.Tensor | None:
    """A bias (out,) as (parts, 1, out / parts), the shape of the split product's output."""
    return None if bias is None else bias.view(parts, 1, -1)


def product(row: torch.Tensor, slices: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """One row (in,) or (1, in) times ``operand``'s slices, plus a ``split_bias``: (1, out).

    ``baddbmm`` adds the bias inside the product, one op instead of two.
    """
    parts, inp, _ = slices.shape
    lhs = row.reshape(1, 1, inp).expand(parts, 1, inp)
    y = torch.bmm(lhs, slices) if bias is None else torch.baddbmm(bias, lhs, slices)
    return y.view(1, -1)  # slice p -> outputs p*out/parts ...


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, prepared: PreparedWeights,
           name: str) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, through the split matrix-vector kernel when ``applies``."""
    if not applies(x, weight):
        return F.linear(x, weight, bias)
    parts = torch.get_num_threads()
    y = product(x, operand(weight, parts, prepared, name), split_bias(bias, parts))
    return y.view(*x.shape[:-1], weight.size(0))
