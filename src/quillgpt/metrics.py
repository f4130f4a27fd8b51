"""Training metrics: an append-only JSON-lines log (which also feeds any experiment trackers) and the
loss-curve plot drawn from it."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quillgpt.fsutil import atomic_write, atomic_write_bytes
from quillgpt.tracking import Trackers, open_trackers

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, e.g. ``{"kind": "eval", "step": 500, ...}``.

    Inside ``tracking(...)`` every appended record also goes to the experiment trackers: the one
    place train, SFT, reward, RL and DPO runs feed them from.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.trackers = Trackers()  # none until tracking() opens some

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
        self.trackers.log_record(record)

    @contextlib.contextmanager
    def tracking(self, log_to: str, hyperparams: dict[str, Any], start_step: int = 0) -> Iterator[Trackers]:
        """Open the trackers ``log_to`` names (``--log-to``) for this log's run directory, feed them every
        record appended inside the block, and finish them after it (as failed if it raised)."""
        self.trackers = open_trackers(log_to, self.path.parent, hyperparams, start_step)
        ok = False
        try:
            yield self.trackers
            ok = True
        finally:
            self.trackers.finish(ok)
            self.trackers = Trackers()

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # a line cut short by a crash: skip it
        return records

    def truncate_after(self, step: int) -> None:
        """Drop records logged after ``step`` (a resumed run logs them again)."""
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())

    def last_eval(self) -> dict[str, Any] | None:
        evals = [r for r in self.read() if r.get("kind") == "eval"]
        return evals[-1] if evals else None


def loss_figure(records: list[dict[str, Any]], title: str = "") -> Figure:
    """Train/val loss against step (train-step losses drawn faintly), as a matplotlib Figure.

    Built without pyplot, so drawing it neither picks a backend nor leaves a figure open: a run
    trained inside a notebook keeps the notebook's inline plots working.
    """
    from matplotlib.figure import Figure  # matplotlib is slow to import: only when a plot is drawn

    evals = [r for r in records if r.get("kind") == "eval"]
    steps_train = [r for r in records if r.get("kind") == "train"]
    fig = Figure(figsize=(7, 4.2), dpi=110)
    ax = fig.subplots()
    if steps_train:
        ax.plot([r["step"] for r in steps_train], [r["loss"] for r in steps_train],
                color="tab:blue", alpha=0.25, linewidth=0.8, label="train (batch)")
    if evals:
        ax.plot([r["step"] for r in evals], [r["train_loss"] for r in evals], "o-", color="tab:blue",
                markersize=3, label="train (eval)")
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", color="tab:orange",
                markersize=3, label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title(title or "loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_losses(records: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Write ``loss_figure`` as a PNG file."""
    fig = loss_figure(records, title)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
