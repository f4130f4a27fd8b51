"""Training metrics: an append-only JSON-lines log and the loss-curve plot drawn from it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quillgpt.fsutil import atomic_write, atomic_write_bytes


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, e.g. ``{"kind": "eval", "step": 500, ...}``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()

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


def plot_losses(records: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Write a PNG of train/val loss against step (train-step losses drawn faintly)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    evals = [r for r in records if r.get("kind") == "eval"]
    steps_train = [r for r in records if r.get("kind") == "train"]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
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
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
