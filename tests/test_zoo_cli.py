"""``quill zoo`` end to end on generated text, and a zoo model through quill train / sample."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from quillgpt.commands.zoo import ZOO_MODELS, parse_budget, parse_models
from quillgpt.errors import ConfigError


def quill(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "quillgpt", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.mark.slow
def test_zoo_races_every_model_and_writes_table_json_png(tmp_path: Path, dataset_dir: Path) -> None:
    result = quill("zoo", "--budget", "0.3s", "--dataset", str(dataset_dir), "--out", "zoo", "--eval-iters", "2",
                   "--no-progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "| model | parameters | steps | tokens/s | val loss | val bpc |" in result.stdout
    data = json.loads((tmp_path / "zoo/zoo.json").read_text())
    assert [r["model"] for r in data["rows"]] == list(ZOO_MODELS)
    for row in data["rows"]:
        assert row["steps"] >= 1 and row["val_loss"] > 0 and row["tokens_per_s"] > 0 and row["parameters"] > 0
    assert data["budget_s"] == 0.3
    assert (tmp_path / "zoo/zoo.png").stat().st_size > 1000
    # each model's run directory works with quill sample
    sample = quill("sample", "zoo/runs/gru", "--max-new-tokens", "20", "--seed", "0", cwd=tmp_path)
    assert sample.returncode == 0, sample.stderr
    assert len(sample.stdout.rstrip("\n")) == 20
    again = quill("zoo", "--budget", "1s", "--dataset", str(dataset_dir), "--out", "zoo", cwd=tmp_path)
    assert again.returncode == 2 and "--overwrite" in again.stderr


@pytest.mark.slow
def test_train_and_sample_a_zoo_arch(tmp_path: Path, dataset_dir: Path) -> None:
    train = quill("train", "--preset", "tiny", "--arch", "lstm", "--dataset", str(dataset_dir), "--out-dir", "runs/l",
                  "--max-iters", "10", "--no-progress", cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    assert "done: 10 steps" in train.stdout
    sample = quill("sample", "runs/l", "--prompt", "The", "--max-new-tokens", "30", "--seed", "1", cwd=tmp_path)
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.startswith("The") and len(sample.stdout.rstrip("\n")) == 33


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("5m", 300), ("1.5m", 90), ("1h", 3600), ("0.2s", 0.2)])
def test_parse_budget(text: str, seconds: float) -> None:
    assert parse_budget(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5", "5x", "-1m", "0s", ""])
def test_bad_budget_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="--budget"):
        parse_budget(text)


def test_parse_models() -> None:
    assert parse_models("gpt, lstm") == ["gpt", "lstm"]
    with pytest.raises(ConfigError, match="choose from"):
        parse_models("gpt,transformer")


def test_table_reports_a_failed_model_without_losing_the_others() -> None:
    from quillgpt.commands.zoo import format_table

    rows = [{"model": "gpt", "parameters": 10, "steps": 5, "tokens_per_s": 100.0, "val_loss": 2.0, "val_bpc": 2.9},
            {"model": "rnn", "parameters": 7, "steps": 3, "error": "loss became nan at step 3: lower --lr"}]
    table = format_table(rows)
    assert "| gpt | 10 | 5 | 100 | 2.0000 | 2.900 |" in table and "| rnn | 7 | 3 | failed: loss became nan" in table


def test_zoo_never_deletes_a_folder_it_did_not_make(tmp_path: Path, dataset_dir: Path) -> None:
    """quill zoo --out . on a first run used to rmtree ./runs/gpt: a user's own run."""
    mine = tmp_path / "runs" / "gpt"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("my run")
    result = quill("zoo", "--budget", "0.3s", "--models", "bigram,gpt", "--dataset", str(dataset_dir), "--out", ".",
                   "--eval-iters", "1", "--no-progress", cwd=tmp_path)
    assert result.returncode == 2 and "not made by quill zoo" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert (mine / "notes.txt").read_text() == "my run" and not (tmp_path / "zoo.json").exists()


@pytest.mark.slow
def test_zoo_overwrite_replaces_its_own_runs(tmp_path: Path, dataset_dir: Path) -> None:
    args = ("zoo", "--budget", "0.3s", "--models", "bigram", "--dataset", str(dataset_dir), "--out", "z",
            "--eval-iters", "1", "--no-progress")
    assert quill(*args, cwd=tmp_path).returncode == 0
    (tmp_path / "z/runs/bigram/stale.txt").write_text("from the first run")
    again = quill(*args, "--overwrite", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert not (tmp_path / "z/runs/bigram/stale.txt").exists() and (tmp_path / "z/runs/bigram/config.json").exists()
