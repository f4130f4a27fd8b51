"""Run by tests/test_distributed.py under torchrun: one DDP gradient step, saved for comparison.

    python -m torch.distributed.run --nproc_per_node=2 tests/ddp_worker.py DATASET OUT_DIR

Each rank saves the weights it started from, the batch it drew and its gradients after
``Trainer.accumulate_gradients`` (i.e. after DDP's all-reduce).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from quillgpt import distributed
from quillgpt.config import preset
from quillgpt.data import TokenDataset
from quillgpt.train import Trainer


def main(dataset: str, out: str) -> None:
    dist = distributed.setup("cpu")
    config = preset("tiny")
    config.model.dropout = 0.0
    config.train.device = "cpu"
    trainer = Trainer(config, TokenDataset(dataset), Path(out) / "run", progress=False, dist=dist)
    start = {f"start.{k}": v.clone() for k, v in trainer.model.state_dict().items()}
    state = trainer.train_batches.state_dict()
    x, y = trainer.train_batches.next()  # the batch accumulate_gradients will draw
    trainer.train_batches.load_state_dict(state)
    trainer.accumulate_gradients()
    grads = {f"grad.{k}": p.grad for k, p in trainer.model.named_parameters()}
    save_file({**start, **grads, "x": x, "y": y}, str(Path(out) / f"rank{dist.rank}.safetensors"))
    distributed.teardown()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], sys.argv[2])
