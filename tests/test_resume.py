"""Never lose a run: exact resume across processes, kill -9, signals, failing disks, NaNs."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from quillgpt import checkpoint as checkpoint_module
from quillgpt.checkpoint import load_run, resolve_checkpoint
from quillgpt.cli import main
from quillgpt.config import preset
from quillgpt.data import TokenDataset
from quillgpt.errors import CheckpointError, ConfigError
from quillgpt.resume import resume_trainer
from quillgpt.train import Trainer, TrainingError

# A small config whose steps take a few ms, with a checkpoint every 5 steps.
TRAIN_FLAGS = ["--preset", "tiny", "--eval-interval", "20", "--eval-iters", "2", "--save-every", "5",
               "--log-interval", "1", "--keep-last", "2", "--sample-chars", "0", "--no-progress"]


def quill(*args: str, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "quillgpt", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})


def run_quill(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = quill(*args, cwd=cwd)
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_run(run_dir).model.state_dict()


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), f"{name} differs"


def curve(run_dir: Path) -> list[tuple]:
    """The metrics that must match between a straight and a resumed run (not the timings)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["kind"], r["step"], r.get("loss"), r.get("train_loss"), r.get("val_loss"), r.get("lr")) for r in rows]


@pytest.fixture
def workdir(tmp_path: Path, text_file: Path) -> Path:
    prepared = run_quill("prepare", "--text", str(text_file), "--out", "data/corpus", cwd=tmp_path)
    assert prepared.returncode == 0, prepared.stderr
    return tmp_path


def test_resume_in_a_new_process_is_bitwise_identical(workdir: Path) -> None:
    common = [*TRAIN_FLAGS, "--dataset", "data/corpus", "--max-iters", "40"]
    straight = run_quill("train", *common, "--out-dir", "straight", cwd=workdir)
    assert straight.returncode == 0, straight.stderr
    first = run_quill("train", *common, "--out-dir", "resumed", "--stop-at", "13", cwd=workdir)
    assert first.returncode == 0, first.stderr
    assert json.loads((workdir / "resumed/latest.json").read_text())["step"] == 13
    second = run_quill("train", "--resume", "resumed", "--no-progress", cwd=workdir)
    assert second.returncode == 0, second.stderr
    assert "resuming resumed from step 13" in second.stdout
    assert_same_weights(workdir / "straight", workdir / "resumed")
    assert curve(workdir / "straight") == curve(workdir / "resumed")


def _last_logged_step(run_dir: Path) -> int:
    steps = [0]
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        lines = []
    for line in lines:
        with contextlib.suppress(ValueError, KeyError):  # a line cut by the kill
            steps.append(json.loads(line)["step"])
    return max(steps)


def _training_since(run_dir: Path, launched: float, start_step: int) -> bool:
    """Has a process launched at ``launched`` logged a step past ``start_step``?"""
    try:
        fresh = (run_dir / "metrics.jsonl").stat().st_mtime >= launched
    except FileNotFoundError:  # not written yet, or just replaced
        return False
    return fresh and _last_logged_step(run_dir) > start_step


