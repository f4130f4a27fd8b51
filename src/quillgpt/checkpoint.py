"""Run directories and checkpoints: safetensors for tensors, JSON for everything else.

    runs/NAME/
      config.json  tokenizer.json  data.json     written once when the run starts
      init.json                                  only a run started with --init-from RUN
      checkpoints/step-00000500/                 one complete checkpoint per folder:
          model.safetensors  optimizer.safetensors  trainer.json  tokenizer.json  manifest.json
      latest.json  best.json                     pointers to checkpoint folders
      metrics.jsonl  loss.png

A checkpoint is several files that must agree with each other, so a checkpoint is a
folder: it is written under a temporary name, every file is fsynced, ``manifest.json``
(sizes and sha256 of the others) is written last, and only then is the folder renamed
into place and ``latest.json`` atomically pointed at it. A crash at any moment leaves
``latest.json`` pointing at the previous complete checkpoint. Loading never unpickles
anything, and checks the manifest, keys, shapes and dtypes before using a tensor.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import quillgpt
from quillgpt.config import RunConfig
from quillgpt.errors import CheckpointError, QuillError
from quillgpt.fsutil import atomic_write_json, fsync_dir, sha256_file
from quillgpt.models import LanguageModel, build_model
from quillgpt.tokenizers import Tokenizer, tokenizer_from_dict

FORMAT_VERSION = 1
CHECKPOINTS = "checkpoints"
STEP_PREFIX = "step-"
SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "F64": torch.float64, "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8}


# ---------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------


def write_run_files(run_dir: Path, config: RunConfig, tokenizer: Tokenizer, data_info: dict) -> None:
    """Write the run's config, tokenizer and data description (atomically, each)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "config.json", {"format_version": FORMAT_VERSION,
                                                "quillgpt_version": quillgpt.__version__, **config.to_dict()})
    atomic_write_json(run_dir / "tokenizer.json", tokenizer.to_dict())
    atomic_write_json(run_dir / "data.json", data_info)


def _cpu_contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU copies to save. safetensors refuses two names for one storage (a GPT with tied
    embedding and lm_head), so a repeated storage is saved as a copy; loading writes both
    names into the one shared parameter, so the model stays tied."""
    out, seen = {}, set()
    for name, value in tensors.items():
        tensor = value.detach().to("cpu").contiguous()
        storage = tensor.untyped_storage().data_ptr()
        out[name] = tensor.clone() if storage in seen else tensor
        seen.add(storage)
    return out


def write_checkpoint(run_dir: Path, step: int, model_state: dict[str, torch.Tensor],
                     state_tensors: dict[str, torch.Tensor] | None = None,
                     trainer_state: dict[str, Any] | None = None,
                     extra_files: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Write one complete checkpoint folder and point ``latest.json`` at it.

    ``extra_files``: more safetensors files for the folder (a reward model's head), in the manifest too.

    If the disk is full or not writable, raise a CheckpointError and leave the previous
    checkpoint (and ``latest.json``) exactly as they were.
    """
    try:
        return _write_checkpoint(run_dir, step, model_state, state_tensors, trainer_state, extra_files or {})
    except OSError as exc:
        previous = _pointer_target(run_dir, "latest.json")
        kept = f"the previous checkpoint {previous.name} is intact" if previous else "no earlier checkpoint exists"
        raise CheckpointError(
            f"could not write the checkpoint for step {step} in {run_dir / CHECKPOINTS}: "
            f"{exc.strerror or exc} (errno {exc.errno}); {kept}: free disk space or fix permissions, "
            f"then continue with quill train --resume {run_dir}") from None


def _fault_delay() -> float:
    # Test hook: seconds to sleep after each file of a checkpoint, so a test can kill the
    # process in the middle of a checkpoint write. Never set in normal use.
    try:
        return float(os.environ.get("QUILL_FAULT_CHECKPOINT_DELAY", "0"))
    except ValueError:
        return 0.0


