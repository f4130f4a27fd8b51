"""Arithmetic tasks through the one trainer: data, masked loss, resume, and the task commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from quillgpt.checkpoint import load_run
from quillgpt.cli import main
from quillgpt.config import preset
from quillgpt.errors import ConfigError, DataError
from quillgpt.tasks.arithmetic import IGNORE
from quillgpt.tasks.dataset import ArithmeticDataset, open_dataset
from quillgpt.train import Trainer

SMALL = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--batch-size", "16", "--eval-iters", "2",
         "--train-examples", "200", "--eval-examples", "50", "--digits", "2", "--no-progress"]


def small_config(**train):
    config = preset("add3-reversed")
    config.model.n_layer, config.model.n_head, config.model.n_embd = 1, 2, 32
    config.train.batch_size, config.train.eval_iters, config.train.max_iters, config.train.eval_interval = 16, 2, 30, 10
    config.arithmetic.digits, config.arithmetic.train_examples, config.arithmetic.eval_examples = 2, 200, 50
    for key, value in train.items():
        setattr(config.train, key, value)
    return config


def test_training_and_held_out_sets_are_disjoint_and_fixed() -> None:
    config = small_config().arithmetic
    data = ArithmeticDataset(config)
    assert len(data.train_pool) == 200 and len(data.val_pool) == 50
    assert not set(data.train_pool) & set(data.val_pool)
    assert ArithmeticDataset(config).train_pool == data.train_pool
    assert ArithmeticDataset(config).source_sha256 == data.source_sha256
    config.eval_seed = 7
    assert ArithmeticDataset(config).val_pool != data.val_pool
    assert ArithmeticDataset(config).source_sha256 != data.source_sha256


def test_block_size_check_names_the_size_needed() -> None:
    data = ArithmeticDataset(preset("calc3").arithmetic)
    need = data.longest_sample()
    data.check_block_size(need)
    with pytest.raises(DataError, match=f"--block-size {need}"):
        data.check_block_size(need - 1)


def test_too_many_held_out_problems_is_a_config_error() -> None:
    config = small_config().arithmetic
    config.digits, config.eval_examples = 1, 500  # 1-digit addition has only 100 problems
    with pytest.raises(ConfigError, match="--eval-examples"):
        ArithmeticDataset(config)


def test_only_answer_tokens_are_trained_on(tmp_path: Path) -> None:
    trainer = Trainer(small_config(), open_dataset(small_config()), tmp_path / "run", progress=False)
    x, y = trainer.train_batches.next()
    prompt_chars = sum(c in "0123456789+" for c in "12+34")  # before "=": never a target
    assert (y[:, : prompt_chars - 2] == IGNORE).all()
    assert ((y != IGNORE).sum(1) >= 2).all()  # at least one answer digit and the newline


def test_a_task_run_learns_and_resumes_bitwise_identically(tmp_path: Path) -> None:
    straight = Trainer(small_config(), open_dataset(small_config()), tmp_path / "straight", progress=False)
    result = straight.train()
    evals = [json.loads(line) for line in (tmp_path / "straight/metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["kind"] == "eval"]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.2 and result.val_bpc is None
    first = Trainer(small_config(), open_dataset(small_config()), tmp_path / "resumed", progress=False)
    first.train(stop_at=13)
    assert main(["train", "--resume", str(tmp_path / "resumed"), "--no-progress"]) == 0
    a, b = load_run(tmp_path / "straight"), load_run(tmp_path / "resumed")
    for name, tensor in a.model.state_dict().items():
        assert torch.equal(tensor, b.model.state_dict()[name]), name
    assert main(["train", "--resume", str(tmp_path / "resumed"), "--digits", "3"]) == 2  # a different task


@pytest.fixture(scope="module")
def task_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("task") / "run"
    assert main(["train", "--preset", "add3-reversed", "--max-iters", "20", "--eval-interval", "10",
                 "--out-dir", str(run), *SMALL]) == 0
    return run


def test_train_prints_held_out_accuracy(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--preset", "add3-reversed", "--max-iters", "5", "--eval-interval", "5",
                 "--out-dir", str(tmp_path / "run"), *SMALL]) == 0
    out = capsys.readouterr().out
    assert "held-out accuracy (50 problems of the val set)" in out and "quill task eval" in out


def test_task_eval_reports_accuracy(task_run: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["task", "eval", str(task_run), "--n", "40", "--eval-seed", "9", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 40 and report["eval_seed"] == 9 and report["digits"] == 2
    assert 0.0 <= report["accuracy"] <= 1.0 and sum(v["n"] for v in report["by_length"].values()) == 40
    assert main(["task", "eval", str(task_run), "--n", "40"]) == 0
    assert "exact =" in capsys.readouterr().out


def test_calc_answers_and_says_whether_python_agrees(task_run: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["calc", str(task_run), "12+34"])
    out = capsys.readouterr().out
    assert out.startswith("12+34=") and ("correct" in out or "WRONG" in out or "not an answer" in out)
    assert code == (0 if "(correct)" in out else 1)


@pytest.mark.parametrize(("argv", "message"), [
    (["calc", "{run}", "3*4"], "trained on + only"),
    (["calc", "{run}", "3 plus 4"], "cannot read"),
    (["task", "eval", "{run}", "--task", "mul"], "not on *"),
    (["task", "eval", "{run}", "--task", "pow"], "unknown task"),
    (["task", "eval", "{run}", "--n", "0"], "--n and --digits"),
])
def test_task_commands_refuse_with_one_line(task_run: Path, capsys: pytest.CaptureFixture, argv: list[str],
                                            message: str) -> None:
    assert main([a.replace("{run}", str(task_run)) for a in argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err and captured.err.count("\n") == 1


def test_task_commands_refuse_a_text_model(tmp_path: Path, dataset_dir: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "text"
    assert main(["train", "--preset", "tiny", "--dataset", str(dataset_dir), "--max-iters", "2", "--eval-interval", "2",
                 "--out-dir", str(run), "--no-progress", "--sample-chars", "0"]) == 0
    capsys.readouterr()
    assert main(["calc", str(run), "1+1"]) == 2
    assert "not trained on an arithmetic task" in capsys.readouterr().err