def test_kill_9_at_20_random_moments_always_resumes(workdir: Path) -> None:
    """kill -9 (often inside a slowed-down checkpoint write), resume, repeat; then compare."""
    rng = random.Random(20261126)
    save_every = 25
    common = [*TRAIN_FLAGS, "--dataset", "data/corpus", "--max-iters", "100000", "--save-every", str(save_every)]
    slow_writes = {"QUILL_FAULT_CHECKPOINT_DELAY": "0.02"}
    run_dir = workdir / "killed"
    aimed: list[bool] = []  # was the kill aimed at a checkpoint write?
    landed: list[bool] = []  # did it interrupt one (a partial .tmp- folder left behind)?
    worst_loss = 0
    args = ["train", *common, "--out-dir", "killed"]
    for _ in range(20):
        latest = run_dir / "latest.json"
        start_step = json.loads(latest.read_text())["step"] if latest.exists() else 0
        launched = time.time()
        proc = quill(*args, cwd=workdir, env=slow_writes)
        deadline = launched + 120
        while not _training_since(run_dir, launched, start_step) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        aimed.append(rng.random() >= 0.5)
        if not aimed[-1]:  # at a random moment
            time.sleep(rng.uniform(0.0, 2.5))
        else:  # at a random moment inside a checkpoint write (each file takes >= 20 ms here)
            while not any((run_dir / "checkpoints").glob(".tmp-*")) and time.time() < deadline:
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.06))
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL, err  # killed, not ended on its own
        reached = _last_logged_step(run_dir)
        landed.append(any((run_dir / "checkpoints").glob(".tmp-*")))
        # The latest checkpoint always loads (before the first one there is nothing to load).
        saved = load_run(run_dir).step if (run_dir / "latest.json").exists() else 0
        worst_loss = max(worst_loss, reached - saved)
        assert reached - saved <= save_every, (reached, saved)
        args = ["train", "--resume", "killed", "--no-progress"]
    # The seed times 9 of the 20 kills to land inside a write (README says so): each comes < 60 ms after the
    # write's temporary folder appears, and the write then sleeps 3 x 20 ms before renaming it, so all 9
    # should interrupt it (measured: 9 of 9 in seven runs; 2 may miss under a loaded scheduler; 5 of 9 without
    # the slowed-down writes).
    # The other 11 come at random moments, mostly between writes (measured: 7 to 11 of them).
    aimed_hits = sum(hit for aim, hit in zip(aimed, landed, strict=True) if aim)
    assert sum(aimed) == 9
    assert aimed_hits >= 7, (aimed, landed)
    assert not all(landed), landed  # and some kills came between writes
    # Finish a little past the last kill, then check against a run that never stopped.
    stop = json.loads((run_dir / "latest.json").read_text())["step"] + 7
    done = run_quill("train", "--resume", "killed", "--no-progress", "--stop-at", str(stop), cwd=workdir)
    assert done.returncode == 0, done.stderr
    straight = run_quill("train", *common, "--out-dir", "straight", "--stop-at", str(stop), cwd=workdir)
    assert straight.returncode == 0, straight.stderr
    assert_same_weights(workdir / "straight", run_dir)
    assert curve(workdir / "straight") == curve(run_dir)
    assert not any((run_dir / "checkpoints").glob(".tmp-*"))  # partial writes were cleaned up
    print(f"kills inside a checkpoint write: {sum(landed)}/20 ({aimed_hits} of the {sum(aimed)} aimed at one), "
          f"worst progress lost: {worst_loss} steps")


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_a_checkpoint_and_exits(workdir: Path, sig: signal.Signals, code: int) -> None:
    common = [*TRAIN_FLAGS, "--dataset", "data/corpus", "--max-iters", "100000", "--save-every", "1000"]
    proc = quill("train", *common, "--out-dir", "run", cwd=workdir)
    deadline = time.time() + 120
    while _last_logged_step(workdir / "run") < 30 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert f"interrupted by {sig.name}" in err and "quill train --resume run" in err
    assert "Traceback" not in err
    saved = json.loads((workdir / "run/latest.json").read_text())["step"]
    assert saved >= _last_logged_step(workdir / "run") >= 30  # nothing since the last step is lost
    load_run(workdir / "run")


def _tiny(tmp_path: Path, dataset_dir: Path, name: str = "run", **train) -> Trainer:
    config = preset("tiny")
    config.train.max_iters, config.train.eval_interval, config.train.save_every = 30, 10, 5
    config.train.log_interval = 1
    for key, value in train.items():
        setattr(config.train, key, value)
    return Trainer(config, TokenDataset(dataset_dir), tmp_path / name, progress=False)


