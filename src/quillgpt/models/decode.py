"""One new token through a fused GPT with a KV cache, on CPU: ``GPT.forward``'s arithmetic as one flat loop.

Why a second path: a decoded token reads every weight once, so its floor is the memory
bandwidth (43 MB of fp32 weights for seed-gpt: ~1.7 ms at the ~25 GB/s the 2-core EPYC
streams). Through the modules, the small ops around those products (module calls, per-matrix
layout checks, bias adds, reshapes: ~40 per layer) add more than half as much again. A
``DecodePlan`` holds each weight already laid out for ``matvec``'s split product, adds biases
inside the products and calls no module but the norms, the activation, QK-norm and RoPE, which
it shares with the module path. Once per token a ``ModelState`` checks that the model is still
the one the plan was made from (~80 us).

It runs only where the module path would give the same logits (tests/test_decode.py checks every
norm, position, activation and bias option, and that changed weights and replaced modules are
seen): one row, one new token, a cache of that one row, an fp32 model on CPU in eval mode
without autograd, built only of quill's own module classes, no forward hook, no weight made
under inference_mode. Anything else goes through the modules.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as torch_module

from quillgpt.models import matvec
from quillgpt.models.attention import FusedMultiHeadAttention, KVCache

_VERSION = operator.attrgetter("_version")
_TRAINING = operator.attrgetter("training")
_FORWARD_HOOKS = operator.attrgetter("_forward_hooks")
_FORWARD_PRE_HOOKS = operator.attrgetter("_forward_pre_hooks")


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


class ModelState:
    """What a plan, or the verdict that none applies, was made from: every parent-to-child module
    link, every parameter's identity, version and storage, the thread count, whether any forward
    hook is set and any module is in training mode. ``unchanged`` says whether all of it still
    holds: a replaced submodule or parameter, an in-place update (optimizer step, load), new
    storage (``.to``), a new hook or a module switched to training all show."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = list(model.modules())
        links = [(module._modules, name, child) for module in self.modules
                 for name, child in module._modules.items()]
        params = [(module._parameters, name, tensor) for module in self.modules
                  for name, tensor in module._parameters.items() if tensor is not None]
        self._link_dicts, self._link_names, self._children = _columns(links, 3)
        self._param_dicts, self._param_names, self.tensors = _columns(params, 3)
        # a tensor made under torch.inference_mode has no version; such a model gets no plan
        self.versioned = not any(tensor.is_inference() for tensor in self.tensors)
        self._versions = self._read_versions()
        self._addresses = self._read_addresses()
        self.threads = torch.get_num_threads()
        self.hooked = _hooked(self.modules)
        self.training = _training(self.modules)

    def _read_versions(self) -> list[int] | None:
        return list(map(_VERSION, self.tensors)) if self.versioned else None

    def _read_addresses(self) -> list[int]:
        return list(map(torch.Tensor.data_ptr, self.tensors))

    def unchanged(self) -> bool:
        # map() over C functions: ~80 us for seed-gpt's 269 links, 174 parameters and 270 modules
        return (torch.get_num_threads() == self.threads
                and all(map(operator.is_, map(dict.get, self._link_dicts, self._link_names), self._children))
                and all(map(operator.is_, map(dict.get, self._param_dicts, self._param_names), self.tensors))
                and self._read_versions() == self._versions and self._read_addresses() == self._addresses
                and _hooked(self.modules) == self.hooked and _training(self.modules) == self.training)


def _columns(rows: list[tuple], width: int) -> list[tuple]:
    return list(zip(*rows, strict=True)) if rows else [()] * width


def _training(modules: list[nn.Module]) -> bool:
    return any(map(_TRAINING, modules))


class DecodePlan:
    """The prepared weights of one GPT (see the module docstring); valid while its ``ModelState`` is unchanged."""

    def __init__(self, model: nn.Module) -> None:
        self.parts = torch.get_num_threads()
        self.prepared = matvec.PreparedWeights()  # copies no module keeps: SwiGLU's and the head's
        self.layers = [_layer(block, self.parts, self.prepared, f"{index}.")
                       for index, block in enumerate(model.blocks)]
        c = model.config
        self.n_embd, self.n_head, self.vocab_size = c.n_embd, c.n_head, c.vocab_size
        self.token_embedding = model.token_embedding_table.weight
        table = model.position_embedding_table
        self.position_embedding = None if table is None else table.weight
        self.ln_f = model.ln_f
        head = model.lm_head
        self.head = Matrix(head.weight, head.bias, self.parts, self.prepared, "lm_head")

    def step(self, token: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits (1, 1, vocab) for ``token`` (1, 1) at position ``cache.length``; stores its keys and values."""
        position = cache.length
        C, nh = self.n_embd, self.n_head
        token_id = int(token)
        if not 0 <= token_id < self.vocab_size:  # (plain indexing would take -1 as the last row)
            raise IndexError(f"token id {token_id} is outside the vocabulary 0..{self.vocab_size - 1}")
        x = self.token_embedding[token_id].view(1, C)  # a row of the table: never written to, only read
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
    """Could ``DecodePlan.step`` stand in for the modules on this call? (``plan_for`` checks the rest.)"""
    weight = model.lm_head.weight
    # a ragged cache of one row (the server with one request) is the plain cache with a length tensor
    return (cache is not None and (not cache.ragged or cache.batch == 1) and idx.shape == (1, 1)
            and cache.length < model.block_size
            and not model.training and not torch.is_grad_enabled() and weight.device.type == "cpu"
            and weight.dtype == torch.float32)


def plan_for(model: nn.Module, stock: frozenset[type]) -> DecodePlan | None:
    """The model's plan, or None where it would not compute what the modules compute (``_supported``;
    ``stock``: the module classes whose forwards the plan inlines, from gpt.py).

    Either answer is kept with the ``ModelState`` it was made from and reused while that state is
    unchanged, so a model without a plan does not pay for the check on every token either.
    """
    kept = model.__dict__.get("_decode_plan")
    if kept is not None and kept[0].unchanged():
        return kept[1]
    state = ModelState(model)
    plan = DecodePlan(model) if _supported(state, stock) else None
    model.__dict__["_decode_plan"] = (state, plan)
    return plan


def kept_plan(model: nn.Module) -> DecodePlan | None:
    """The plan kept from the last one-token call that could use one (None: none kept, or none applies)."""
    kept = model.__dict__.get("_decode_plan")
    return None if kept is None else kept[1]


def forget(model: nn.Module) -> None:
    """Drop the plan and every prepared copy (the modules' too): after ``.to()``/``.half()`` they
    would only hold the old weights' memory."""
    model.__dict__.pop("_decode_plan", None)
    for module in model.modules():
        prepared = module.__dict__.get("_prepared")
        if isinstance(prepared, matvec.PreparedWeights):
            prepared.clear()


def _supported(state: ModelState, stock: frozenset[type]) -> bool:
    """Is every module of exactly a ``stock`` class (the plan reads their weights and inlines their
    forwards, so a subclass's own forward, a wrapper or a parametrization, which swaps the class,
    would be skipped), is no forward hook set (it would silently not run), no module training, and
    no weight made under ``torch.inference_mode`` (no version to follow)?"""
    return (state.versioned and not state.hooked and not state.training
            and all(type(module) in stock for module in state.modules))


def _hooked(modules: list[nn.Module]) -> bool:
    return bool(torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks
                or any(map(_FORWARD_HOOKS, modules)) or any(map(_FORWARD_PRE_HOOKS, modules)))

