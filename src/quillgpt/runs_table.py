"""What a run directory says about itself, read without loading its weights: one ``RunRecord`` per run,
its parents (``--init-from``, the SFT run a reward model or a policy started from, the reward model
PPO was paid by), and the curves ``quill compare`` draws.

Every kind of run keeps its facts in different files (see ``checkpoint``, ``train``, ``posttrain/``):

    kind      how it is told             its parents                        its headline metric
    pretrain  a language-model run       init.json "run" (a finetune)       val loss (eval records)
    task      config: arithmetic on      init.json                          val loss
    sft       config: chat on            init.json (quill sft = init-from)  val loss
    rm        reward.json                reward.json "base"                 pairwise accuracy (val_accuracy)
    rl        rl.json                    rl.json "from"; model:RM reward    val exact match (accuracy)
    dpo       dpo.json                   dpo.json "from"                    val exact match (accuracy)
    rft       rft.json                   rft.json "from"                    val exact match per round (rft.json)

A fact an older run directory lacks is ``None`` here and "-" in the table.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from quillgpt.checkpoint import read_config
from quillgpt.config import RunConfig
from quillgpt.errors import CheckpointError, ConfigError
from quillgpt.fsutil import atomic_write
from quillgpt.metrics import MetricsLog
from quillgpt.models import build_model

# A post-training run's own record names its kind.
INFO_FILES = {"rl.json": "rl", "dpo.json": "dpo", "rft.json": "rft", "reward.json": "rm"}
HEADLINE = {"pretrain": "val_loss", "task": "val_loss", "sft": "val_loss", "rm": "val_accuracy",
            "rl": "accuracy", "dpo": "accuracy", "rft": "accuracy"}
LOWER_IS_BETTER = ("loss", "bpc", "kl")  # a metric whose name holds one of these is best at its minimum
COLUMNS = ("name", "kind", "params", "steps", "metric", "best", "last", "tokens_per_s", "wall_s", "from")
X_AXES = ("steps", "tokens", "minutes")
LABELS = {"val_loss": "val loss (nats/token)", "val_bpc": "val bits per character", "accuracy": "val exact match",
          "val_accuracy": "reward model: val pairwise accuracy", "pair_accuracy": "implicit-reward pairwise accuracy"}


@dataclass
class Parent:
    """A run this one started from: ``role`` says how (init-from, policy, base, reward model)."""

    role: str
    given: str  # the path as the run recorded it
    path: Path | None  # where it was found; None when it is gone

    @property
    def shown(self) -> str:
        """The path to print: relative to here when it lies below, "(missing)" when it is gone."""
        return f"{self.given} (missing)" if self.path is None else shown_path(self.path)


def shown_path(path: Path) -> str:
    """``path`` relative to the working folder when it lies below it, else as it is."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@dataclass
class RunRecord:
    """One run directory, summarized from its files."""

    path: Path
    kind: str
    algorithm: str | None  # grpo / ppo / dpo for post-training policies
    config: RunConfig
    info: dict[str, Any]  # rl.json / dpo.json / reward.json (empty for Trainer runs)
    records: list[dict[str, Any]]  # metrics.jsonl
    params: int | None
    steps: int | None
    tokens_per_s: float | None
    wall_s: float | None
    parents: list[Parent] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    digest: str = ""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def metric(self) -> str:
        return HEADLINE[self.kind]

    def series(self, metric: str | None = None) -> list[dict[str, Any]]:
        """The eval records that hold ``metric`` (default: the headline), in step order."""
        key = metric or self.metric
        return [r for r in self.records if r.get("kind") == "eval" and _number(r.get(key)) is not None]

    def best(self, metric: str | None = None) -> float | None:
        values = [float(r[metric or self.metric]) for r in self.series(metric)]
        if not values:
            return None
        return min(values) if lower_is_better(metric or self.metric) else max(values)

    def last(self, metric: str | None = None) -> float | None:
        evals = self.series(metric)
        return float(evals[-1][metric or self.metric]) if evals else None

    @property
    def started_from(self) -> str:
        """The parent the run's weights came from (not a reward model), as the run recorded it."""
        weights = [p for p in self.parents if p.role != "reward model"]
        return weights[0].shown if weights else "-"

    def row(self) -> dict[str, Any]:
        """One table row (JSON-ready): None where the run does not record the fact."""
        return {"name": self.name, "kind": self.kind, "algorithm": self.algorithm, "params": self.params,
                "steps": self.steps, "metric": self.metric, "best": self.best(), "last": self.last(),
                "tokens_per_s": self.tokens_per_s, "wall_s": self.wall_s, "from": self.started_from,
                "path": str(self.path)}


