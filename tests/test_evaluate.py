import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from quillgpt.config import ModelConfig, preset
from quillgpt.data import TokenDataset, TokenizerChoice, prepare_text
from quillgpt.errors import ConfigError, DataError
from quillgpt.models import build_model
from quillgpt.text_loss import eval_run, evaluate_ids
from quillgpt.train import Trainer

TEXT = "caf\u00e9 au lait, s'il vous pla\u00eet. \u4e2d\u6587!\n" * 40


def uniform_model(vocab_size: int, block_size: int = 8) -> torch.nn.Module:
    """A GPT whose logits are all zero: it gives every token probability 1/vocab_size."""
    model = build_model(ModelConfig(vocab_size=vocab_size, block_size=block_size, n_layer=1, n_head=1, n_embd=8))
    torch.nn.init.zeros_(model.lm_head.weight)
    torch.nn.init.zeros_(model.lm_head.bias)
    return model


@pytest.mark.parametrize("choice", [TokenizerChoice(), TokenizerChoice("bpe", 300)], ids=["char", "bpe"])
def test_bits_per_char_of_a_uniform_model(tmp_path: Path, choice: TokenizerChoice) -> None:
    ds = TokenDataset(prepare_text(TEXT, tmp_path / "ds", {}, choice))
    ids = np.concatenate([ds.splits["train"], ds.splits["val"]])
    result = evaluate_ids(uniform_model(ds.tokenizer.vocab_size), ids, ds.tokenizer, block_size=8, batch_size=3)
    v = ds.tokenizer.vocab_size
    assert result.tokens == len(ids) - 1
    assert result.loss == pytest.approx(math.log(v))
    first = ds.tokenizer.decode(ids[:1].tolist())  # the unpredicted first token (whole characters here)
    assert result.chars == len(TEXT) - len(first)
    assert result.bytes == len(TEXT.encode()) - len(first.encode())
    assert result.bits_per_char == pytest.approx(result.tokens * math.log2(v) / result.chars)
    assert result.bits_per_byte < result.bits_per_char  # some characters take 2 or 3 bytes


def test_evaluate_scores_every_token_once_with_its_window_context() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=11, block_size=4, n_layer=1, n_head=1, n_embd=8)).eval()
    ids = np.arange(11) % 11  # 10 predictions: windows of 4, 4 and 2
    from quillgpt.tokenizers import CharTokenizer

    result = evaluate_ids(model, ids, CharTokenizer(list("abcdefghijk")), block_size=4, batch_size=1)
    expected = 0.0
    for start in (0, 4, 8):
        x = torch.tensor(ids[start:min(start + 4, 10)])[None]
        y = torch.tensor(ids[start + 1:min(start + 5, 11)])[None]
        logits, _ = model(x)
        expected += F.cross_entropy(logits[0], y[0], reduction="sum").item()
    assert result.tokens == result.chars == result.bytes == 10
    assert result.nats == pytest.approx(expected, rel=1e-6)


def test_evaluate_needs_two_tokens() -> None:
    from quillgpt.tokenizers import CharTokenizer

    with pytest.raises(DataError, match="too few to evaluate"):
        evaluate_ids(uniform_model(3), np.array([1]), CharTokenizer(list("abc")), block_size=8)


@pytest.fixture
def trained_run(tmp_path: Path, dataset_dir: Path) -> Path:
    config = preset("tiny")
    config.train.max_iters = 20
    Trainer(config, TokenDataset(dataset_dir), tmp_path / "run", progress=False).train()
    return tmp_path / "run"


def test_eval_run_on_its_val_split_matches_training_val_loss(trained_run: Path, tmp_path: Path,
                                                             small_text: str) -> None:
    result, run, what = eval_run(trained_run)
    assert "val split" in what and run.step == 20
    last_val = json.loads((trained_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert result.loss == pytest.approx(last_val["val_loss"], rel=0.1)  # all windows vs a sample of them
    assert result.bits_per_char == pytest.approx(result.loss / math.log(2))  # char model: 1 token = 1 char
    text = tmp_path / "probe.txt"
    text.write_text(small_text[:2000])
    on_text, _, what = eval_run(trained_run, texts=[str(text)], max_tokens=500)
    assert on_text.tokens == 500 and "probe.txt" in what


def test_eval_run_refuses_another_tokenizer(trained_run: Path, tmp_path: Path) -> None:
    other = prepare_text("a different alphabet: xyz\n" * 50, tmp_path / "other", {})
    with pytest.raises(ConfigError, match="tokenized differently.*--tokenizer-from"):
        eval_run(trained_run, dataset=str(other))
