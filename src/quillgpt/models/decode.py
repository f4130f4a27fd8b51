"""One new token through a fused GPT with a KV cache, on CPU: ``GPT.forward``'s arithmetic as one flat loop.

Why a second path: a decoded token reads every weight once, so its floor is the memory
bandwidth (43 MB of fp32 weights for seed-gpt: ~1.7 ms at the ~25 GB/s the 2-core EPYC
streams). Through the modules, the small ops around those products (module calls, per-matrix
layout checks, bias adds, reshapes: ~40 per layer) cost nearly as much again. A ``DecodePlan``
holds each weight already laid out for ``matvec``'s split product, checks all of them for changes
once per token, adds biases inside the products and calls no module but the norms, the
activation, QK-norm and RoPE, which it shares with the module path.

It runs only where the module path would give the same logits (tests/test_decode.py checks every
norm, position, activation and bias option, and that a weight changed in place is seen): one row,
one new token, a cache that is not ragged, an fp32 model on CPU in eval mode without autograd,
stock blocks, no parametrized weight, no forward hook. Anything else goes through the modules.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as torch_module

from quillgpt.models import matvec
from quillgpt.models.attention import FusedMultiHeadAttention, KVCache


class Matrix:
    """One ``nn.Linear``-style weight (and bias) prepared for the one-row product."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, parts: int,
                 prepared: matvec.PreparedWeights, name: str) -> None:
        self.split = weight.size(0) % parts == 0
        if self.split:
            self.slices = matvec.operand(weight, parts, prepared, name)
            self.bias = matvec.split_bias(bias, parts)
        else:  # e.g. a 65-token head on 2 threads: the ordinary product (small, so it matters little)
            self.weight, self.bias = weight, bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(1, in) -> (1, out)."""
        if self.split:
            return matvec.product(x, self.slices, self.bias)
        return F.linear(x, self.weight, self.bias)


@dataclass
class Layer:
    """What one ``Block`` reads for a decoded token."""

    ln1: nn.Module
    ln2: nn.Module
    attention: FusedMultiHeadAttention  # for its QK-norm and RoPE
    qkv: Matrix
    proj: Matrix
    ffn: list[Matrix]  # [expand, project] or, for SwiGLU, [gate, up, project]
    activation: nn.Module | None  # None: SwiGLU


class DecodePlan:
    """The prepared weights of one GPT, and the (tensor, version, address) of every parameter
    they came from, so a plan whose weights changed (optimizer step, load, ``.to``) is rebuilt."""

    def __init__(self, model: nn.Module) -> None:
        self.parts = torch.get_num_threads()
        self.modules = list(model.modules())
        self.sources = [(module._parameters, name, tensor, tensor._version, tensor.data_ptr())
                        for module in model.modules() for name, tensor in module._parameters.items()
                        if tensor is not None]
        self.prepared = matvec.PreparedWeights()  # copies no module keeps: SwiGLU's and the head's
        self.layers = [_layer(block, self.parts, self.prepared, f"{index}.")
                       for index, block in enumerate(model.blocks)]
        c = model.config
        self.n_embd, self.n_head = c.n_embd, c.n_head
        self.token_embedding = model.token_embedding_table.weight
        table = model.position_embedding_table
        self.position_embedding = None if table is None else table.weight
        self.ln_f = model.ln_f
        head = model.lm_head
        self.head = Matrix(head.weight, head.bias, self.parts, self.prepared, "lm_head")

    def is_current(self) -> bool:
        """Are the weights still the ones the plan was built from, unchanged, in the same place?"""
        if torch.get_num_threads() != self.parts or _hooked(self.modules):
            return False
        for params, name, tensor, version, address in self.sources:
            now = params.get(name)
            if now is not tensor or now._version != version or now.data_ptr() != address:
                return False
        return True

    def step(self, token: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits (1, 1, vocab) for ``token`` (1, 1) at position ``cache.length``; stores its keys and values."""
        position = cache.length
        C, nh = self.n_embd, self.n_head
        x = self.token_embedding[int(token)].view(1, C)  # a row of the table: never written to, only read
        if self.position_embedding is not None:
            x = x + self.position_embedding[position]
        for index, layer in enumerate(self.layers):
            q, k, v = layer.qkv(layer.ln1(x)).view(3, 1, nh, 1, C // nh)  # each (B=1, nh, T=1, hs)
            q, k = layer.attention.qk_norm(q, k)
            if layer.attention.rope is not None:
                q, k = layer.attention.rope(q, position), layer.attention.rope(k, position)
            keys, values = cache.update(index, k, v)
            # one query sees every cached key and itself: no mask (KVCache.attention_mask(1))
            y = F.scaled_dot_product_attention(q, keys, values)  # (1, nh, 1, hs): heads side by side in memory
            x = x + layer.proj(y.view(1, C))
            x = x + _feed_forward(layer, layer.ln2(x))
        cache.advance(1)
        return self.head(self.ln_f(x)).view(1, 1, -1)


def _feed_forward(layer: Layer, h: torch.Tensor) -> torch.Tensor:
    if layer.activation is None:  # SwiGLU: (Swish(h W) * h V) W2
        gate, up, project = layer.ffn
        return project(F.silu(gate(h)) * up(h))
    expand, project = layer.ffn
    return project(layer.activation(expand(h)))


def _layer(block: nn.Module, parts: int, own: matvec.PreparedWeights, prefix: str) -> Layer:
    attention, ffwd = block.sa, block.ffwd
    prepared = attention._prepared
    qkv = Matrix(attention.qkv_weight(), attention.qkv_bias(), parts, prepared, "qkv")
    proj = Matrix(attention.proj.weight, attention.proj.bias, parts, prepared, "proj")
    if hasattr(ffwd, "gate"):  # SwiGLUFeedForward, which keeps no prepared copies of its own
        ffn = [Matrix(linear.weight, None, parts, own, prefix + name)
               for name, linear in (("gate", ffwd.gate), ("up", ffwd.up), ("proj", ffwd.proj))]
        activation = None
    else:  # FastFeedForward: Linear, activation, Linear, Dropout (the identity in eval mode)
        expand, activation, project, _ = ffwd.net
        ffn = [Matrix(expand.weight, expand.bias, parts, ffwd._prepared, "expand"),
               Matrix(project.weight, project.bias, parts, ffwd._prepared, "project")]
    return Layer(block.ln1, block.ln2, attention, qkv, proj, ffn, activation)


def applies(model: nn.Module, idx: torch.Tensor, cache: KVCache | None) -> bool:
    """Would ``DecodePlan.step`` give what the modules give for this call?"""
    weight = model.lm_head.weight
    return (cache is not None and not cache.ragged and idx.shape == (1, 1) and cache.length < model.block_size
            and not model.training and not torch.is_grad_enabled() and weight.device.type == "cpu"
            and weight.dtype == torch.float32 and model.config.attention == "fused")


def plan_for(model: nn.Module) -> DecodePlan | None:
    """The model's plan, rebuilt when its weights changed; None where the plan would not compute
    what the modules compute (see ``_supported``)."""
    plan = model.__dict__.get("_decode_plan")
    if plan is not None and plan.is_current():
        return plan
    model.__dict__.pop("_decode_plan", None)
    if not _supported(model):
        return None
    model.__dict__["_decode_plan"] = plan = DecodePlan(model)
    return plan


def _supported(model: nn.Module) -> bool:
    """Is every block the stock one (the plan inlines their forwards), no weight computed at each
    look-up (a parametrization) or made under ``torch.inference_mode`` (no version counter), so a
    prepared copy can follow every weight, and no forward hook anywhere (the plan calls few
    modules, so a hook would silently not run)?"""
    from quillgpt.models.gpt import Block, FastFeedForward, SwiGLUFeedForward  # gpt.py imports this module

    modules = list(model.modules())
    return (all(type(block) is Block and type(block.sa) is FusedMultiHeadAttention
                and type(block.ffwd) in (FastFeedForward, SwiGLUFeedForward) for block in model.blocks)
            and not any(hasattr(module, "parametrizations") for module in modules) and not _hooked(modules)
            and not any(param.is_inference() for param in model.parameters()))  # (no version to follow)


def _hooked(modules: list[nn.Module]) -> bool:
    return bool(torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks
                or any(module._forward_hooks or module._forward_pre_hooks for module in modules))
