"""Pretrain, then finetune: quill train --init-from RUN_DIR."""

import json
from pathlib import Path

import pytest
import torch

from quillgpt.cli import main
from quillgpt.config import preset
from quillgpt.data import TokenDataset, TokenizerChoice, prepare_text
from quillgpt.errors import ConfigError
from quillgpt.pretrained import apply_init, check_same_tokenizer, init_model_config, load_init
from quillgpt.resume import resume_trainer
from quillgpt.train import Trainer, learning_rate

PRETRAIN = "It was the best of times, it was the worst of times; the age of wisdom and of foolishness.\n" * 60
FINETUNE = "ROMEO:\nIt was the worst of times, it was the age of foolishness; the best of times.\n" * 40
TINY = ["--preset", "tiny", "--no-progress", "--sample-chars", "0"]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pre")
    prepare_text(PRETRAIN, root / "data/novels", {"sha256": "n"}, TokenizerChoice("bpe", 300))
    assert main(["train", *TINY, "--dataset", str(root / "data/novels"), "--out-dir", str(root / "runs/pre"),
                 "--max-iters", "30", "--eval-interval", "15"]) == 0
    return root


def test_finetune_starts_from_the_pretrained_weights(pretrained: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    pre = pretrained / "runs/pre"
    (tmp_path / "plays.txt").write_text(FINETUNE)
    assert main(["prepare", "--text", str(tmp_path / "plays.txt"), "--out", str(tmp_path / "plays"),
                 "--tokenizer-from", str(pre)]) == 0
    assert TokenDataset(tmp_path / "plays").tokenizer == load_init(pre).tokenizer

    # The weights are the pretrained run's best; the optimizer and the schedule start afresh.
    init = load_init(pre)
    config = preset("tiny")
    config.model = init_model_config(init, {"dropout": 0.1})
    config.train.dataset = str(tmp_path / "plays")
    trainer = Trainer(config, TokenDataset(tmp_path / "plays"), tmp_path / "api", progress=False)
    apply_init(trainer, init)
    for name, value in init.model.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[name], value), name
    assert trainer.step == 0 and not trainer.optimizer.state
    assert learning_rate(0, trainer.config) == pytest.approx(config.train.lr / config.train.warmup_iters)
    assert trainer.model.blocks[0].ffwd.net[-1].p == 0.1  # dropout may change; the shape may not

    capsys.readouterr()
    assert main(["train", *TINY, "--init-from", str(pre), "--dataset", str(tmp_path / "plays"), "--out-dir",
                 str(tmp_path / "ft"), "--max-iters", "10", "--eval-interval", "10", "--lr", "1e-3"]) == 0
    assert f"initialised from {pre}" in capsys.readouterr().out
    record = json.loads((tmp_path / "ft/init.json").read_text())
    assert record["run"] == str(pre.resolve()) and record["checkpoint"] == init.checkpoint.name
    evals = [json.loads(line) for line in (tmp_path / "ft/metrics.jsonl").read_text().splitlines()
             if '"eval"' in line]
    # At step 0 the model already knows these words: far below a uniform guess (ln 300 = 5.7).
    assert evals[0]["step"] == 0 and evals[0]["val_loss"] < 0.9 * torch.log(torch.tensor(300.0)).item()
    assert "val_bpc" in evals[0]
    assert json.loads((tmp_path / "ft/config.json").read_text())["train"]["lr"] == 1e-3


def test_a_run_stopped_before_its_first_checkpoint_restarts_from_the_pretrained_weights(
        pretrained: Path, tmp_path: Path) -> None:
    pre = load_init(pretrained / "runs/pre")
    config = preset("tiny")
    config.model = init_model_config(pre, {})
    config.train.dataset = str(pretrained / "data/novels")
    apply_init(Trainer(config, TokenDataset(pretrained / "data/novels"), tmp_path / "run", progress=False), pre)
    resumed = resume_trainer(tmp_path / "run", {"model": {}, "train": {}}, progress=False)
    assert resumed.step == 0
    for name, value in pre.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name


def test_another_tokenizer_is_refused(pretrained: Path, tmp_path: Path) -> None:
    char = TokenDataset(prepare_text(FINETUNE, tmp_path / "chars", {}))
    with pytest.raises(ConfigError, match=r"not tokenized with the tokenizer of .*--tokenizer-from"):
        check_same_tokenizer(char, load_init(pretrained / "runs/pre"))


def test_init_from_keeps_the_model_shape(pretrained: Path) -> None:
    with pytest.raises(ConfigError, match="n_embd is 32 there, not 64.*drop those flags"):
        init_model_config(load_init(pretrained / "runs/pre"), {"n_embd": 64})


def test_init_from_keeps_the_head_bias(pretrained: Path) -> None:
    # head_bias decides whether lm_head.bias exists: a shape field, so the flag is compared too
    with pytest.raises(ConfigError, match="head_bias is True there, not False"):
        init_model_config(load_init(pretrained / "runs/pre"), {"head_bias": False})