def _write_checkpoint(run_dir: Path, step: int, model_state: dict[str, torch.Tensor],
                      state_tensors: dict[str, torch.Tensor] | None,
                      trainer_state: dict[str, Any] | None, extra_files: dict[str, dict[str, torch.Tensor]]) -> Path:
    root = run_dir / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = f"{STEP_PREFIX}{step:08d}"
    final = root / name
    tmp = root / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        meta = {"format_version": str(FORMAT_VERSION), "step": str(step)}
        delay = _fault_delay()
        save_file(_cpu_contiguous(model_state), str(tmp / "model.safetensors"), metadata=meta)
        time.sleep(delay)
        if state_tensors:
            save_file(_cpu_contiguous(state_tensors), str(tmp / "optimizer.safetensors"), metadata=meta)
            time.sleep(delay)
        for file_name, tensors in extra_files.items():
            save_file(_cpu_contiguous(tensors), str(tmp / file_name), metadata=meta)
        (tmp / "trainer.json").write_text(json.dumps({"format_version": FORMAT_VERSION, "step": step,
                                                       **(trainer_state or {})}))
        time.sleep(delay)
        if (run_dir / "tokenizer.json").is_file():  # so a checkpoint folder can be used on its own
            shutil.copyfile(run_dir / "tokenizer.json", tmp / "tokenizer.json")
        files = sorted(p.name for p in tmp.iterdir())
        manifest = {"format_version": FORMAT_VERSION, "step": step,
                    "files": {f: {"bytes": (tmp / f).stat().st_size, "sha256": sha256_file(tmp / f)} for f in files}}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        for path in tmp.iterdir():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(tmp)
        if final.exists():  # re-saving the same step (e.g. after a resume): replace it
            shutil.rmtree(final)
        tmp.rename(final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_json(run_dir / "latest.json", {"step": step, "checkpoint": f"{CHECKPOINTS}/{name}"})
    return final


def mark_best(run_dir: Path, checkpoint: Path, step: int, val_loss: float | None = None, **scores: float) -> None:
    """Point ``best.json`` at ``checkpoint``: the lowest val loss (training), or the score named in
    ``scores`` (post-training keeps its best val exact match: ``val_accuracy``)."""
    measured = {"val_loss": val_loss} if val_loss is not None else {}
    atomic_write_json(run_dir / "best.json", {"step": step, **measured, **scores,
                                              "checkpoint": f"{CHECKPOINTS}/{checkpoint.name}"})


def remove_partial_checkpoints(run_dir: Path) -> None:
    """Delete folders left by a checkpoint write that was killed half-way."""
    for partial in (run_dir / CHECKPOINTS).glob(".tmp-*"):
        shutil.rmtree(partial, ignore_errors=True)


def prune_checkpoints(run_dir: Path, keep_last: int) -> None:
    """Delete old step checkpoints, keeping the newest ``keep_last`` and the best one."""
    keep = {_pointer_target(run_dir, "latest.json"), _pointer_target(run_dir, "best.json")}
    steps = sorted(p for p in (run_dir / CHECKPOINTS).glob(f"{STEP_PREFIX}*") if p.is_dir())
    keep.update(steps[-keep_last:])
    for old in steps:
        if old not in keep:
            shutil.rmtree(old, ignore_errors=True)


def _pointer_target(run_dir: Path, pointer: str) -> Path | None:
    try:
        return run_dir / json.loads((run_dir / pointer).read_text())["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------


@dataclass
class LoadedRun:
    """A run directory loaded for sampling, evaluation or resuming."""

    run_dir: Path
    config: RunConfig
    tokenizer: Tokenizer
    model: LanguageModel
    step: int
    checkpoint: Path
    trainer_state: dict[str, Any]
    data_info: dict[str, Any]


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {what}")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}): the run directory is corrupt") from None


def read_config(run_dir: Path) -> RunConfig:
    data = _read_json(run_dir / "config.json", "is this a quillgpt run directory? (made by quill train)")
    if not isinstance(data, dict):
        raise CheckpointError(f"{run_dir / 'config.json'} must hold a JSON object")
    version = data.pop("format_version", None)
    data.pop("quillgpt_version", None)
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{run_dir / 'config.json'} has format version {version!r}; this quillgpt "
                              f"reads version {FORMAT_VERSION}: retrain, or use the quillgpt that wrote it")
    try:
        config = RunConfig.from_dict(data)
        config.validate()
    except QuillError as exc:
        raise CheckpointError(f"{run_dir / 'config.json'} is invalid: {exc}") from None
    return config


def resolve_checkpoint(run_dir: Path, which: str = "latest") -> Path:
    """The checkpoint folder that ``latest.json`` or ``best.json`` points at."""
    if which not in ("latest", "best"):
        raise CheckpointError(f"unknown checkpoint '{which}': use latest or best")
    pointer = _read_json(run_dir / f"{which}.json", "the run has no checkpoint yet (train it first)")
    target = pointer.get("checkpoint") if isinstance(pointer, dict) else None
    if not isinstance(target, str) or not target.startswith(f"{CHECKPOINTS}/{STEP_PREFIX}") or ".." in target:
        raise CheckpointError(f"{run_dir / (which + '.json')} does not name a checkpoint folder: the run is corrupt")
    return run_dir / target


