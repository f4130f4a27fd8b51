"""``run_training``: the one way from the command line into the Trainer, for ``quill train`` and ``quill sft``.

A command builds and validates its RunConfig (or names a run to resume); this module chooses the
run directory, opens the data, starts from a trained run's weights if asked, trains, and prints
the summary and what to try next. Under torchrun every process runs it and rank 0 does the talking.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from quillgpt import distributed
from quillgpt.checkpoint import LoadedRun, read_config
from quillgpt.commands.common import print_sample
from quillgpt.config import RunConfig
from quillgpt.errors import ConfigError
from quillgpt.posttrain.chat_eval import ChatReport, answer_all
from quillgpt.pretrained import apply_init, check_same_tokenizer
from quillgpt.resume import resume_trainer
from quillgpt.tasks.dataset import open_dataset
from quillgpt.tasks.exact_match import Report, attempt_all
from quillgpt.train import Trainer, TrainResult

DEFAULT_PRESET = "cpu-small"
Overrides = dict[str, dict[str, Any]]


def run_training(config: RunConfig | None, name: str = "", *, resume: Path | None = None,
                 overrides: Overrides | None = None, init: LoadedRun | None = None, data: str | None = None,
                 overwrite: bool = False, progress: bool = True, stop_at: int | None = None) -> int:
    """Train ``config`` (validated) into ``config.train.out_dir``, or runs/NAME, runs/NAME-2, ...;
    or, with ``config`` None, continue the run ``resume`` (``overrides`` may change its train fields).

    ``init``: the trained run whose weights start the model (--init-from, quill sft); ``data``: where
    a named corpus file is. Returns the exit code (130/143 after SIGINT/SIGTERM, with a checkpoint).
    """
    overrides = overrides or {}
    if config is None:
        if resume is None:
            raise ValueError("run_training needs a config or a run to resume")
        device = overrides.get("train", {}).get("device") or read_config(resume).train.device
    else:
        device = config.train.device
    dist = distributed.setup(device)
    try:
        if config is None:
            trainer = resume_trainer(resume, overrides, progress=progress, dist=dist)
            _say(dist, f"resuming {trainer.run_dir} from step {trainer.step}")
        else:
            trainer = _new_trainer(config, name, init, data, overwrite, progress, dist)
        code = _train_and_report(trainer, dist, stop_at)
        # All ranks finish before the group closes: gloo aborts a rank whose peer has already left.
        dist.barrier()
        return code
    finally:
        distributed.teardown()


def _say(dist: distributed.Distributed, message: str) -> None:
    if dist.is_main:  # the other ranks keep quiet
        print(message)


def _new_trainer(config: RunConfig, name: str, init: LoadedRun | None, data: str | None, overwrite: bool,
                 progress: bool, dist: distributed.Distributed) -> Trainer:
    dataset = open_dataset(config, data, base_tokenizer=init.tokenizer if init else None)
    if init:  # before the run directory is chosen (and, with --overwrite, cleared)
        check_same_tokenizer(dataset, init)
    # Rank 0 picks (and, with --overwrite, clears) the run directory; the others follow.
    run_dir = dist.broadcast(choose_run_dir(config, name, overwrite) if dist.is_main else None)
    trainer = Trainer(config, dataset, run_dir, progress=progress, dist=dist)
    if init:
        apply_init(trainer, init)
        _say(dist, f"initialised from {init.run_dir} ({init.checkpoint.name}); fresh optimizer and schedule")
    processes = f" x {dist.world_size} processes" if dist.enabled else ""
    _say(dist, f"training {name}: {trainer.model.num_parameters():,} parameters on "
               f"{trainer.device}{processes} ({str(trainer.dtype).removeprefix('torch.')}), run dir {run_dir}")
    return trainer


def _train_and_report(trainer: Trainer, dist: distributed.Distributed, stop_at: int | None) -> int:
    result = trainer.train(stop_at=stop_at)
    if not dist.is_main:
        return 130 if result.interrupted == "SIGINT" else 143 if result.interrupted else 0
    arithmetic, chat = trainer.config.arithmetic.enabled, trainer.config.chat.enabled
    print(summarize(result, next_step=f"quill task eval {result.run_dir}" if arithmetic else
                    f"quill chat {result.run_dir}" if chat else
                    f"quill sample {result.run_dir} --prompt \"ROMEO:\" --max-new-tokens 500"))
    if result.interrupted:
        print(f"\ninterrupted by {result.interrupted} at step {trainer.step}: checkpoint saved in "
              f"{trainer.run_dir}; continue with: quill train --resume {trainer.run_dir}", file=sys.stderr)
        return 130 if result.interrupted == "SIGINT" else 143
    if arithmetic:
        print_task_accuracy(trainer)
    elif chat and trainer.config.chat.builtin:
        print_chat_accuracy(trainer)
    elif trainer.config.train.sample_chars:
        print(f"\n--- sample ({trainer.config.train.sample_chars} tokens) ---")
        print_sample(trainer.model, trainer.dataset.tokenizer, "", trainer.config.train.sample_chars,
                     temperature=1.0, top_k=None, top_p=None, seed=trainer.config.train.seed, device=trainer.device)
    return 0


def choose_run_dir(config: RunConfig, name: str, overwrite: bool) -> Path:
    """``config.train.out_dir``, else runs/NAME (runs/NAME-2, ... if taken); never silently reuses a run."""
    if config.train.out_dir:
        run_dir = Path(config.train.out_dir)
        if (run_dir / "config.json").exists() and not overwrite:
            raise ConfigError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, "
                              "choose another --out-dir, or pass --overwrite to start over")
        if overwrite:
            _clear_run_dir(run_dir)
        return run_dir
    base = Path("runs") / (name or DEFAULT_PRESET)
    run_dir, n = base, 1
    while (run_dir / "config.json").exists():  # keep earlier runs: runs/tiny, runs/tiny-2, ...
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    return run_dir


def _clear_run_dir(run_dir: Path) -> None:
    for name in ("checkpoints", "latest.json", "best.json", "metrics.jsonl", "loss.png"):
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def print_task_accuracy(trainer: Trainer, n: int = 500) -> None:
    """Exact match on (up to) ``n`` problems of the held-out val set, after training."""
    held_out = trainer.dataset.val_pool[:n]
    report = Report(attempt_all(trainer.model, held_out, trainer.config.arithmetic.format, trainer.device,
                                position=trainer.config.model.position))
    print("\n" + report.format(f"held-out accuracy ({len(held_out)} problems of the val set)"))


def print_chat_accuracy(trainer: Trainer, n: int = 500) -> None:
    """Format and exact match of greedy replies to (up to) ``n`` held-out questions, after SFT."""
    held_out = trainer.dataset.val_questions[:n]
    report = ChatReport(answer_all(trainer.model, trainer.dataset.tokenizer, held_out))
    print("\n" + report.format(f"held-out replies ({len(held_out)} questions of the val set)"))


def summarize(result: TrainResult, next_step: str = "") -> str:
    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.4f}"

    bpc = f" ({result.val_bpc:.4f} bits/char)" if getattr(result, "val_bpc", None) else ""
    return (f"\ndone: {result.steps:,} steps in {result.seconds:.1f} s ({result.eval_seconds:.1f} s of it in evals); "
            f"final train loss {fmt(result.train_loss)}, "
            f"val loss {fmt(result.val_loss)}{bpc}; best val {fmt(result.best_val_loss)} at step {result.best_step}\n"
            f"run dir: {result.run_dir} (loss curve: {result.run_dir / 'loss.png'})"
            + (f"\nnext:    {next_step}" if next_step else ""))
