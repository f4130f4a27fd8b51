"""Muon's orthogonalization, the hand-written AdamW half, and training/resuming with Muon."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from quillgpt.checkpoint import optimizer_from_checkpoint, optimizer_to_checkpoint
from quillgpt.config import preset
from quillgpt.data import TokenDataset
from quillgpt.optim import MuonAdamW, orthogonalize
from quillgpt.train import Trainer


def test_orthogonalize_pushes_singular_values_towards_one() -> None:
    torch.manual_seed(0)
    for shape in [(32, 128), (128, 32), (48, 64)]:
        u, _, v = torch.linalg.svd(torch.randn(*shape), full_matrices=False)
        g = u @ torch.diag(torch.logspace(-1, 1, min(shape))) @ v  # singular values from 0.1 to 10
        s = torch.linalg.svdvals(orthogonalize(g))
        assert s.min() > 0.6 and s.max() < 1.25, shape
    batch = torch.randn(3, 16, 48)
    assert torch.allclose(orthogonalize(batch)[1], orthogonalize(batch[1]), atol=1e-5)


def test_adamw_groups_match_torch_adamw() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(8, 4, requires_grad=True), torch.randn(4, requires_grad=True)
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    ours = MuonAdamW([{"params": [a], "weight_decay": 0.1}, {"params": [b]}], lr=1e-2, betas=(0.9, 0.99))
    ref = torch.optim.AdamW([{"params": [a2], "weight_decay": 0.1}, {"params": [b2], "weight_decay": 0.0}],
                            lr=1e-2, betas=(0.9, 0.99))
    for step in range(4):
        x = torch.randn(4) * (step + 1)
        for opt, (p, q) in ((ours, (a, b)), (ref, (a2, b2))):
            opt.zero_grad()
            ((p @ x).sin().sum() + (q * x).sum()).backward()
            opt.step()
    assert torch.allclose(a, a2, atol=1e-6) and torch.allclose(b, b2, atol=1e-6)


def muon_config(**train):
    config = preset("tiny")
    config.train.optimizer = "muon"
    for key, value in train.items():
        setattr(config.train, key, value)
    return config


def test_muon_trains_and_puts_only_block_matrices_on_muon(tmp_path: Path, dataset_dir: Path) -> None:
    trainer = Trainer(muon_config(max_iters=40, eval_interval=40), TokenDataset(dataset_dir), tmp_path / "r",
                      progress=False)
    muon = [g for g in trainer.optimizer.param_groups if g["muon"]][0]["params"]
    block_matrices = [p for p in trainer.model.blocks.parameters() if p.dim() == 2]
    assert {id(p) for p in muon} == {id(p) for p in block_matrices}
    trainer.train()
    evals = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
             if '"eval"' in line]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.3


def test_muon_state_survives_a_checkpoint_round_trip(tmp_path: Path, dataset_dir: Path) -> None:
    ds = TokenDataset(dataset_dir)
    one = Trainer(muon_config(), ds, tmp_path / "a", progress=False)
    for _ in range(3):
        one.train_step()
    two = Trainer(muon_config(), ds, tmp_path / "b", progress=False)
    two.model.load_state_dict(one.model.state_dict())
    tensors, meta = optimizer_to_checkpoint(one.optimizer)
    copies = {name: tensor.clone() for name, tensor in tensors.items()}  # as if read back from the file
    optimizer_from_checkpoint(two.optimizer, copies, json.loads(json.dumps(meta)))
    two.train_batches.load_state_dict(one.train_batches.state_dict())
    two.step = one.step
    one.train_step()
    two.train_step()
    for p, q in zip(one.model.parameters(), two.model.parameters(), strict=True):
        assert torch.equal(p, q)