def verify_manifest(checkpoint: Path) -> dict[str, Any]:
    """Check every file against the sizes and sha256 recorded when it was written."""
    manifest = _read_json(checkpoint / "manifest.json", "the checkpoint is incomplete")
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or "model.safetensors" not in files:
        raise CheckpointError(f"{checkpoint / 'manifest.json'} is malformed: the checkpoint is corrupt")
    for name, expected in files.items():
        path = checkpoint / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: the checkpoint is incomplete")
        if not isinstance(expected, dict) or path.stat().st_size != expected.get("bytes"):
            raise CheckpointError(f"{path} has the wrong size (truncated?): the checkpoint is corrupt")
        if sha256_file(path) != expected.get("sha256"):
            raise CheckpointError(f"{path} does not match its sha256 in manifest.json: the checkpoint is corrupt")
    return manifest


def read_tensors(path: Path, expected: dict[str, torch.Tensor] | None = None,
                 device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file; with ``expected``, check names, shapes and dtypes first."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            names = set(handle.keys())
            if expected is not None:
                _check_layout(path, handle, names, expected)
            return {name: handle.get_tensor(name).to(device) for name in names}
    except QuillError:
        raise
    except Exception as exc:  # safetensors raises several types for a damaged header
        raise CheckpointError(f"{path} is not a readable safetensors file ({type(exc).__name__}): "
                              "the checkpoint is corrupt") from None


def _check_layout(path: Path, handle: Any, names: set[str], expected: dict[str, torch.Tensor]) -> None:
    missing, unexpected = sorted(set(expected) - names), sorted(names - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit the model in config.json (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}): was config.json edited?")
    for name, ref in expected.items():
        tensor_slice = handle.get_slice(name)
        shape = list(tensor_slice.get_shape())
        if shape != list(ref.shape):
            raise CheckpointError(f"{path}: tensor {name} has shape {shape}, the model expects "
                                  f"{list(ref.shape)}: was config.json edited?")
        dtype = tensor_slice.get_dtype()
        if SAFETENSORS_DTYPES.get(dtype) != ref.dtype:
            raise CheckpointError(f"{path}: tensor {name} has dtype {dtype}, the model expects {ref.dtype}")


def load_run(run_dir: str | Path, which: str = "latest", device: str | torch.device = "cpu") -> LoadedRun:
    """Load a run's model (in eval mode), tokenizer and config, validating everything first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory not found: {run_dir} (check the path; runs live in runs/NAME)")
    config = read_config(run_dir)
    try:
        tokenizer = tokenizer_from_dict(_read_json(run_dir / "tokenizer.json", "the run is incomplete"))
    except CheckpointError:
        raise
    except QuillError as exc:
        raise CheckpointError(f"{run_dir / 'tokenizer.json'} is invalid: {exc}") from None
    if tokenizer.vocab_size != config.model.vocab_size:
        raise CheckpointError(f"tokenizer.json has {tokenizer.vocab_size} tokens but config.json says "
                              f"vocab_size {config.model.vocab_size}: the run directory is inconsistent")
    checkpoint = resolve_checkpoint(run_dir, which)
    verify_manifest(checkpoint)
    model = build_model(config.model)
    weights = read_tensors(checkpoint / "model.safetensors", model.state_dict())
    model.load_state_dict(weights)
    model.to(device).eval()
    trainer_state = _read_json(checkpoint / "trainer.json", "the checkpoint is incomplete")
    step = trainer_state.get("step") if isinstance(trainer_state, dict) else None
    if not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{checkpoint / 'trainer.json'} has no valid step: the checkpoint is corrupt")
    data_info = _read_json(run_dir / "data.json", "the run is incomplete")
    return LoadedRun(run_dir, config, tokenizer, model, step, checkpoint, trainer_state, data_info)


# ---------------------------------------------------------------------------------------
# Optimizer and RNG state <-> (tensors, JSON) for checkpoints
# ---------------------------------------------------------------------------------------


def optimizer_to_checkpoint(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_checkpoint(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                              meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for name, value in meta.get("scalars", {}).items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_to_checkpoint() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = cuda_state
    np_state = np.random.get_state()
    version, py_state, gauss = random.getstate()
    meta = {"python": [version, list(py_state), gauss],
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    return tensors, meta


def rng_from_checkpoint(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"].to("cpu", torch.uint8))
    cuda_states = [tensors[k].to("cpu", torch.uint8) for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    version, py_state, gauss = meta["python"]
    random.setstate((version, tuple(py_state), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
