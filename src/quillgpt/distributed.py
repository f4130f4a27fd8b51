"""Data-parallel training across processes: ``torchrun --nproc_per_node=N -m quillgpt train ...``.

torchrun starts N copies of the command and tells each its place through the environment
(RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT). Every process holds the whole model,
draws its own random batches (its own seed), and DistributedDataParallel averages the
gradients across processes before each optimizer step, so N processes with
``--batch-size B`` train like one process with batch N * B. Rank 0 alone writes the run
directory, logs and checkpoints; losses it logs are means over all ranks.

Backends: gloo on CPU, nccl on CUDA (one GPU per process, ``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from quillgpt.errors import ConfigError


@dataclass(frozen=True)
class Distributed:
    """This process's place among the training processes; one process is rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def seed(self, seed: int) -> int:
        """Rank r's seed for batches and dropout: distinct per rank, and ``seed`` itself on rank 0."""
        return seed + 1_000_003 * self.rank

    # -- collectives (no-ops in a single process) ------------------------------------

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise mean of ``values`` over all ranks."""
        if not self.enabled:
            return values
        values = values.detach().clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values / self.world_size

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when ``flag`` is true on some rank (e.g. a stop signal arrived)."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (on every rank)."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.enabled:
            dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def from_env() -> Distributed:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK; a plain run is rank 0 of 1."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ConfigError(f"bad torchrun environment ({exc}): launch with torchrun --nproc_per_node=N") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"bad torchrun environment: RANK {rank}, WORLD_SIZE {world}")
    return Distributed(rank, world, local)


def setup(device_name: str) -> Distributed:
    """Join the process group when launched by torchrun; returns this process's place.

    ``device_name`` is the config's device: nccl when it means CUDA, gloo otherwise.
    """
    place = from_env()
    if not place.enabled or dist.is_initialized():
        return place
    use_cuda = device_name == "cuda" or (device_name == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(place.local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=place.rank, world_size=place.world_size)
    return place


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