def lower_is_better(metric: str) -> bool:
    return any(word in metric for word in LOWER_IS_BETTER)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _json(path: Path) -> dict[str, Any]:
    """A run's small JSON file, or {} when it is absent or unreadable (an older or partial run)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_run_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def read_run(path: str | Path) -> RunRecord:
    """Summarize the run directory ``path`` (a CheckpointError if it is not one)."""
    path = Path(path)
    if not is_run_dir(path):
        raise CheckpointError(f"{path} is not a run directory (no config.json): runs live in runs/NAME")
    config = read_config(path)
    info_name, kind = next(((n, k) for n, k in INFO_FILES.items() if (path / n).is_file()), (None, None))
    info = _json(path / info_name) if info_name else {}
    kind = kind or ("sft" if config.chat.enabled else "task" if config.arithmetic.enabled else "pretrain")
    summary = info.get("summary") if isinstance(info.get("summary"), dict) else {}
    records = MetricsLog(path / "metrics.jsonl").read()
    if kind == "rft" and not records:  # RFT keeps its val exact match per round in rft.json, a round a step
        records = [{"kind": "eval", "step": r["round"], **r} for r in summary.get("rounds", []) if "round" in r]
    return RunRecord(path=path, kind=kind, algorithm=summary.get("algorithm") if kind in ("rl", "dpo", "rft") else None,
                     config=config, info=info, records=records, params=count_parameters(config),
                     steps=_json(path / "latest.json").get("step"), tokens_per_s=_tokens_per_s(records),
                     wall_s=_number(summary.get("seconds")) if info else _trainer_wall(records),
                     parents=find_parents(path, info, config), data=_json(path / "data.json"),
                     digest=config_digest(path, info))


def count_parameters(config: RunConfig) -> int | None:
    """The model's parameter count, built on the meta device: shapes only, no memory, no init cost."""
    try:
        with torch.device("meta"):
            return build_model(config.model).num_parameters()
    except Exception:  # a model this quill cannot build: the table says "-" rather than fail
        return None


