import json
from pathlib import Path

import pytest
import torch

from quillgpt.config import preset
from quillgpt.data import TokenDataset
from quillgpt.errors import ConfigError, DataError
from quillgpt.train import Trainer, learning_rate


def tiny(**train_kw):
    config = preset("tiny")
    for key, value in train_kw.items():
        setattr(config.train, key, value)
    return config


def test_learning_rate_warmup_then_cosine() -> None:
    config = tiny(lr=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=110)
    lrs = [learning_rate(s, config) for s in range(110)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a <= b for a, b in zip(lrs[:9], lrs[1:10], strict=True))  # rising during warmup
    assert all(a >= b for a, b in zip(lrs[10:-1], lrs[11:], strict=True))  # then falling
    assert learning_rate(60, config) == pytest.approx(5.5e-4)  # cosine midpoint
    assert learning_rate(110, config) == pytest.approx(1e-4)


def test_learning_rate_warmup_stable_decay() -> None:
    config = tiny(lr=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=100, lr_schedule="wsd", decay_frac=0.2)
    lrs = [learning_rate(s, config) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(lr == pytest.approx(1e-3) for lr in lrs[10:80])  # stable until the last 20 steps
    assert all(a > b for a, b in zip(lrs[79:-1], lrs[80:], strict=True))  # then falling every step
    assert lrs[89] == pytest.approx(5.5e-4)  # linear: halfway down after half the decay steps
    assert lrs[99] == pytest.approx(1e-4)  # min_lr on the last step
    held = tiny(lr=1e-3, min_lr=1e-4, warmup_iters=0, max_iters=50, lr_schedule="wsd", decay_frac=0.0)
    assert {learning_rate(s, held) for s in range(50)} == {1e-3}


def test_eval_uses_eval_mode_then_returns_to_train_mode(tmp_path: Path, dataset_dir: Path) -> None:
    trainer = Trainer(tiny(), TokenDataset(dataset_dir), tmp_path / "run", progress=False)
    modes = []
    trainer.model.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    trainer.model.train()
    losses = trainer.estimate_loss()
    assert set(losses) == {"train", "val"}
    assert modes and not any(modes)
    assert trainer.model.training


def test_grad_accumulation_matches_one_big_batch(tmp_path: Path, dataset_dir: Path) -> None:
    """k micro-batches of size B give the same update as one batch of k*B (no dropout)."""
    ds = TokenDataset(dataset_dir)
    small = Trainer(tiny(batch_size=4, grad_accum=2), ds, tmp_path / "a", progress=False)
    big = Trainer(tiny(batch_size=8, grad_accum=1), ds, tmp_path / "b", progress=False)
    big.model.load_state_dict(small.model.state_dict())
    pairs = [small.train_batches.next() for _ in range(2)]
    xs, ys = [p[0] for p in pairs], [p[1] for p in pairs]
    small.train_batches.next = iter(pairs).__next__
    big.train_batches.next = iter([(torch.cat(xs), torch.cat(ys))]).__next__
    loss_small, loss_big = small.train_step(), big.train_step()
    assert loss_small.item() == pytest.approx(loss_big.item(), abs=1e-6)
    for (name, p), q in zip(small.model.named_parameters(), big.model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6), name


def test_training_lowers_the_loss_and_logs_metrics(tmp_path: Path, dataset_dir: Path) -> None:
    trainer = Trainer(tiny(max_iters=60, eval_interval=30), TokenDataset(dataset_dir), tmp_path / "run",
                      progress=False)
    result = trainer.train()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 30, 60]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5
    assert result.steps == 60 and result.val_loss == evals[-1]["val_loss"]
    assert {r["step"] for r in records if r["kind"] == "train"} == set(range(5, 61, 5))


def test_resume_continues_bitwise_identically(tmp_path: Path, dataset_dir: Path) -> None:
    ds = TokenDataset(dataset_dir)
    straight = Trainer(tiny(max_iters=30, eval_interval=10), ds, tmp_path / "straight", progress=False)
    straight.train()
    first = Trainer(tiny(max_iters=30, eval_interval=10), ds, tmp_path / "resumed", progress=False)
    assert first.train(stop_at=17).steps == 17  # saves at 17 although that is not an eval step
    from quillgpt.cli import main

    assert main(["train", "--resume", str(tmp_path / "resumed"), "--no-progress", "--sample-chars", "0"]) == 0
    from quillgpt.checkpoint import load_run

    a, b = load_run(tmp_path / "straight"), load_run(tmp_path / "resumed")
    for name, tensor in a.model.state_dict().items():
        assert torch.equal(tensor, b.model.state_dict()[name]), name
    evals = [[r["val_loss"] for r in map(json.loads, (tmp_path / d / "metrics.jsonl").read_text().splitlines())
              if r["kind"] == "eval"] for d in ("straight", "resumed")]
    assert evals[0] == evals[1]


def test_block_size_larger_than_the_data_is_refused(tmp_path: Path) -> None:
    from quillgpt.data import prepare_text

    folder = prepare_text("abcdefghij" * 10, tmp_path / "ds", {"sha256": "x"})
    config = tiny()
    config.model.block_size = 64
    with pytest.raises(DataError, match="block_size 64"):
        Trainer(config, TokenDataset(folder), tmp_path / "run", progress=False)


def test_invalid_config_is_refused_before_anything_is_written(tmp_path: Path, dataset_dir: Path) -> None:
    config = tiny(lr=-1.0)
    with pytest.raises(ConfigError, match="lr must be a positive number"):
        Trainer(config, TokenDataset(dataset_dir), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_max_minutes_ends_the_run_with_an_eval_and_a_checkpoint(tmp_path: Path, dataset_dir: Path) -> None:
    config = tiny(max_iters=1_000_000, eval_interval=1_000_000, max_minutes=0.005)  # 0.3 s
    trainer = Trainer(config, TokenDataset(dataset_dir), tmp_path / "run", progress=False)
    result = trainer.train()
    assert 0 < result.steps < 1_000_000 and result.seconds < 30
    evals = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()
             if '"eval"' in line]
    assert [e["step"] for e in evals] == [0, result.steps]  # the final eval happens at the time limit
    assert json.loads((tmp_path / "run/latest.json").read_text())["step"] == result.steps
    assert result.val_bpc == pytest.approx(evals[-1]["val_bpc"])


def test_eval_first_off_skips_only_the_step_zero_eval(tmp_path: Path, dataset_dir: Path) -> None:
    trainer = Trainer(tiny(max_iters=40, eval_interval=20, eval_first=False), TokenDataset(dataset_dir),
                      tmp_path / "run", progress=False)
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [20, 40]


def test_trainer_leaves_the_callers_config_alone(tmp_path: Path, dataset_dir: Path) -> None:
    config = tiny()
    before = config.to_dict()
    trainer = Trainer(config, TokenDataset(dataset_dir), tmp_path / "run", progress=False)
    assert config.to_dict() == before
    vocab = TokenDataset(dataset_dir).tokenizer.vocab_size
    assert trainer.config.model.vocab_size == vocab != before["model"]["vocab_size"]  # set on the trainer's copy
