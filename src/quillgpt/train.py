"""The training loop: AdamW, warmup + cosine schedule, accumulation, clipping, eval, checkpoints.

One step (``Trainer.train_step``) is: for each of ``grad_accum`` micro-batches, forward
and backward with the loss divided by ``grad_accum`` (so the gradient is the mean over
the whole batch); clip the global gradient norm; set the learning rate; AdamW step.
Every ``eval_interval`` steps the mean train and val loss over ``eval_iters`` batches is
logged to ``metrics.jsonl`` and ``loss.png`` and a checkpoint is written.
"""

from __future__ import annotations

import base64
import contextlib
import math
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from quillgpt.checkpoint import (
    mark_best,
    optimizer_from_checkpoint,
    optimizer_to_checkpoint,
    prune_checkpoints,
    read_tensors,
    rng_from_checkpoint,
    rng_to_checkpoint,
    write_checkpoint,
    write_run_files,
)
from quillgpt.config import RunConfig
from quillgpt.data import TrainingData, split_batch, unpadded_tokens
from quillgpt.device import resolve_device, resolve_dtype
from quillgpt.distributed import Distributed
from quillgpt.errors import ConfigError, QuillError
from quillgpt.metrics import MetricsLog, plot_losses
from quillgpt.models import LanguageModel, build_model
from quillgpt.optim import MuonAdamW, hidden_matrices
from quillgpt.tracking import require_all


class TrainingError(QuillError):
    """Training cannot go on (e.g. the loss became NaN)."""


class _EvalInterruptedError(Exception):
    """SIGINT/SIGTERM arrived in the middle of an eval."""


# ---------------------------------------------------------------------------------------
# Precision (which device and dtype: quillgpt.device)
# ---------------------------------------------------------------------------------------


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision: matmuls in ``dtype``, numerically sensitive ops kept in float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------
# Optimizer and schedule
# ---------------------------------------------------------------------------------------


def learning_rate(step: int, config: RunConfig) -> float:
    """Linear warmup for ``warmup_iters`` steps, then cosine decay from lr to min_lr
    (or, for ``wsd``, lr held until the last ``decay_frac`` of the steps, then a linear decay)."""
    t = config.train
    if t.lr_schedule == "constant":
        return t.lr
    if step < t.warmup_iters:
        return t.lr * (step + 1) / t.warmup_iters
    if t.lr_schedule == "wsd":
        decay_steps = round(t.decay_frac * t.max_iters)
        into_decay = step - (t.max_iters - decay_steps)
        if into_decay < 0:
            return t.lr
        return t.lr + min(1.0, (into_decay + 1) / max(1, decay_steps)) * (t.min_lr - t.lr)
    span = max(1, t.max_iters - t.warmup_iters)
    progress = min(1.0, (step - t.warmup_iters) / span)
    return t.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (t.lr - t.min_lr)


