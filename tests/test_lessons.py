"""The lessons (quillgpt.lessons): their numbers, and each command run once as a user would."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from quillgpt.cli import main
from quillgpt.errors import ConfigError
from quillgpt.lessons import attention, bigram, norms
from quillgpt.lessons.norms import BatchNorm1d
from quillgpt.models.attention import Head


def quill(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "quillgpt", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def test_attention_lesson_versions_agree_and_scaling_matters() -> None:
    r = attention.run(verbose=False)
    assert r.first_three_agree and r.max_diff_loop_matmul < 1e-6 and r.max_diff_loop_softmax < 1e-6
    assert r.attention_causal and r.attention_rows_sum_to_one and r.matches_library_head
    # Unscaled, var(q k^T) is about head_size; scaled, about 1 (Vaswani et al., section 3.2.1).
    assert 0.8 * r.big_head_size < r.var_unscaled < 1.2 * r.big_head_size
    assert 0.8 < r.var_scaled < 1.2
    assert r.max_weight_unscaled > 0.8 > 0.5 > r.max_weight_scaled


def test_attention_lesson_helpers() -> None:
    x = torch.randn(2, 5, 3)
    assert torch.allclose(attention.xbow_loops(x), attention.averaging_matrix(5) @ x, atol=1e-6)
    assert torch.allclose(attention.averaging_matrix(5), attention.softmax_matrix(5))


def test_norms_lesson_matches_torch_and_normalises_the_right_dimension() -> None:
    r = norms.run(verbose=False)
    assert r.all_match
    assert r.batchnorm_column_mean < 1e-5 and abs(r.batchnorm_column_std - 1) < 1e-3
    assert r.layernorm_row_mean < 1e-5 and abs(r.layernorm_row_std - 1) < 1e-3
    assert abs(r.batchnorm_row_std - 1) > 0.1 and abs(r.layernorm_column_std - 1) > 0.1


def test_batchnorm_running_statistics_converge_and_are_used_in_eval() -> None:
    torch.manual_seed(0)
    bn = BatchNorm1d(4, momentum=0.5)
    for _ in range(30):
        bn(torch.randn(256, 4) * 3 + 5)
    assert torch.allclose(bn.running_mean, torch.full((4,), 5.0), atol=0.5)
    assert torch.allclose(bn.running_var, torch.full((4,), 9.0), atol=2.0)
    bn.eval()
    one = torch.full((1, 4), 5.0)  # a batch of one: only running statistics can normalise it
    assert bn(one).abs().max() < 0.5


def test_bigram_lesson_learned_model_approaches_the_counting_optimum(text_file: Path) -> None:
    r = bigram.run(str(text_file), steps=100, verbose=False)
    assert r.counting_train_optimum < r.uniform_loss
    # No bigram model beats the unsmoothed counts on the train split; the learned one gets close.
    assert r.counting_train_optimum <= r.learned_train < r.counting_train_optimum + 0.1
    assert abs(r.learned_val - r.counting_val) < 0.15


def test_bigram_count_matrix() -> None:
    counts = bigram.count_matrix(np.array([0, 1, 1, 0, 1]), 2)
    assert counts.tolist() == [[0, 2], [1, 1]]


def test_bigram_lesson_rejects_bad_options(text_file: Path) -> None:
    with pytest.raises(ConfigError, match="steps"):
        bigram.run(str(text_file), steps=0, verbose=False)
    with pytest.raises(ConfigError, match="alpha"):
        bigram.run(str(text_file), alpha=0.0, verbose=False)


def test_lesson_commands(tmp_path: Path, text_file: Path) -> None:
    result = quill("lesson", "attention", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "versions 1, 2, 3 agree: True" in result.stdout
    result = quill("lesson", "norms", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "LayerNorm1d (models/gpt.py) vs torch.nn.LayerNorm" in result.stdout
    result = quill("lesson", "bigram", "--text", str(text_file), "--steps", "50", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "counting:" in result.stdout and "learned:" in result.stdout


def test_attention_heatmap_command(tmp_path: Path, text_file: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--preset", "tiny", "--dataset", str(text_file), "--out-dir", "runs/t", "--max-iters", "5",
                 "--sample-chars", "0", "--no-progress"]) == 0
    result = quill("attention", "runs/t", "--text", "The king", "--layer", "1", "--head", "1", "--out", "a/attn.png",
                   cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "a/attn.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "8 tokens" in result.stdout
    capsys.readouterr()
    for args, fragment in ((["--layer", "2"], "layers 0 to 1"), (["--head", "-1"], "heads 0 to 1"),
                           (["--text", "The king" * 3], "longer than the model's context of 16"),
                           (["--text", "Zebra"], "not in the vocabulary"), (["--out", "a"], "is a folder")):
        code = main(["attention", "runs/t", *(["--text", "The"] if "--text" not in args else []), *args])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert fragment in err and "Traceback" not in err


def test_a_lesson_is_ok_only_when_every_check_passes(text_file: Path) -> None:
    results = [attention.run(verbose=False), norms.run(verbose=False), bigram.run(str(text_file), steps=50,
                                                                                 verbose=False)]
    assert all(r.ok and all(r.checks.values()) for r in results)
    r = results[0]
    for field in ("first_three_agree", "attention_causal", "attention_rows_sum_to_one", "matches_library_head"):
        assert not dataclasses.replace(r, **{field: False}).ok, field  # each check counts
    assert not dataclasses.replace(results[1], layernorm_max_diff=1e-3).ok
    b = results[2]
    assert not dataclasses.replace(b, learned_train=b.counting_train_optimum - 0.01).ok  # beat the optimum?
    assert not dataclasses.replace(b, learned_train=b.uniform_loss + 0.01).ok  # learned nothing
    assert not dataclasses.replace(b, counting_train_optimum=b.uniform_loss).ok


class _OffHead(Head):
    """quillgpt's Head, off by a little: what a bug in models/attention.py would look like to the lesson."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 1.01


