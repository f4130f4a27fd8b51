"""Experiment trackers (``--log-to tensorboard,wandb,mlflow``): one small interface, one class per backend.

Every run (train, SFT, reward, RL, DPO) already writes its numbers through ``metrics.MetricsLog``;
when trackers are open, each record appended there also goes to them as scalars named
``KIND/FIELD`` (``eval/val_loss``, ``train/loss``) at the record's step. A run's config goes in
once as hyperparameters, and its loss plot as an image where the tracker takes one.

Where each writes:

- tensorboard: event files in ``RUN/tb`` (``tensorboard --logdir RUN/tb``);
- wandb: ``RUN/wandb``; offline (no account, no network) unless you are logged in (``wandb login``
  or ``WANDB_API_KEY``), and ``WANDB_MODE`` overrides both (``offline``, ``online``, ``disabled``);
  ``WANDB_PROJECT`` names the project (default quillgpt); ``wandb sync RUN/wandb/offline-run-*``
  uploads an offline run later;
- mlflow: ``MLFLOW_TRACKING_URI`` if set, else a file store in ``./mlruns`` (``mlflow ui``);
  experiment ``MLFLOW_EXPERIMENT_NAME`` (default quillgpt).

A resumed run (``quill train --resume``) goes on in the same tracker runs: ``RUN/trackers.json``
keeps the wandb and mlflow run ids, and TensorBoard drops the events past the step it resumes from.

The libraries are an optional extra (``pip install -e '.[track]'``), so each is imported inside
the function that needs it, and only when that tracker was asked for; the core install has none.
"""

from __future__ import annotations

import importlib
import json
import math
import netrc
import os
import struct
import time
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlparse

from quillgpt.config import tracker_names
from quillgpt.errors import QuillError
from quillgpt.fsutil import atomic_write_json

IDS_FILE = "trackers.json"  # the wandb and mlflow run ids of a run directory, for --resume
MODULES = {"tensorboard": "torch.utils.tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow-skinny"}


class TrackerError(QuillError):
    """A tracker could not be used (its package is missing)."""


def require(name: str) -> ModuleType:
    """Import tracker ``name``'s library, or a one-line error naming the extra that installs it."""
    try:
        return importlib.import_module(MODULES[name])
    except ImportError:
        raise TrackerError(f"--log-to {name} needs the {PACKAGES[name]} package: pip install -e '.[track]' "
                           f"(or pip install {PACKAGES[name]})") from None


def require_all(log_to: str) -> None:
    """Fail before a run starts if a tracker it names is not installed."""
    for name in tracker_names(log_to):
        require(name)


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics record's finite numbers, named ``KIND/FIELD`` (the step and strings are left out)."""
    kind = record.get("kind", "metrics")
    return {f"{kind}/{key}": float(value) for key, value in record.items()
            if key not in ("kind", "step") and isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value)}


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"n_embd": 64}}`` -> ``{"model.n_embd": 64}``: hyperparameters are flat in every tracker."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class Tracker:
    """What every backend does: config in at the start, scalars and images at a step, then finish."""

    name = ""

    def start(self, run_dir: Path, hyperparams: dict[str, Any], start_step: int, ids: dict[str, Any]) -> None:
        """Open the tracker's run; ``ids`` holds what an earlier part of this run saved (for --resume)."""
        raise NotImplementedError

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def log_image(self, tag: str, png: Path, step: int) -> None:
        raise NotImplementedError

    def finish(self, ok: bool) -> None:
        raise NotImplementedError


class TensorBoardTracker(Tracker):
    """Event files in RUN/tb, through torch's SummaryWriter (which needs the tensorboard package)."""

    name = "tensorboard"

    def start(self, run_dir: Path, hyperparams: dict[str, Any], start_step: int, ids: dict[str, Any]) -> None:
        tb = require("tensorboard")
        # purge_step: TensorBoard hides the events an earlier part of a resumed run logged at this step
        # or later; a run resumed at step S kept what it logged up to S (as metrics.jsonl does), so S + 1
        self.writer = tb.SummaryWriter(str(run_dir / "tb"), purge_step=start_step + 1 if start_step else None)
        flat = {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
                for k, v in flatten(hyperparams).items()}
        for summary in tb.summary.hparams(flat, {}):  # the HPARAMS tab (what add_hparams writes, in this run)
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text("config", "```\n" + json.dumps(hyperparams, indent=2) + "\n```", start_step)

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def log_image(self, tag: str, png: Path, step: int) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary  # installed with torch.utils.tensorboard's need

        data = png.read_bytes()
        width, height = struct.unpack(">II", data[16:24])  # the PNG header's IHDR chunk
        image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=data)
        self.writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def finish(self, ok: bool) -> None:
        self.writer.close()