def make_optimizer(model: torch.nn.Module, config: RunConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (biases and LayerNorm gains are not decayed);
    with ``optimizer = "muon"`` the matrices inside the blocks go to Muon instead (optim.py)."""
    t = config.train
    params = [p for p in model.parameters() if p.requires_grad]
    if t.optimizer == "muon":
        hidden = hidden_matrices(model)
        groups = [{"params": [p for p in params if id(p) in hidden], "muon": True, "lr_scale": t.muon_lr / t.lr},
                  {"params": [p for p in params if id(p) not in hidden and p.dim() >= 2],
                   "weight_decay": t.weight_decay},
                  {"params": [p for p in params if id(p) not in hidden and p.dim() < 2]}]
        return MuonAdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), ns_dtype=resolve_dtype("auto", device))
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    extra = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), **extra)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What one ``Trainer.train`` call did; the losses are the last eval's (None without one)."""

    run_dir: Path
    steps: int
    seconds: float
    train_loss: float | None
    val_loss: float | None
    eval_seconds: float
    best_val_loss: float | None
    best_step: int | None
    interrupted: str | None = None  # "SIGINT" / "SIGTERM" when a signal stopped the run
    skipped_steps: int = 0
    val_bpc: float | None = None  # the final val loss as bits per character (an estimate)


@dataclass(frozen=True)
class StepPlan:
    """What ``Trainer.train`` does at one step, decided before it trains the step (``Trainer._plan``)."""

    evaluate: bool = False  # estimate train and val loss (every eval_interval steps, and at the end)
    save: bool = False  # write a checkpoint (every save_every steps, and before stopping); a new best adds one
    stop: bool = False  # end the run instead of training this step
    log: bool = False  # after training it, log the mean loss since the last log line
    signal: str | None = None  # "SIGINT" / "SIGTERM" when a signal is what stops the run


class Trainer:
    """Owns the model, optimizer, batches and run directory of one training run."""

    def __init__(self, config: RunConfig, dataset: TrainingData, run_dir: str | Path,
                 resume_state: dict[str, Any] | None = None, progress: bool = True,
                 dist: Distributed | None = None) -> None:
        # A copy: the caller's config stays as it was; vocab_size comes from the tokenizer.
        config = config.replace({"model": {"vocab_size": dataset.tokenizer.vocab_size}})
        config.validate()
        dataset.check_block_size(config.model.block_size)
        self.config = config
        self.dataset = dataset
        self.run_dir = Path(run_dir)
        self.dist = dist or Distributed()
        if self.dist.is_main:  # a missing tracker package fails here, before the run directory is touched
            require_all(config.train.log_to)
        self.progress = progress and self.dist.is_main
        t = config.train
        self.device = resolve_device(t.device)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)  # one GPU per process
        self.dtype = resolve_dtype(t.dtype, self.device)
        if self.dtype == torch.float16 and self.device.type != "cuda":
            raise TrainingError("dtype float16 needs a CUDA GPU: use --dtype bfloat16 or float32 on this device")
        seed_everything(self.dist.seed(t.seed))  # distinct dropout masks per rank; rank 0 as one process
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: ~free speed on Ampere+
            torch.backends.cudnn.allow_tf32 = True
        self.model: LanguageModel = build_model(config.model).to(self.device)
        # DDP copies rank 0's weights to every rank here, and from then on averages the
        # gradients across ranks during backward.
        self.ddp = (torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            if self.dist.enabled else None)
        wrapped = self.ddp if self.ddp is not None else self.model
        self.forward_model = torch.compile(wrapped) if t.compile else wrapped
        self.optimizer = make_optimizer(self.model, config, self.device)
        self.scaler = torch.amp.GradScaler(enabled=self.dtype == torch.float16)
        block, batch = config.model.block_size, t.batch_size
        self.train_batches = dataset.batches("train", batch, block, self.dist.seed(t.seed), self.device)
        self.eval_batches = {split: dataset.batches(split, batch, block, self.dist.seed(t.seed + 1 + i), self.device)
                             for i, split in enumerate(("train", "val"))}
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")
        self.step = 0
        self.best_val: float | None = None
        self.best_step: int | None = None
        self.last_eval: dict[str, Any] | None = None
        self.eval_seconds = 0.0
        self.last_eval_step: int | None = None
        self.last_save_step: int | None = None
        self.skipped_steps = 0
        self.stop_signal: int | None = None
        self._pending: list[torch.Tensor] = []  # per-step losses not yet logged (kept on the device)
        # input tokens of this process since the last log, padding left out (for tokens/s); on the device
        self._tokens_seen = torch.zeros((), dtype=torch.long, device=self.device)
        if resume_state is not None:
            self._restore(resume_state)
        elif self.dist.is_main:
            write_run_files(self.run_dir, config, dataset.tokenizer, dataset.info())
            self.metrics.path.unlink(missing_ok=True)

    # -- one step ----------------------------------------------------------------------

    def accumulate_gradients(self) -> torch.Tensor:
        """Forward and backward ``grad_accum`` micro-batches; returns their mean loss.

        Each loss is divided by ``grad_accum``, so the summed gradient is the mean over all
        micro-batches: k micro-batches of B rows give the gradient of one batch of k * B.
        Under DDP the gradients are averaged across ranks only in the last backward.
        """
        t = self.config.train
        total = torch.zeros((), device=self.device)
        for micro in range(t.grad_accum):
            last = micro == t.grad_accum - 1
            x, y, inputs = split_batch(self.train_batches.next())  # inputs: packed rows' positions
            self._tokens_seen += unpadded_tokens(y)
            no_sync = self.ddp.no_sync() if self.ddp is not None and not last else contextlib.nullcontext()
            with no_sync:
                with autocast(self.device, self.dtype):
                    _, loss = self.forward_model(x, y, **inputs)
                loss = loss / t.grad_accum
                self.scaler.scale(loss).backward()
            total += loss.detach()
        return total

    def train_step(self) -> torch.Tensor:
        """One optimizer update; returns the mean loss (a tensor: reading it syncs the device).

        With ``skip_nonfinite`` a step whose loss is NaN/inf changes nothing (no update);
        that needs the loss on the host every step, so it is off by default.
        """
        t = self.config.train
        lr = learning_rate(self.step, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        total = self.accumulate_gradients()
        if t.skip_nonfinite and not torch.isfinite(self.dist.mean(total)).item():  # every rank skips, or none
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self.skipped_steps += 1
            self._record({"kind": "skip", "step": self.step, "reason": "non-finite loss"})
            return total
        if t.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total

    @torch.no_grad()
    def estimate_loss(self) -> dict[str, float]:
        """Mean loss over ``eval_iters`` batches of each split, in eval mode (no dropout)."""
        saved = {split: b.state_dict() for split, b in self.eval_batches.items()}
        self.model.eval()
        out = {}
        try:
            for split, batches in self.eval_batches.items():
                losses = torch.zeros(self.config.train.eval_iters, device=self.device)
                for i in range(len(losses)):
                    if self.stop_signal is not None and not self.dist.enabled:  # ranks must not diverge
                        raise _EvalInterruptedError
                    x, y, inputs = split_batch(batches.next())
                    with autocast(self.device, self.dtype):
                        _, loss = self.forward_model(x, y, **inputs)
                    losses[i] = loss
                out[split] = self.dist.mean(losses.mean()).item()
        except _EvalInterruptedError:
            # Undo the partial eval so a resumed run draws the same eval batches again.
            for split, batches in self.eval_batches.items():
                batches.load_state_dict(saved[split])
            raise
        finally:
            self.model.train()
        return out

    # -- the loop ----------------------------------------------------------------------

    def train(self, stop_at: int | None = None) -> TrainResult:
        """Train to ``max_iters``; stop early after step ``stop_at`` or on SIGINT/SIGTERM.

        Each stop before the end saves a checkpoint first, from which ``--resume`` continues
        exactly: a resumed run computes the same numbers as one that never stopped.
        """
        t = self.config.train
        start_step, started = self.step, time.perf_counter()
        bar = tqdm(total=t.max_iters, initial=self.step, disable=not self.progress, desc="train",
                   unit="step", dynamic_ncols=True)
        self.model.train()
        self._tick, self._tick_step = time.perf_counter(), self.step - len(self._pending)
        try:
            with self._catch_stop_signals(), self._tracking():
                while True:
                    plan = self._plan(stop_at, started)
                    new_best = False
                    if plan.evaluate:
                        try:
                            new_best = self._evaluate(started, bar)
                        except _EvalInterruptedError:
                            continue  # the next plan saves and stops; the eval reruns on resume
                    if plan.save or (new_best and self.step > 0):  # a new best val loss is always kept
                        self.save(new_best)
                    if plan.stop:
                        break
                    self._pending.append(self.train_step())
                    bar.update(1)
                    if plan.log:
                        self._log_train(bar)
        finally:
            bar.close()
        last = self.last_eval or {}
        return TrainResult(run_dir=self.run_dir, steps=self.step - start_step, seconds=time.perf_counter() - started,
                           train_loss=last.get("train_loss"), val_loss=last.get("val_loss"),
                           eval_seconds=self.eval_seconds, best_val_loss=self.best_val, best_step=self.best_step,
                           interrupted=plan.signal, skipped_steps=self.skipped_steps, val_bpc=last.get("val_bpc"))

    def _plan(self, stop_at: int | None, started: float) -> StepPlan:
        """Every eval/save/stop/log decision for the step about to train (``self.step``), in one place.

        A stop signal wins (save, stop); otherwise the run ends at max_iters or when its time is
        spent, and pauses at ``stop_at``; every stop saves first, so ``--resume`` continues exactly.
        A step is never saved twice, nor evaluated twice (a resumed run restarts at a saved step).
        """
        t = self.config.train
        step = self.step
        unsaved = step > 0 and self.last_save_step != step  # step 0 holds nothing worth a checkpoint
        if self._stop_requested():
            return StepPlan(save=unsaved, stop=True, signal=signal.Signals(self.stop_signal).name)
        end = step >= t.max_iters or self._out_of_time(started)
        paused = stop_at is not None and step >= stop_at
        eval_due = step % t.eval_interval == 0 and (step > 0 or t.eval_first)
        save_due = step % (t.save_every or t.eval_interval) == 0
        return StepPlan(evaluate=(eval_due or end) and self.last_eval_step != step,
                        save=unsaved and (save_due or end or paused),
                        stop=end or paused,
                        log=(step + 1) % t.log_interval == 0)  # train_step counts this step: self.step + 1

    def _out_of_time(self, started: float) -> bool:
        """The wall-clock budget of this process (``max_minutes``, 0 = none) is spent.

        Under DDP the ranks agree at log points (like ``_stop_requested``), so all stop at one step.
        """
        limit = self.config.train.max_minutes
        if limit <= 0:
            return False
        spent = time.perf_counter() - started >= 60 * limit
        if not self.dist.enabled:
            return spent
        return self.step % self.config.train.log_interval == 0 and self.dist.any(spent, self.device)

    @contextlib.contextmanager
    def _catch_stop_signals(self) -> Iterator[None]:
        """Turn SIGINT/SIGTERM into a flag the loop checks between steps, so it can save first."""
        self.stop_signal = None
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def remember(signum: int, frame: object) -> None:
            self.stop_signal = signum

        previous = {sig: signal.signal(sig, remember) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @contextlib.contextmanager
    def _tracking(self) -> Iterator[None]:
        """The trackers of --log-to, fed by every metrics record of this run; rank 0 alone logs under DDP.

        A resumed run starts at ``self.step``, so its trackers continue the same runs from there.
        """
        log_to = self.config.train.log_to if self.dist.is_main else ""
        with self.metrics.tracking(log_to, self.config.to_dict(), self.step) as trackers:
            yield
            trackers.log_image("loss", self.run_dir / "loss.png", self.step)

    def _stop_requested(self) -> bool:
        """Has a stop signal arrived? Under DDP the ranks agree at log points, so all stop at one step."""
        if not self.dist.enabled:
            return self.stop_signal is not None
        if self.step % self.config.train.log_interval != 0:
            return False
        if self.dist.any(self.stop_signal is not None, self.device):
            self.stop_signal = self.stop_signal or signal.SIGTERM
            return True
        return False

    def _record(self, record: dict[str, Any]) -> None:
        if self.dist.is_main:
            self.metrics.append(record)

    def _log_train(self, bar: tqdm) -> None:
        """Log the mean loss since the last log; the only host-device sync outside evals."""
        values = self.dist.mean(torch.stack(self._pending)).tolist()  # the mean over all ranks
        first_step = self.step - len(values) + 1
        for offset, value in enumerate(values):
            if not math.isfinite(value) and not self.config.train.skip_nonfinite:
                raise TrainingError(
                    f"loss became {value} at step {first_step + offset}: lower --lr, keep --grad-clip on, "
                    f"or pass --skip-nonfinite; the last good checkpoint is in {self.run_dir}")
        finite = [v for v in values if math.isfinite(v)]
        now = time.perf_counter()
        steps = max(1, self.step - self._tick_step)
        tokens = self.dist.mean(self._tokens_seen.float()).item() * self.dist.world_size  # all ranks'
        self._tokens_seen.zero_()
        record = {"kind": "train", "step": self.step, "loss": sum(finite) / len(finite) if finite else None,
                  "lr": learning_rate(self.step - 1, self.config),
                  "ms_per_step": 1000 * (now - self._tick) / steps, "tokens_per_s": tokens / (now - self._tick)}
        self._record(record)
        if record["loss"] is not None:
            bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
        self._tick, self._tick_step, self._pending = now, self.step, []

    def _evaluate(self, started: float, bar: tqdm) -> bool:
        """Estimate the losses, log and plot them; True when the val loss is the best so far."""
        tic = time.perf_counter()
        losses = self.estimate_loss()
        self.eval_seconds += time.perf_counter() - tic
        self.last_eval_step = self.step
        record = {"kind": "eval", "step": self.step, "train_loss": losses["train"], "val_loss": losses["val"],
                  "lr": learning_rate(max(0, self.step - 1), self.config),
                  "elapsed_s": round(time.perf_counter() - started, 3)}
        bpc = self.dataset.bits_per_char(losses["val"], "val")
        if bpc is not None and math.isfinite(bpc):
            record["val_bpc"] = bpc  # comparable across tokenizers, unlike the loss per token
        self._record(record)
        self.last_eval = record
        bpc_shown = {"val_bpc": f"{record['val_bpc']:.3f}"} if "val_bpc" in record else {}  # none for a task run
        bar.set_postfix(train=f"{record['train_loss']:.4f}", val=f"{record['val_loss']:.4f}", **bpc_shown)
        if self.dist.is_main:
            plot_losses(self.metrics.read(), self.run_dir / "loss.png", title=f"{self.run_dir.name}")
        if not math.isfinite(losses["val"]):
            raise TrainingError(f"validation loss is {losses['val']} at step {self.step}: training diverged; "
                                "lower --lr")
        if self.best_val is None or losses["val"] < self.best_val:
            self.best_val, self.best_step = losses["val"], self.step
            return True
        return False

    # -- checkpoints -------------------------------------------------------------------

    def save(self, is_best: bool = False) -> Path | None:
        """Write a checkpoint (rank 0; under DDP every rank must call this, to hand over its state)."""
        ranks = self.dist.gather(self._rank_state()) if self.dist.enabled else None
        if not self.dist.is_main:
            self.last_save_step = self.step
            return None
        opt_tensors, opt_meta = optimizer_to_checkpoint(self.optimizer)
        rng_tensors, rng_meta = rng_to_checkpoint()
        trainer_state = {
            "best_val": self.best_val, "best_step": self.best_step, "last_eval": self.last_eval,
            "last_eval_step": self.last_eval_step, "skipped_steps": self.skipped_steps,
            # Losses of the steps since the last log line, so the next line averages the same steps.
            "pending_losses": torch.stack(self._pending).tolist() if self._pending else [],
            "optimizer": opt_meta, "rng": rng_meta, "data_sha256": self.dataset.source_sha256,
            "batches": {"train": self.train_batches.state_dict(),
                        **{f"eval_{k}": b.state_dict() for k, b in self.eval_batches.items()}},
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "world_size": self.dist.world_size,
        }
        if ranks is not None:
            trainer_state["ranks"] = ranks  # each rank's own batches, losses and dropout RNG
        path = write_checkpoint(self.run_dir, self.step, self.model.state_dict(),
                                {**opt_tensors, **rng_tensors}, trainer_state)
        self.last_save_step = self.step
        if is_best:
            mark_best(self.run_dir, path, self.step, float(self.best_val))
        prune_checkpoints(self.run_dir, self.config.train.keep_last)
        return path

    def _restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint: weights, optimizer, RNGs, batch samplers, metrics."""
        checkpoint: Path = state["checkpoint"]
        self.model.load_state_dict(read_tensors(checkpoint / "model.safetensors", self.model.state_dict(),
                                                self.device))
        trainer = state["trainer"]
        tensors = read_tensors(checkpoint / "optimizer.safetensors", device=self.device)
        optimizer_from_checkpoint(self.optimizer, tensors, trainer["optimizer"])
        rng_from_checkpoint(tensors, trainer["rng"])
        self.train_batches.load_state_dict(trainer["batches"]["train"])
        for split, batches in self.eval_batches.items():
            batches.load_state_dict(trainer["batches"][f"eval_{split}"])
        if trainer.get("scaler"):
            self.scaler.load_state_dict(trainer["scaler"])
        self.step = int(trainer["step"])
        self.best_val, self.best_step = trainer.get("best_val"), trainer.get("best_step")
        self.last_eval = trainer.get("last_eval")
        self.last_eval_step = trainer.get("last_eval_step")
        self.skipped_steps = int(trainer.get("skipped_steps", 0))
        self.last_save_step = self.step
        self._pending = [torch.tensor(v, device=self.device) for v in trainer.get("pending_losses", [])]
        saved_world = int(trainer.get("world_size", 1))
        if saved_world != self.dist.world_size:
            raise ConfigError(f"this run trained with {saved_world} process(es), not {self.dist.world_size}: "
                              f"resume it with torchrun --nproc_per_node={saved_world} (or without torchrun for 1)")
        if self.dist.enabled:
            self._restore_rank_state(trainer["ranks"][self.dist.rank])
        if self.dist.is_main:
            self.metrics.truncate_after(self.step)

    def _rank_state(self) -> dict[str, Any]:
        """What differs between DDP ranks: batch samplers, unlogged losses, the dropout RNG."""
        state: dict[str, Any] = {
            "batches": {"train": self.train_batches.state_dict(),
                        **{f"eval_{k}": b.state_dict() for k, b in self.eval_batches.items()}},
            "pending_losses": torch.stack(self._pending).tolist() if self._pending else [],
            "torch_rng": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = base64.b64encode(torch.cuda.get_rng_state(self.device).numpy().tobytes()).decode()
        return state

    def _restore_rank_state(self, state: dict[str, Any]) -> None:
        def raw(text: str) -> torch.Tensor:
            return torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype=np.uint8).copy())

        self.train_batches.load_state_dict(state["batches"]["train"])
        for split, batches in self.eval_batches.items():
            batches.load_state_dict(state["batches"][f"eval_{split}"])
        self._pending = [torch.tensor(v, device=self.device) for v in state["pending_losses"]]
        torch.set_rng_state(raw(state["torch_rng"]))
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(raw(state["cuda_rng"]), self.device)
