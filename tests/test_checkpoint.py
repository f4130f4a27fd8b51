import json
from pathlib import Path

import pytest
import torch

from quillgpt.checkpoint import load_run, prune_checkpoints, resolve_checkpoint
from quillgpt.config import preset
from quillgpt.data import TokenDataset
from quillgpt.errors import CheckpointError
from quillgpt.train import Trainer


@pytest.fixture
def trained_run(tmp_path: Path, dataset_dir: Path) -> tuple[Trainer, Path]:
    config = preset("tiny")
    config.train.max_iters = 10
    config.train.eval_interval = 5
    trainer = Trainer(config, TokenDataset(dataset_dir), tmp_path / "run", progress=False)
    trainer.train()
    return trainer, tmp_path / "run"


def test_save_load_gives_identical_logits(trained_run: tuple[Trainer, Path]) -> None:
    trainer, run_dir = trained_run
    run = load_run(run_dir)
    assert run.step == 10
    assert not run.model.training
    trainer.model.eval()
    idx = torch.randint(0, run.tokenizer.vocab_size, (2, 16))
    assert torch.equal(trainer.model(idx)[0], run.model(idx)[0])
    assert run.tokenizer == trainer.dataset.tokenizer


def test_run_dir_layout_has_no_pickles(trained_run: tuple[Trainer, Path]) -> None:
    _, run_dir = trained_run
    for name in ("config.json", "tokenizer.json", "data.json", "latest.json", "metrics.jsonl", "loss.png"):
        assert (run_dir / name).is_file(), name
    ckpt = resolve_checkpoint(run_dir)
    assert sorted(p.name for p in ckpt.iterdir()) == ["manifest.json", "model.safetensors",
                                                     "optimizer.safetensors", "tokenizer.json", "trainer.json"]
    assert (ckpt / "tokenizer.json").read_bytes() == (run_dir / "tokenizer.json").read_bytes()
    suffixes = {p.suffix for p in run_dir.rglob("*") if p.is_file()}
    assert suffixes <= {".json", ".jsonl", ".png", ".safetensors"}
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_keep_last_prunes_old_checkpoints(trained_run: tuple[Trainer, Path]) -> None:
    _, run_dir = trained_run
    steps = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert steps == ["step-00000005", "step-00000010"]
    prune_checkpoints(run_dir, keep_last=1)
    best = json.loads((run_dir / "best.json").read_text())["checkpoint"]
    remaining = {f"checkpoints/{p.name}" for p in (run_dir / "checkpoints").iterdir()}
    assert remaining == {"checkpoints/step-00000010", best}


def test_truncated_weights_are_detected(trained_run: tuple[Trainer, Path]) -> None:
    _, run_dir = trained_run
    weights = resolve_checkpoint(run_dir) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="wrong size"):
        load_run(run_dir)


def test_flipped_byte_is_detected(trained_run: tuple[Trainer, Path]) -> None:
    _, run_dir = trained_run
    weights = resolve_checkpoint(run_dir) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_run(run_dir)


def test_edited_config_shape_is_detected(trained_run: tuple[Trainer, Path]) -> None:
    _, run_dir = trained_run
    config = json.loads((run_dir / "config.json").read_text())
    config["model"]["n_embd"] = 64
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="shape"):
        load_run(run_dir)


def test_unknown_config_key_is_detected(trained_run: tuple[Trainer, Path]) -> None:
    _, run_dir = trained_run
    config = json.loads((run_dir / "config.json").read_text())
    config["model"]["n_experts"] = 8
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unknown key.*n_experts"):
        load_run(run_dir)


def test_missing_run_dir(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_run(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_run(tmp_path)


def test_planted_pickle_is_never_loaded(trained_run: tuple[Trainer, Path], tmp_path: Path) -> None:
    _, run_dir = trained_run
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    import pickle

    ckpt = resolve_checkpoint(run_dir)
    for name in ("model.pt", "ckpt.pt", "optimizer.pt"):
        (ckpt / name).write_bytes(pickle.dumps(Evil()))
    (run_dir / "ckpt.pt").write_bytes(pickle.dumps(Evil()))
    load_run(run_dir)
    assert not marker.exists()