def wandb_mode() -> str:
    """WANDB_MODE if set; else online when logged in (WANDB_API_KEY or ``wandb login``'s netrc entry), else offline."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    # the server `wandb login` wrote the key for: wandb's own default (it changed across releases,
    # api.wandb.ai before 0.31), or WANDB_BASE_URL
    host = urlparse(os.environ.get("WANDB_BASE_URL") or require("wandb").Settings().base_url).hostname or ""
    try:
        return "online" if netrc.netrc(os.environ.get("NETRC")).authenticators(host) else "offline"
    except (OSError, netrc.NetrcParseError):
        return "offline"


class WandbTracker(Tracker):
    """A W&B run in RUN/wandb (offline unless logged in; ``wandb_mode``)."""

    name = "wandb"

    def start(self, run_dir: Path, hyperparams: dict[str, Any], start_step: int, ids: dict[str, Any]) -> None:
        wandb = require("wandb")
        previous = ids.get("wandb")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "quillgpt"), name=run_dir.name,
                              dir=str(run_dir), config=hyperparams, mode=wandb_mode(),
                              id=previous, resume="allow" if previous else None,
                              settings=wandb.Settings(console="off", silent=True))  # tqdm owns the terminal
        ids["wandb"] = self.run.id
        self.wandb = wandb

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def log_image(self, tag: str, png: Path, step: int) -> None:
        self.run.log({tag: self.wandb.Image(str(png))}, step=step)

    def finish(self, ok: bool) -> None:
        self.run.finish(exit_code=0 if ok else 1)


def mlflow_uri() -> str:
    """MLFLOW_TRACKING_URI if set, else a file store in ./mlruns."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    # MLflow 3.x keeps the file store but refuses it unless asked (it would rather have a database,
    # which needs the full mlflow package); a local folder needs no server, so ask.
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return Path("mlruns").resolve().as_uri()


class MlflowTracker(Tracker):
    """An MLflow run through ``MlflowClient`` (no global active run, so nothing leaks between runs)."""

    name = "mlflow"

    def start(self, run_dir: Path, hyperparams: dict[str, Any], start_step: int, ids: dict[str, Any]) -> None:
        mlflow = require("mlflow")
        from mlflow.entities import Param

        uri = mlflow_uri()
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        previous = ids.get("mlflow") or {}
        if previous.get("uri") == uri:  # --resume: the same run, in the same store
            self.run_id = previous["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            known = self.client.get_run(self.run_id).data.params  # a param's value cannot change: keep the first
        else:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "quillgpt")
            experiment = self.client.get_experiment_by_name(name)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
            run = self.client.create_run(experiment_id, run_name=run_dir.name,
                                         tags={"quill.run_dir": str(run_dir.resolve())})
            self.run_id, known = run.info.run_id, {}
        ids["mlflow"] = {"uri": uri, "run_id": self.run_id}
        params = [Param(k, str(v)[:6000]) for k, v in flatten(hyperparams).items() if k not in known]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def log_image(self, tag: str, png: Path, step: int) -> None:
        self.client.log_artifact(self.run_id, str(png), artifact_path="plots")

    def finish(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


BACKENDS: dict[str, type[Tracker]] = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker,
                                      "mlflow": MlflowTracker}


class Trackers:
    """The fan-out: every tracker a run asked for, fed together (none: every call does nothing)."""

    def __init__(self, trackers: Iterable[Tracker] = ()) -> None:
        self.trackers = list(trackers)

    def log_record(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl record, as scalars at its step."""
        values = scalars(record)
        if values and "step" in record:
            for tracker in self.trackers:
                tracker.log_scalars(values, int(record["step"]))

    def log_image(self, tag: str, png: Path, step: int) -> None:
        if png.is_file():
            for tracker in self.trackers:
                tracker.log_image(tag, png, step)

    def finish(self, ok: bool = True) -> None:
        for tracker in self.trackers:
            tracker.finish(ok)


def open_trackers(log_to: str, run_dir: Path, hyperparams: dict[str, Any], start_step: int = 0) -> Trackers:
    """Start every tracker ``log_to`` names for ``run_dir``; their run ids go to RUN/trackers.json.

    ``start_step`` > 0 continues a resumed run (see the module docstring).
    """
    names = tracker_names(log_to)
    if not names:
        return Trackers()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ids_path = run_dir / IDS_FILE
    ids: dict[str, Any] = {}
    if start_step > 0 and ids_path.is_file():
        try:
            ids = json.loads(ids_path.read_text())
        except ValueError:
            ids = {}  # unreadable: start new tracker runs rather than fail the training run
    opened = Trackers()
    try:
        for name in names:
            tracker = BACKENDS[name]()
            tracker.start(run_dir, hyperparams, start_step, ids)
            opened.trackers.append(tracker)
    except BaseException:
        opened.finish(ok=False)
        raise
    atomic_write_json(ids_path, ids)
    return opened