def test_failing_checkpoint_write_keeps_the_previous_one(tmp_path: Path, dataset_dir: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = _tiny(tmp_path, dataset_dir)
    real_save = checkpoint_module.save_file
    calls = {"n": 0}

    def full_disk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 4:  # two checkpoints (model + optimizer each) succeed, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "save_file", full_disk)
    with pytest.raises(CheckpointError, match=r"step 15.*No space left on device.*step-00000010 is intact.*--resume"):
        trainer.train()
    assert load_run(tmp_path / "run").step == 10
    assert not any((tmp_path / "run/checkpoints").glob(".tmp-*"))


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path: Path, dataset_dir: Path) -> None:
    trainer = _tiny(tmp_path, dataset_dir)
    poison_from_step(trainer, 13)
    with pytest.raises(TrainingError, match="loss became nan at step 13"):
        trainer.train()
    run = load_run(tmp_path / "run")
    assert run.step == 10
    assert all(torch.isfinite(t).all() for t in run.model.state_dict().values())


def test_skip_nonfinite_skips_the_bad_steps_and_goes_on(tmp_path: Path, dataset_dir: Path) -> None:
    trainer = _tiny(tmp_path, dataset_dir, skip_nonfinite=True)
    poison_from_step(trainer, 13, until=15)
    result = trainer.train()
    assert result.steps == 30 and result.skipped_steps == 2
    skips = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()
             if '"skip"' in line]
    assert [s["step"] for s in skips] == [13, 14]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def poison_from_step(trainer: Trainer, first: int, until: int | None = None) -> None:
    """Make the loss NaN for steps first..until-1 (1-based, as the logs count steps)."""
    real = trainer.forward_model

    def forward(x, y=None):
        logits, loss = real(x, y)
        step = trainer.step + 1
        if trainer.model.training and step >= first and (until is None or step < until):
            loss = loss * float("nan")
        return logits, loss

    trainer.forward_model = forward


def _overrides(model: dict | None = None, train: dict | None = None) -> dict:
    return {"model": model or {}, "train": train or {}}


@pytest.fixture
def stopped_run(tmp_path: Path, dataset_dir: Path) -> Path:
    _tiny(tmp_path, dataset_dir).train(stop_at=10)
    return tmp_path / "run"


@pytest.mark.parametrize("overrides,match", [
    (_overrides(model={"n_embd": 64}), "n_embd 32 -> 64"),
    (_overrides(train={"batch_size": 4}), "batch_size 8 -> 4"),
    (_overrides(train={"seed": 1}), "seed 1337 -> 1"),
])
def test_resume_refuses_unsafe_changes(stopped_run: Path, overrides: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resume_trainer(stopped_run, overrides, progress=False)


def test_resume_allows_safe_changes(stopped_run: Path) -> None:
    trainer = resume_trainer(stopped_run, _overrides(train={"max_iters": 12, "lr": 1e-3}), progress=False)
    assert trainer.step == 10 and trainer.train().steps == 2


def test_resume_refuses_a_changed_dataset(stopped_run: Path, dataset_dir: Path) -> None:
    meta = json.loads((dataset_dir / "meta.json").read_text())
    meta["source"]["sha256"] = "f" * 64
    (dataset_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="not the one this run trained on"):
        resume_trainer(stopped_run, _overrides(), progress=False)


def test_resume_refuses_a_different_tokenizer(stopped_run: Path, dataset_dir: Path) -> None:
    meta = json.loads((dataset_dir / "meta.json").read_text())
    meta["tokenizer"]["chars"] = meta["tokenizer"]["chars"][::-1]
    (dataset_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="tokenizer"):
        resume_trainer(stopped_run, _overrides(), progress=False)


def test_cli_resume_reports_what_differs(stopped_run: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--resume", str(stopped_run), "--n-layer", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "n_layer 2 -> 4" in err


def test_a_checkpoint_keeps_everything_needed(stopped_run: Path) -> None:
    ckpt = resolve_checkpoint(stopped_run)
    state = json.loads((ckpt / "trainer.json").read_text())
    for key in ("step", "optimizer", "rng", "batches", "best_val", "data_sha256", "pending_losses"):
        assert key in state, key
    assert set(state["rng"]) == {"python", "numpy"}
    assert set(state["batches"]) == {"train", "eval_train", "eval_val"}
    from safetensors import safe_open

    with safe_open(str(ckpt / "optimizer.safetensors"), "pt") as handle:
        names = set(handle.keys())
    assert "rng.torch" in names and any(n.endswith(".exp_avg_sq") for n in names)
