"""The speedrun presets (issue 18) and benchmarks/lecture_speedrun.py.

Speed is a benchmark's business (benchmarks/RESULTS.md), never a timed test: these check that
each speedrun preset is valid and trains, that seed-fast keeps to the lecture's data and model
family, and that the benchmark script measures what it says.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

from quillgpt.config import preset
from quillgpt.data import TokenDataset, split_batch
from quillgpt.device import resolve_device, resolve_dtype
from quillgpt.tasks.dataset import open_dataset
from quillgpt.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
SPEEDRUN_PRESETS = ("seed-fast", "cpu-fast")


@pytest.mark.parametrize("name", SPEEDRUN_PRESETS)
def test_speedrun_preset_validates_and_trains_a_few_steps(name: str, tmp_path: Path, dataset_dir: Path) -> None:
    config = preset(name)
    config.validate()
    # The preset's model and optimizer as they are; only the batch and the run are small here.
    config = config.replace({"model": {"block_size": min(config.model.block_size, 64)},
                             "train": {"batch_size": 4, "max_iters": 3, "eval_interval": 3, "eval_iters": 1,
                                       "sample_chars": 0}})
    trainer = Trainer(config, TokenDataset(dataset_dir), tmp_path / "run", progress=False)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    result = trainer.train()
    assert result.steps == 3 and result.val_loss is not None and result.val_loss < 10
    changed = [n for n, p in trainer.model.named_parameters() if not (p == before[n]).all()]
    assert len(changed) == len(before)  # every parameter was updated


def test_calc3_preset_packs_and_trains_a_few_steps(tmp_path: Path) -> None:
    config = preset("calc3")  # issue 18.4's preset: packed rows, the calc3 model and schedule as they are
    assert config.arithmetic.pack
    config = config.replace({"train": {"batch_size": 16, "max_iters": 3, "eval_interval": 3, "eval_iters": 1},
                             "arithmetic": {"eval_examples": 40}})
    trainer = Trainer(config, open_dataset(config), tmp_path / "run", progress=False)
    x, y, inputs = split_batch(trainer.train_batches.next())
    assert "positions" in inputs and x.size(0) < 16  # 16 problems packed into fewer rows
    result = trainer.train()
    assert result.steps == 3 and result.val_loss is not None and result.val_loss < 10


def test_seed_fast_trains_on_tiny_shakespeare_and_ends_with_one_eval() -> None:
    config = preset("seed-fast")
    assert config.train.dataset == "shakespeare"  # the lecture's text; its val split is the last 10%
    assert config.model.arch == "gpt" and config.model.vocab_size == 65
    assert config.train.max_iters % config.train.eval_interval == 0  # the last step is evaluated once


def test_lecture_speedrun_script_prints_both_runs_and_draws_the_plot(tmp_path: Path, capsys, monkeypatch) -> None:
    png = tmp_path / "speedrun.png"
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.setattr(sys, "argv", ["lecture_speedrun.py", "--preset", "tiny", "--baseline-preset", "tiny",
                                      "--baseline-minutes", "0.002", "--work", str(tmp_path / "work"),
                                      "--png", str(png)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "benchmarks" / "lecture_speedrun.py"), run_name="__main__")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "| tiny |" in out and "| tiny, 0.002 min |" in out
    # The whole-split score is quill eval's, on every token of the val split, not the logged estimate.
    scored = [line for line in out.splitlines() if line.startswith("| tiny") and "**" in line]
    assert len(scored) == 2
    metrics = [json.loads(line) for line in (tmp_path / "work" / "tiny" / "metrics.jsonl").read_text().splitlines()]
    estimate = [r["val_loss"] for r in metrics if r["kind"] == "eval"][-1]
    measured = json.loads((tmp_path / "work" / "tiny" / "speedrun.json").read_text())
    assert float(scored[0].split("**")[1]) == pytest.approx(measured["val"], abs=5e-5)  # the table prints it
    assert abs(measured["val"] - estimate) > 1e-3  # not the logged estimate of a few batches...
    assert abs(measured["val"] - estimate) < 0.5  # ...but the same model on all of the val split
    assert measured["step"] == preset("tiny").train.max_iters  # the last checkpoint, not the best-val one
    assert "Whole val split (111,539 tokens)" in out  # Tiny Shakespeare's last 10%, minus the first token
    baseline = json.loads((tmp_path / "work" / "tiny-baseline" / "config.json").read_text())["train"]
    assert (baseline["max_minutes"], baseline["dtype"], baseline["eval_interval"]) == (0.002, "bfloat16", 100)
    assert png.stat().st_size > 10_000


@pytest.mark.parametrize("argv,message", [
    (["--baseline-preset", "nosuch", "--baseline-minutes", "1"], "--baseline-preset: unknown preset 'nosuch'"),
    (["--preset", "nosuch"], "--preset: unknown preset 'nosuch'"),
    (["--baseline-minutes", "nan"], "--baseline-minutes must be a number"),
    (["--baseline-minutes", "inf"], "--baseline-minutes must be a number"),
    (["--baseline-minutes", "-1"], "--baseline-minutes must be a number"),
])
def test_lecture_speedrun_refuses_bad_arguments_before_training(argv: list[str], message: str, tmp_path: Path,
                                                                 monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    monkeypatch.setattr(sys, "argv", ["lecture_speedrun.py", *argv, "--work", str(tmp_path / "work")])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "benchmarks" / "lecture_speedrun.py"), run_name="__main__")
    assert message in str(exit_info.value.code)
    assert not (tmp_path / "work").exists()  # nothing was trained


def test_the_recipe_line_names_the_dtype_auto_resolved_to(monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    describe = runpy.run_path(str(ROOT / "benchmarks" / "lecture_speedrun.py"))["describe"]
    config = preset("seed-fast").to_dict()  # dtype auto: bf16 where the CPU does it fast, else fp32
    resolved = str(resolve_dtype("auto", resolve_device(config["train"]["device"]))).removeprefix("torch.")
    assert f"auto = {resolved}," in describe(config)
    config["train"]["dtype"] = "float32"
    assert ", float32," in describe(config)
