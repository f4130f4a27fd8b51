"""Quill's GPT against an independent reference, as llm.c's test_gpt2 checks its GPT-2 against PyTorch.

tests/test_attention.py checks the classic and fused paths against each other, so a bug they share
(init, loss, LayerNorm epsilon, attention scale, residual wiring) would pass there. Here a
nanoGPT-shaped GPT written from the lecture, in plain torch and nothing of quill's models, gets a
tiny quill GPT's weights one to one and must give the same logits, loss and every gradient.
The pinned losses at the end catch what copying weights cannot: init, data order, optimizer order.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quillgpt.config import ModelConfig, preset
from quillgpt.data import TokenDataset
from quillgpt.models import build_model
from quillgpt.train import Trainer

VOCAB, BLOCK, N_LAYER, N_HEAD, N_EMBD = 37, 12, 2, 4, 32
TOL = 1e-5


class ReferenceBlock(nn.Module):
    """x + attn(ln1(x)), then x + mlp(ln2(x)): pre-norm, one qkv matrix, ReLU MLP 4x wide."""

    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln1, self.ln2 = nn.LayerNorm(n_embd, eps=1e-5), nn.LayerNorm(n_embd, eps=1e-5)
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=False)  # rows: q of every head, then k, then v
        self.proj = nn.Linear(n_embd, n_embd)
        self.fc, self.out = nn.Linear(n_embd, 4 * n_embd), nn.Linear(4 * n_embd, n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in self.qkv(self.ln1(x)).split(C, dim=-1))
        att = q @ k.transpose(-2, -1) / math.sqrt(C // self.n_head)
        att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(B, T, C))
        return x + self.out(F.relu(self.fc(self.ln2(x))))


class ReferenceGPT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(VOCAB, N_EMBD), nn.Embedding(BLOCK, N_EMBD)
        self.blocks = nn.ModuleList([ReferenceBlock(N_EMBD, N_HEAD) for _ in range(N_LAYER)])
        self.ln_f = nn.LayerNorm(N_EMBD, eps=1e-5)
        self.lm_head = nn.Linear(N_EMBD, VOCAB)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1)))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def reference_tensor(ref: ReferenceGPT, name: str, grad: bool = False) -> torch.Tensor:
    """The part of the reference holding quill's parameter ``name`` (or its gradient).

    Quill keeps the lecture's layout, one key/query/value Linear per head; the reference has one
    (3C, C) qkv matrix, so head h's query is rows h*hs:(h+1)*hs of its first C rows, and so on.
    """
    top = {"token_embedding_table.weight": ref.wte.weight, "position_embedding_table.weight": ref.wpe.weight,
           "ln_f.weight": ref.ln_f.weight, "ln_f.bias": ref.ln_f.bias,
           "lm_head.weight": ref.lm_head.weight, "lm_head.bias": ref.lm_head.bias}
    if name in top:
        tensor = top[name]
        return tensor.grad if grad else tensor
    _, layer, *rest = name.split(".")
    block = ref.blocks[int(layer)]
    if rest[:2] == ["sa", "heads"]:  # sa.heads.<h>.<query|key|value>.weight
        head, which = int(rest[2]), ["query", "key", "value"].index(rest[3])
        hs = N_EMBD // N_HEAD
        start = which * N_EMBD + head * hs
        tensor = block.qkv.weight.grad if grad else block.qkv.weight
        return tensor[start:start + hs]
    module = {"ln1": block.ln1, "ln2": block.ln2, "sa.proj": block.proj,
              "ffwd.net.0": block.fc, "ffwd.net.2": block.out}[".".join(rest[:-1])]
    tensor = getattr(module, rest[-1])
    return tensor.grad if grad else tensor


def quill_and_reference(attention: str, norm: str) -> tuple[nn.Module, ReferenceGPT]:
    torch.manual_seed(0)
    quill = build_model(ModelConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=N_LAYER, n_head=N_HEAD,
                                    n_embd=N_EMBD, dropout=0.0, attention=attention, norm=norm))
    with torch.no_grad():  # LayerNorm gains/biases away from 1/0, so a swapped pair cannot hide
        for name, p in quill.named_parameters():
            if name.endswith("bias") or ".ln" in name or name.startswith("ln_f"):
                p.add_(0.1 * torch.randn_like(p))
    ref = ReferenceGPT()
    copied = 0
    with torch.no_grad():
        for name, p in quill.named_parameters():
            reference_tensor(ref, name).copy_(p)
            copied += p.numel()
    assert copied == sum(p.numel() for p in ref.parameters())  # every reference weight came from quill
    return quill, ref


@pytest.mark.parametrize("norm", ["torch", "scratch"])
@pytest.mark.parametrize("attention", ["classic", "fused"])
def test_quill_gpt_matches_the_reference(attention: str, norm: str) -> None:
    quill, ref = quill_and_reference(attention, norm)
    quill.train(), ref.train()  # dropout 0: train mode must compute the same thing
    gen = torch.Generator().manual_seed(1)
    idx = torch.randint(0, VOCAB, (3, BLOCK), generator=gen)
    targets = torch.randint(0, VOCAB, (3, BLOCK), generator=gen)
    mask = torch.rand(3, BLOCK, generator=gen) < 0.5

    logits, loss = quill(idx, targets)
    ref_logits = ref(idx)
    ref_loss = F.cross_entropy(ref_logits.view(-1, VOCAB), targets.view(-1))
    assert (logits - ref_logits).abs().max().item() < TOL
    assert abs(loss.item() - ref_loss.item()) < TOL

    # the loss mask: the mean cross-entropy over the masked-in positions only (SFT's answer tokens)
    _, masked = quill(idx, targets, loss_mask=mask)
    ref_masked = F.cross_entropy(ref_logits[mask], targets[mask])
    assert abs(masked.item() - ref_masked.item()) < TOL

    (loss + masked).backward()
    (ref_loss + ref_masked).backward()
    for name, p in quill.named_parameters():
        diff = (p.grad - reference_tensor(ref, name, grad=True)).abs().max().item()
        assert diff < TOL, f"{name}: gradient differs by {diff:.2e}"


def test_init_is_the_lectures() -> None:
    """N(0, 0.02) weights, zero biases, LayerNorm at identity: the first loss is about ln(vocab)."""
    torch.manual_seed(0)
    quill = build_model(ModelConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=N_LAYER, n_head=N_HEAD,
                                    n_embd=128, dropout=0.0))
    for name, p in quill.named_parameters():
        if ".ln" in name or name.startswith("ln_f"):
            expected = torch.ones_like(p) if name.endswith("weight") else torch.zeros_like(p)
            assert torch.equal(p, expected), name
        elif name.endswith("bias"):
            assert not p.any(), name
        else:  # at least 1,536 draws each: the sample std is within a few percent of 0.02
            assert abs(p.std().item() - 0.02) < 0.002 and abs(p.mean().item()) < 0.002, name
    idx = torch.randint(0, VOCAB, (8, BLOCK))
    _, loss = quill(idx, torch.randint(0, VOCAB, (8, BLOCK)))
    # logits of std 0.02 * sqrt(n_embd) ~ 0.23 add ~0.03; an init 10x too wide would add ~2.5
    assert abs(loss.item() - math.log(VOCAB)) < 0.1


# The tiny preset's first 10 training losses on CPU in float32 on conftest's generated text.
# Produced once by the test below with print(losses) (torch 2.13 CPU, OMP_NUM_THREADS=1, 2026-11-30), rounded
# to 1e-6; OMP_NUM_THREADS=2 gives the same to 1e-6.
# A change in them means the init, the data (tokenizer, batch sampler, seed) or the optimizer
# (its groups, schedule, clipping, the order of its updates) changed: if that was meant, re-record them.
TINY_LOSSES = [3.581396, 3.531771, 3.485132, 3.433638, 3.382766,
               3.346431, 3.255177, 3.157593, 3.118858, 3.078712]


def test_tiny_preset_first_losses_are_pinned(tmp_path: Path, dataset_dir: Path) -> None:
    config = preset("tiny")
    config.train.device, config.train.dtype, config.train.compile = "cpu", "float32", False
    trainer = Trainer(config, TokenDataset(dataset_dir), tmp_path / "run", progress=False)
    losses = [trainer.train_step().item() for _ in range(10)]
    assert losses == pytest.approx(TINY_LOSSES, abs=1e-4)
