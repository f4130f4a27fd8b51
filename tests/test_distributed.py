"""DDP: gradients of N gloo processes equal one process on the combined batch; accumulation
equals a bigger batch; torchrun runs stop and resume exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from quillgpt.config import ModelConfig, preset
from quillgpt.data import TokenDataset
from quillgpt.distributed import Distributed, from_env
from quillgpt.errors import ConfigError
from quillgpt.models import build_model
from quillgpt.train import Trainer

TESTS = Path(__file__).parent


def torchrun(*args: str, cwd: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                           "--standalone", *args], cwd=cwd, capture_output=True, text=True, timeout=180, env=env)


def grads_of(config: ModelConfig, weights: dict[str, torch.Tensor], x: torch.Tensor,
             y: torch.Tensor) -> dict[str, torch.Tensor]:
    model = build_model(config)
    model.load_state_dict(weights)
    _, loss = model(x, y)
    loss.backward()
    return {k: p.grad for k, p in model.named_parameters()}


def test_two_gloo_processes_match_one_process_on_the_combined_batch(tmp_path: Path, dataset_dir: Path) -> None:
    result = torchrun(str(TESTS / "ddp_worker.py"), str(dataset_dir), str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    assert not torch.equal(ranks[0]["x"], ranks[1]["x"])  # each rank draws its own batch
    start = {k.removeprefix("start."): v for k, v in ranks[0].items() if k.startswith("start.")}
    for key, value in start.items():  # DDP gave rank 1 rank 0's weights
        assert torch.equal(value, ranks[1][f"start.{key}"]), key
    config = preset("tiny").model
    config.dropout, config.vocab_size = 0.0, TokenDataset(dataset_dir).tokenizer.vocab_size
    combined = grads_of(config, start, torch.cat([r["x"] for r in ranks]), torch.cat([r["y"] for r in ranks]))
    for name, grad in combined.items():
        for rank in ranks:
            assert (rank[f"grad.{name}"] - grad).abs().max().item() < 1e-6, name


def test_k_micro_batches_equal_one_batch_k_times_larger(tmp_path: Path, dataset_dir: Path) -> None:
    config = preset("tiny")
    config.model.dropout = 0.0
    config.train.grad_accum, config.train.batch_size = 3, 4
    trainer = Trainer(config, TokenDataset(dataset_dir), tmp_path / "run", progress=False)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    state = trainer.train_batches.state_dict()
    batches = [trainer.train_batches.next() for _ in range(3)]
    trainer.train_batches.load_state_dict(state)
    trainer.accumulate_gradients()
    combined = grads_of(trainer.config.model, start, torch.cat([b[0] for b in batches]),
                        torch.cat([b[1] for b in batches]))  # the trainer's copy: vocab_size from the tokenizer
    for name, param in trainer.model.named_parameters():
        assert (param.grad - combined[name]).abs().max().item() < 1e-6, name


def test_torchrun_training_stops_and_resumes_exactly(tmp_path: Path, dataset_dir: Path) -> None:
    flags = ["--preset", "tiny", "--dataset", str(dataset_dir), "--no-progress", "--max-iters", "12",
             "--eval-interval", "6", "--log-interval", "3", "--dropout", "0.1", "--sample-chars", "0"]
    whole = torchrun("-m", "quillgpt", "train", *flags, "--out-dir", "whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-2000:]
    assert "x 2 processes" in whole.stdout and whole.stdout.count("done:") == 1  # rank 0 alone reports
    paused = torchrun("-m", "quillgpt", "train", *flags, "--out-dir", "split", "--stop-at", "6", cwd=tmp_path)
    assert paused.returncode == 0, paused.stderr[-2000:]
    resumed = torchrun("-m", "quillgpt", "train", "--resume", "split", "--no-progress", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    def records(run: str) -> list[dict]:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k not in ("ms_per_step", "tokens_per_s", "elapsed_s")}
                for line in lines]

    assert records("split") == records("whole")  # one writer, and the same numbers after a resume
    single = subprocess.run([sys.executable, "-m", "quillgpt", "train", "--resume", "whole", "--max-iters", "20"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert single.returncode == 2 and "trained with 2 process(es)" in single.stderr
    assert len(single.stderr.strip().splitlines()) == 1


def test_torchrun_environment_is_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert from_env() == Distributed(rank=2, world_size=4, local_rank=0)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match="RANK 4"):
        from_env()


def test_ranks_draw_distinct_seeds() -> None:
    seeds = {Distributed(rank, 3).seed(1337) for rank in range(3)}
    assert len(seeds) == 3 and Distributed().seed(1337) == 1337
