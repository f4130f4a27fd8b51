"""Resuming a run: continue a run directory from its latest checkpoint, refusing what would not be exact.

A resumed run must compute the same numbers as one that never stopped, so the model shape,
batch and seed settings, tokenizer and dataset must all be the run's own; only the fields in
``SAFE_TO_CHANGE_ON_RESUME`` may differ. ``Trainer._restore`` then loads weights, optimizer,
RNGs and batch samplers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quillgpt.checkpoint import read_config, remove_partial_checkpoints, resolve_checkpoint, verify_manifest
from quillgpt.config import RunConfig
from quillgpt.data import TrainingData
from quillgpt.distributed import Distributed
from quillgpt.errors import CheckpointError, ConfigError, QuillError
from quillgpt.pretrained import reapply_init
from quillgpt.tasks.dataset import open_dataset
from quillgpt.tokenizers import Tokenizer, tokenizer_from_dict
from quillgpt.train import Trainer

# Fields that may differ when a run continues: they change how long or how it trains
# from here on, not what the model, data or batches are.
SAFE_TO_CHANGE_ON_RESUME = frozenset({
    "max_iters", "eval_interval", "eval_iters", "log_interval", "lr", "min_lr", "warmup_iters", "lr_schedule",
    "decay_frac",
    "save_every", "keep_last", "sample_chars", "device", "dtype", "compile", "grad_clip", "skip_nonfinite",
    "max_minutes", "eval_first", "log_to",
})


def _read_data_info(run_dir: Path) -> dict[str, Any]:
    try:
        info = json.loads((run_dir / "data.json").read_text())
        if not isinstance(info.get("dataset"), str):
            raise ValueError("no 'dataset' string")
        return info
    except (OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"cannot read {run_dir / 'data.json'} ({exc}): the run directory is corrupt") from None


def _open_run_dataset(config: RunConfig, run_dir: Path) -> TrainingData:
    return open_dataset(config, folder=_read_data_info(run_dir)["dataset"], base_tokenizer=_chat_base(config, run_dir))


def _chat_base(config: RunConfig, run_dir: Path) -> Tokenizer | None:
    """A chat run's data is encoded with the run's own tokenizer; other runs' data brings its own."""
    if not config.chat.enabled:
        return None
    path = run_dir / "tokenizer.json"
    try:
        return tokenizer_from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, QuillError) as exc:
        raise CheckpointError(f"cannot read {path} ({exc}): the run directory is corrupt") from None


TRAINER_STATE_TYPES = {"step": int, "optimizer": dict, "rng": dict, "batches": dict, "pending_losses": list}


def _check_trainer_state(path: Path, state: Any) -> None:
    """Check the shape of trainer.json before any of it is used."""
    problem = None
    if not isinstance(state, dict):
        problem = "it must be a JSON object"
    else:
        for key, kind in TRAINER_STATE_TYPES.items():
            if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
                problem = f"'{key}' must be a {kind.__name__}, got {type(state.get(key)).__name__}"
                break
        else:
            if not isinstance(state["optimizer"].get("param_groups"), list):
                problem = "'optimizer.param_groups' must be a list"
            elif set(state["batches"]) != {"train", "eval_train", "eval_val"}:
                problem = "'batches' must hold train, eval_train and eval_val"
    if problem:
        raise CheckpointError(f"{path} is malformed: {problem}; resume from an intact copy of the run")


def resume_trainer(run_dir: Path, overrides: dict[str, dict[str, Any]], progress: bool = True,
                   dist: Distributed | None = None) -> Trainer:
    """A Trainer that continues ``run_dir`` from its latest checkpoint.

    Refuses (ConfigError) when the model shape, the batch/seed settings, the tokenizer or
    the dataset differ from the run's, naming what differs.
    """
    config = read_config(run_dir)
    changes = [f"{name} {getattr(getattr(config, section), name)!r} -> {value!r}"
               for section, values in overrides.items() for name, value in values.items()
               if getattr(getattr(config, section), name) != value and name not in SAFE_TO_CHANGE_ON_RESUME]
    if changes:
        raise ConfigError(f"cannot resume {run_dir} with a different {'; '.join(changes)}: start a new run, or "
                          f"change only {', '.join(sorted(SAFE_TO_CHANGE_ON_RESUME))}")
    config = config.replace({"train": overrides.get("train", {})})
    config.validate()
    if not (run_dir / "latest.json").exists() and not any((run_dir / "checkpoints").glob("step-*")):
        # Stopped before its first checkpoint: nothing to lose, so start it again from step 0.
        dataset = _open_run_dataset(config, run_dir)
        if dist is None or dist.is_main:
            remove_partial_checkpoints(run_dir)
        trainer = Trainer(config, dataset, run_dir, progress=progress, dist=dist)
        reapply_init(trainer)  # a finetune run starts from its pretrained weights again
        return trainer
    checkpoint = resolve_checkpoint(run_dir, "latest")
    verify_manifest(checkpoint)
    try:
        trainer_state = json.loads((checkpoint / "trainer.json").read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {checkpoint / 'trainer.json'} ({exc}): the checkpoint is corrupt") from None
    _check_trainer_state(checkpoint / "trainer.json", trainer_state)
    dataset = _open_run_dataset(config, run_dir)
    if dataset.source_sha256 != trainer_state.get("data_sha256"):
        raise ConfigError(f"the dataset in {dataset.folder} is not the one this run trained on (source sha256 "
                          f"{dataset.source_sha256[:12]}... vs {str(trainer_state.get('data_sha256'))[:12]}...): "
                          "restore the original data, or start a new run")
    run_tokenizer = json.loads((run_dir / "tokenizer.json").read_text())
    if dataset.tokenizer.to_dict() != run_tokenizer:
        raise ConfigError(f"the tokenizer of {dataset.folder} differs from the run's tokenizer.json: "
                          "restore the original data, or start a new run")
    if dist is None or dist.is_main:
        remove_partial_checkpoints(run_dir)
    try:
        return Trainer(config, dataset, run_dir, resume_state={"checkpoint": checkpoint, "trainer": trainer_state},
                       progress=progress, dist=dist)
    except QuillError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
        raise CheckpointError(f"{checkpoint} cannot be restored ({type(exc).__name__}: {exc}): "
                              "was trainer.json edited? resume from a copy of an intact run") from None
