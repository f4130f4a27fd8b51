"""What a task run reports while it trains: tokens/s counts the problems' tokens, not the padding after
them, and the progress bar shows no val_bpc (bits per character of text are not defined for problems)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from quillgpt.config import preset
from quillgpt.data import Batch, TokenDataset, unpadded_tokens
from quillgpt.metrics import MetricsLog
from quillgpt.tasks.arithmetic import IGNORE
from quillgpt.tasks.dataset import open_dataset
from quillgpt.train import Trainer
from test_task_dataset import small_config


class Recording:
    """A batch sampler that remembers the batches it hands out (and saves as the one it wraps)."""

    def __init__(self, inner: object) -> None:
        self.inner, self.batches = inner, []

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def next(self) -> Batch:
        batch = self.inner.next()
        self.batches.append(batch)
        return batch


def problem_tokens(y: torch.Tensor) -> int:
    """Tokens up to each row's last answer token, counted the slow, obvious way."""
    total = 0
    for row in y.tolist():
        answered = [t for t, target in enumerate(row) if target != IGNORE]
        total += answered[-1] + 1 if answered else 0
    return total


def logged_tokens(run_dir: Path, log_interval: int) -> list[float]:
    """The tokens each train record counted: tokens_per_s x the seconds it covers (ms_per_step x steps)."""
    return [r["tokens_per_s"] * r["ms_per_step"] * log_interval / 1000
            for r in MetricsLog(run_dir / "metrics.jsonl").read() if r["kind"] == "train"]


@pytest.mark.parametrize("pack", [False, True])
def test_tokens_per_s_leaves_out_padding(tmp_path: Path, pack: bool) -> None:
    config = small_config(max_iters=6, eval_interval=6, log_interval=3, eval_first=False, grad_accum=2)
    config.arithmetic.format, config.arithmetic.pack = "plain", pack  # rows of different lengths: padded
    trainer = Trainer(config, open_dataset(config), tmp_path / "run", progress=False)
    trainer.train_batches = recording = Recording(trainer.train_batches)
    trainer.train()
    assert len(recording.batches) == 12  # 6 steps x 2 micro-batches
    per_log = [sum(problem_tokens(b[1]) for b in recording.batches[i:i + 6]) for i in (0, 6)]
    padded = [sum(b[0].numel() for b in recording.batches[i:i + 6]) for i in (0, 6)]
    assert all(real < all_tokens for real, all_tokens in zip(per_log, padded, strict=True))  # there was padding
    assert logged_tokens(tmp_path / "run", 3) == pytest.approx(per_log, rel=1e-6)


def test_unpadded_tokens_counts_a_text_batch_whole_and_stops_at_each_rows_last_target() -> None:
    assert int(unpadded_tokens(torch.randint(0, 9, (4, 7)))) == 28
    y = torch.tensor([[IGNORE, 3, IGNORE, 4, IGNORE], [IGNORE] * 5, [1, 2, 3, 4, 5],
                      [IGNORE, 1, IGNORE, IGNORE, IGNORE]])
    assert int(unpadded_tokens(y)) == 4 + 0 + 5 + 2 == problem_tokens(y)


def test_a_task_runs_progress_bar_shows_no_val_bpc(tmp_path: Path, dataset_dir: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """calc3's bar said val_bpc=nan at every eval, which reads as a diverged run."""
    config = small_config(max_iters=4, eval_interval=2, log_interval=2)
    Trainer(config, open_dataset(config), tmp_path / "task", progress=True).train()
    task_bar = capsys.readouterr().err
    assert "val=" in task_bar and "val_bpc" not in task_bar and "nan" not in task_bar
    text = preset("tiny")
    text.train.max_iters, text.train.eval_interval, text.train.eval_iters = 2, 2, 1
    Trainer(text, TokenDataset(dataset_dir), tmp_path / "text", progress=True).train()
    assert "val_bpc=" in capsys.readouterr().err  # a text run's bar keeps it