def _self_only(size: int) -> torch.Tensor:
    return torch.eye(size)  # version 3's weights, wrong: each position attends to itself only


def _loose_layernorm(dim: int) -> torch.nn.Module:
    return torch.nn.LayerNorm(dim, eps=1e-2)  # not models/gpt.py's LayerNorm1d, and not torch's default


_count_matrix = bigram.count_matrix


def _transposed_counts(ids: np.ndarray, vocab_size: int) -> torch.Tensor:
    return _count_matrix(ids, vocab_size).T  # N[b, a] where N[a, b] belongs: a wrong "optimum"


def _untrained(train_ids: np.ndarray, vocab_size: int, *args: object, **kwargs: object) -> torch.nn.Module:
    return bigram.BigramLanguageModel(bigram.ModelConfig(arch="bigram", vocab_size=vocab_size, block_size=8,
                                                         n_layer=1, n_head=1, n_embd=1, dropout=0.0))


@pytest.mark.parametrize(("lesson", "module", "name", "broken", "message"), [
    ("attention", attention, "Head", _OffHead, "self-attention equals quillgpt's Head"),
    ("attention", attention, "softmax_matrix", _self_only, "versions 1, 2, 3 agree"),
    ("norms", norms, "LayerNorm1d", _loose_layernorm, "BatchNorm1d and LayerNorm1d match torch.nn"),
    ("bigram", bigram, "count_matrix", _transposed_counts, "no bigram model beats the unsmoothed counts on train"),
    ("bigram", bigram, "train_embedding_bigram", _untrained, "the learned bigram beats a uniform guess"),
], ids=["library-head", "softmax-weights", "layernorm", "counts", "training"])
def test_a_lesson_whose_check_fails_exits_1_naming_it(lesson: str, module: object, name: str, broken: object,
                                                      message: str, text_file: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(module, name, broken)
    extra = ["--text", str(text_file), "--steps", "50"] if lesson == "bigram" else []
    assert main(["lesson", lesson, *extra]) == 1
    assert f"quill: lesson {lesson}: check failed: {message}\n" in capsys.readouterr().err