def _tokens_per_s(records: list[dict[str, Any]]) -> float | None:
    """The median of the logged training speeds (the first log includes warm-up, the median ignores it)."""
    speeds = sorted(v for r in records if r.get("kind") == "train" and (v := _number(r.get("tokens_per_s"))))
    return speeds[len(speeds) // 2] if speeds else None


def _trainer_wall(records: list[dict[str, Any]]) -> float | None:
    """Wall seconds of a Trainer run: eval records carry the seconds since the process started training;
    a resumed run starts counting again, so each segment's last value is added up."""
    elapsed = [v for r in records if r.get("kind") == "eval" and (v := _number(r.get("elapsed_s"))) is not None]
    if not elapsed:
        return None
    total = 0.0
    for before, after in zip(elapsed, elapsed[1:], strict=False):
        if after < before:  # a new process: the previous segment ended at `before`
            total += before
    return total + elapsed[-1]


def config_digest(path: Path, info: dict[str, Any]) -> str:
    """A short sha256 of the canonical config.json (version stamp left out) and the stage's own settings."""
    config = _json(path / "config.json")
    config.pop("quillgpt_version", None)
    canonical = json.dumps({"config": config, "stage": info.get("config")}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def find_parents(path: Path, info: dict[str, Any], config: RunConfig) -> list[Parent]:
    """The runs this one started from, in the order: weights first, then a reward model."""
    given: list[tuple[str, str]] = []
    init = _json(path / "init.json").get("run")
    if isinstance(init, str):
        given.append(("init-from", init))
    for key, role in (("from", "policy"), ("base", "base")):
        if isinstance(info.get(key), str):
            given.append((role, info[key]))
    reward = (info.get("config") or {}).get("reward") if (path / "rl.json").is_file() else None
    if isinstance(reward, str) and reward.startswith("model:"):
        given.append(("reward model", reward.removeprefix("model:")))
    return [Parent(role, text, locate(text, path)) for role, text in given]


def locate(recorded: str, child: Path) -> Path | None:
    """Find a recorded parent path: absolute; or relative to where the command ran, which may be
    here, or the folder holding the child's runs/ folder (runs/a next to runs/b); else None."""
    candidate = Path(recorded)
    if candidate.is_absolute():
        return candidate if is_run_dir(candidate) else None
    for base in (Path.cwd(), child.resolve().parent.parent):
        if is_run_dir(base / candidate):
            return base / candidate
    sibling = child.resolve().parent / candidate.name  # a folder of runs moved as a whole
    return sibling if is_run_dir(sibling) else None


def list_runs(folder: str | Path) -> tuple[list[RunRecord], list[str]]:
    """Every run directory directly in ``folder`` (sorted by name), and a line for each one unreadable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder: give the folder that holds your runs (default ./runs)")
    runs, problems = [], []
    for path in sorted(p for p in folder.iterdir() if p.is_dir() and is_run_dir(p)):
        try:
            runs.append(read_run(path))
        except CheckpointError as exc:
            problems.append(f"skipped {path}: {exc}")
    return runs, problems


def sort_rows(rows: list[dict[str, Any]], column: str) -> list[dict[str, Any]]:
    """Rows ordered by ``column``, a missing value last. Numbers ascend, except ``best`` and ``last``:
    rows are grouped by their metric and the best value comes first (lowest loss, highest accuracy)."""
    if column not in COLUMNS:
        raise ConfigError(f"unknown column {column!r} for --sort: choose one of {', '.join(COLUMNS)}")
    present = [r for r in rows if r[column] is not None]
    missing = [r for r in rows if r[column] is None]
    if column in ("best", "last"):
        def key(r: dict[str, Any]) -> tuple[str, float]:
            return r["metric"], r[column] if lower_is_better(r["metric"]) else -r[column]
        return sorted(present, key=key) + missing
    return sorted(present, key=lambda r: r[column]) + missing


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as aligned text columns, "-" for a fact the run does not record."""
    cells = [[_cell(column, row[column]) for column in COLUMNS] for row in rows]
    for row, line in zip(rows, cells, strict=True):  # rl/grpo, rl/ppo: the algorithm beside the kind
        if row.get("algorithm") and row["algorithm"] != row["kind"]:
            line[COLUMNS.index("kind")] = f"{row['kind']}/{row['algorithm']}"
    header = [c.replace("_", " ") for c in COLUMNS]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(COLUMNS))]
    numeric = {"params", "steps", "best", "last", "tokens_per_s", "wall_s"}
    lines = []
    for line in [header, *cells]:
        lines.append("  ".join(text.rjust(w) if COLUMNS[i] in numeric else text.ljust(w)
                               for i, (text, w) in enumerate(zip(line, widths, strict=True))).rstrip())
    return "\n".join(lines)


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if column == "params":
        return f"{value / 1e6:.2f}M" if value >= 100_000 else f"{value:,}"
    if column in ("best", "last"):
        return f"{value:.4f}"
    if column == "tokens_per_s":
        return f"{value:,.0f}"
    if column == "wall_s":
        return f"{value / 60:.1f}m" if value >= 600 else f"{value:.1f}s"
    return str(value)


# ---------------------------------------------------------------------------------------
# Ancestry and curves
# ---------------------------------------------------------------------------------------


@dataclass
class Ancestry:
    """The stages from the pretraining down to a run, parents before children, and any break in the chain."""

    stages: list[RunRecord]
    breaks: list[str]  # one line per parent that could not be followed (gone, unreadable, a cycle)


def ancestry(run: str | Path) -> Ancestry:
    """Follow every parent (init-from, policy, base, reward model) back to runs without one."""
    stages: list[RunRecord] = []
    breaks: list[str] = []
    done: set[Path] = set()

    def visit(path: Path, trail: tuple[Path, ...]) -> None:
        key = path.resolve()
        if key in trail:
            breaks.append(f"{path} is its own ancestor ({' -> '.join(p.name for p in (*trail, key))}): "
                          "the chain stops there")
            return
        if key in done:
            return
        record = read_run(path)
        for parent in record.parents:
            if parent.path is None:
                breaks.append(f"{record.name}'s {parent.role} run {parent.given} is missing: "
                              "the chain stops there (restore it or report from a run that has it)")
            else:
                try:
                    visit(parent.path, (*trail, key))
                except CheckpointError as exc:
                    breaks.append(f"{record.name}'s {parent.role} run {parent.given} is unreadable ({exc})")
        done.add(key)
        stages.append(record)

    visit(Path(run), ())
    return Ancestry(stages, breaks)


@dataclass
class Curve:
    """One run's line in a comparison: its metric against the chosen x axis."""

    name: str
    metric: str
    x: list[float]
    y: list[float]


def curve(run: RunRecord, metric: str | None, x_axis: str) -> Curve:
    """``run``'s ``metric`` (default: its headline) against steps, tokens or minutes."""
    if x_axis not in X_AXES:
        raise ConfigError(f"unknown x axis {x_axis!r}: choose one of {', '.join(X_AXES)}")
    key = metric or run.metric
    evals = run.series(key)
    if not evals:
        have = sorted({k for r in run.records if r.get("kind") == "eval" for k in r if k not in ("kind", "step")})
        raise ConfigError(f"{run.path} logs no {key!r} in its evals: choose a --metric it has "
                          f"({', '.join(have) or 'none: it has no evals'})")
    if x_axis == "tokens":
        x = _tokens(run, evals)
    elif x_axis == "minutes":
        x = _minutes(run, evals)
    else:
        x = [float(r["step"]) for r in evals]
    return Curve(run.name, key, x, [float(r[key]) for r in evals])


def _tokens(run: RunRecord, evals: list[dict[str, Any]]) -> list[float]:
    if run.kind not in ("pretrain", "task", "sft"):
        raise ConfigError(f"{run.path} ({run.kind}) does not count the tokens it trains on: use --x steps or minutes")
    t = run.config.train
    per_step = t.batch_size * t.grad_accum * run.config.model.block_size  # token positions fed per step
    return [float(r["step"] * per_step) for r in evals]


def _minutes(run: RunRecord, evals: list[dict[str, Any]]) -> list[float]:
    if run.kind in ("pretrain", "task", "sft"):
        if any("elapsed_s" not in r for r in evals):
            raise ConfigError(f"{run.path} has evals without elapsed_s (an older run): use --x steps or tokens")
        offset, previous, out = 0.0, 0.0, []
        for r in evals:  # a resumed process counts from 0 again: carry the earlier segments
            if r["elapsed_s"] < previous:
                offset += previous
            previous = r["elapsed_s"]
            out.append((offset + r["elapsed_s"]) / 60)
        return out
    # Post-training: reward-model evals carry their seconds; RL/DPO train records do (step 0 is the start).
    clock = {r["step"]: r["seconds"] for r in run.records if _number(r.get("seconds")) is not None}
    return [clock.get(r["step"], 0.0 if r["step"] == 0 else math.nan) / 60 for r in evals]


def plot_curves(curves: list[Curve], x_axis: str, out: Path, title: str = "") -> dict[str, list[str]]:
    """One panel per metric drawn, one line per run, written atomically as a PNG; returns each panel's
    metric and the labels of the lines the figure holds (what was drawn, read back from the axes)."""
    import matplotlib  # here, not at the top: only quill compare needs it (startup time)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(c.metric for c in curves))
    drawn: dict[str, list[str]] = {}
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.5 * len(metrics), 4.2), dpi=110, squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for c in (c for c in curves if c.metric == metric):
            ax.plot(c.x, c.y, "o-", markersize=3, label=c.name)
        ax.set_xlabel({"steps": "step", "tokens": "tokens (positions fed)", "minutes": "wall minutes"}[x_axis])
        ax.set_ylabel(metric)
        ax.set_title(f"{LABELS.get(metric, metric)} ({'lower' if lower_is_better(metric) else 'higher'} is better)",
                     fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        drawn[metric] = [str(line.get_label()) for line in ax.get_lines()]
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return drawn

