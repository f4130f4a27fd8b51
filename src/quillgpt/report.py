"""``quill report RUN``: a report card (``report.md``) for a run and every run it came from.

One section per stage, from the pretraining down to RUN (``runs_table.ancestry``), each with its
config digest, data, steps, wall time and headline numbers: val loss and bits per character for
language-model runs, the reward model's pairwise accuracy, RL/DPO validation exact match at the
start and the end. Where a stage answers arithmetic (a task run, or a chat model trained on the
built-in questions), its held-out exact match on the val and the test half is measured for the card,
greedily, on the stage's latest checkpoint, with the draws ``quill task eval`` uses. The card ends
with the machine and the quill version and commit that wrote it.

It sits with the apps (it scores chat models, so it reads ``posttrain.chat_eval``).
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import quillgpt
from quillgpt.checkpoint import load_run
from quillgpt.config import TASK_OPS
from quillgpt.fsutil import atomic_write_bytes
from quillgpt.posttrain.chat_eval import ChatReport, answer_all
from quillgpt.runs_table import RunRecord, ancestry, shown_path
from quillgpt.tasks.arithmetic import problems
from quillgpt.tasks.exact_match import Report, attempt_all
from quillgpt.tasks.questions import questions

CHAT_EVAL_SEED = 1000  # quill task eval's default draw for chat runs (both halves)


@dataclass
class HeldOut:
    """Greedy exact match on one half of the held-out problems."""

    split: str
    accuracy: float
    n: int
    what: str  # which problems: operators, digits, seed


def machine() -> dict[str, str]:
    """The CPU's model name (as lscpu shows it), cores, GPU, and the torch and Python versions."""
    return {"cpu": cpu_model(), "cores": str(os.cpu_count() or "-"),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
            "torch": torch.__version__, "python": platform.python_version()}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "-"  # macOS and others: the best the platform module knows


def quill_commit() -> str:
    """The git commit quill runs from (``-dirty`` with uncommitted changes), or "-" outside a checkout."""
    here = Path(quillgpt.__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return "-"
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "-"
    return commit.stdout.strip() + ("-dirty" if dirty else "")


def held_out_exact_match(stage: RunRecord, n: int, device: torch.device) -> list[HeldOut]:
    """Val and test exact match of a stage that answers arithmetic (none for others, or when n is 0)."""
    config = stage.config
    own = stage.info.get("config") or {}
    if n <= 0 or stage.kind == "rm" or not (config.arithmetic.enabled or config.chat.builtin):
        return []
    run = load_run(stage.path, device=device)
    if config.arithmetic.enabled:  # the trainer's val draw (eval seed) and quill task eval's test draw (seed + 1)
        task = config.arithmetic
        out = []
        for split, seed in (("val", task.eval_seed), ("test", task.eval_seed + 1)):
            asked = problems(TASK_OPS[task.task], task.digits, n, seed, "test")
            report = Report(attempt_all(run.model, asked, task.format, device, position=config.model.position))
            out.append(HeldOut(split, report.accuracy, len(asked), f"{task.task}, up to {task.digits} digits, "
                                                                   f"seed {seed}"))
        return out
    # A chat model: the operators and digits this stage trained on (RL/DPO: their own; SFT: its chat data).
    ops, digits = own.get("ops", config.chat.chat_ops), own.get("digits", config.chat.chat_digits)
    out = []
    for split in ("val", "test"):
        asked = questions(ops, digits, n, CHAT_EVAL_SEED, split)
        report = ChatReport(answer_all(run.model, run.tokenizer, asked))
        out.append(HeldOut(split, report.accuracy, len(asked), f"{ops}, up to {digits} digits, "
                                                               f"seed {CHAT_EVAL_SEED}"))
    return out


def _pct(x: Any) -> str:
    return f"{100 * x:.2f}%" if isinstance(x, int | float) else "-"


def _num(x: Any, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if isinstance(x, int | float) else "-"


def _wall(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def data_line(stage: RunRecord) -> str:
    """What the stage learned from, in a few words."""
    data, own = stage.data, stage.info.get("config") or {}
    dataset = str(data.get("dataset", "-"))
    if stage.kind in ("rl", "dpo", "rft", "rm"):
        extra = f"ops {own.get('ops', '-')}, up to {own.get('digits', '-')} digits"
        if stage.kind == "rl":
            extra += f", reward {own.get('reward', '-')}"
        return f"{dataset} ({extra})"
    if stage.kind == "sft":
        chat = stage.config.chat
        return f"{dataset} (ops {chat.chat_ops}, up to {chat.chat_digits} digits, worked {chat.chat_worked})"
    if stage.kind == "task":
        task = stage.config.arithmetic
        return f"{dataset} ({task.format} format, up to {task.digits} digits)"
    sha = str((data.get("source") or {}).get("sha256", ""))[:12]
    return f"{dataset}" + (f" (source sha256 {sha}...)" if sha else "")


def headline(stage: RunRecord) -> list[str]:
    """The stage's own numbers, as the run recorded them."""
    summary = stage.info.get("summary") or {}
    if stage.kind in ("pretrain", "task", "sft"):
        evals = stage.series("val_loss")
        if not evals:
            return ["val loss: - (no evals logged)"]
        best = min(evals, key=lambda r: r["val_loss"])
        last = evals[-1]
        lines = [f"val loss: best {_num(best['val_loss'])} at step {best['step']}, "
                 f"last {_num(last['val_loss'])} at step {last['step']} (train {_num(last.get('train_loss'))})"]
        if last.get("val_bpc") is not None:
            lines.append(f"val bits per char: last {_num(last['val_bpc'])}, best {_num(stage.best('val_bpc'))}")
        return lines
    if stage.kind == "rm":
        lines = [f"pairwise accuracy on {summary.get('val_pairs', '-')} val pairs: {_pct(summary.get('val_accuracy'))} "
                 f"(loss {_num(summary.get('val_loss'))}, mean margin {_num(summary.get('val_margin'), 3)})"]
        if summary.get("val_own_pairs"):
            lines.append(f"on {summary['val_own_pairs']} pairs against the model's own wrong answers: "
                         f"{_pct(summary.get('val_own_accuracy'))}")
        return lines
    lines = [f"val exact match: start {_pct(summary.get('start_accuracy'))} -> end {_pct(summary.get('accuracy'))} "
             f"({summary.get('held_out', '-')} questions)"]
    if stage.kind in ("rl", "rft"):
        unit = "round" if stage.kind == "rft" else "step"
        lines.append(f"best val exact match {_pct(summary.get('best_accuracy'))} at {unit} "
                     f"{summary.get('best_step', '-')}"
                     + ("" if stage.kind == "rft" else f"; mean reward over the last steps "
                        f"{_num(summary.get('reward'))}, KL to the reference {_num(summary.get('kl'), 3)} per reply"))
    else:
        lines.append(f"implicit-reward pairwise accuracy on {summary.get('val_pairs', '-')} val pairs: start "
                     f"{_pct(summary.get('start_pair_accuracy'))} -> end {_pct(summary.get('pair_accuracy'))}; "
                     f"KL to the reference {_num(summary.get('kl'), 3)} per reply")
    return lines


def stage_section(number: int, stage: RunRecord, measured: list[HeldOut]) -> list[str]:
    kind = f"{stage.kind} ({stage.algorithm})" if stage.algorithm and stage.algorithm != stage.kind else stage.kind
    parents = ", ".join(f"{p.role} `{p.shown}`" for p in stage.parents) or "nothing (trained from scratch)"
    params = f"{stage.params:,}" if stage.params is not None else "-"
    lines = [f"## {number}. {stage.name}: {kind}", "",
             f"- run: `{shown_path(stage.path)}`",
             f"- started from: {parents}",
             f"- config digest: `{stage.digest}` (sha256 of config.json and the stage's own settings)",
             f"- data: {data_line(stage)}",
             f"- model: {stage.config.model.arch}, {params} parameters; device {stage.config.train.device}",
             f"- steps: {stage.steps if stage.steps is not None else '-'}; wall: {_wall(stage.wall_s)}",
             *(f"- {line}" for line in headline(stage))]
    for held in measured:
        lines.append(f"- held-out exact match, {held.split} half: {_pct(held.accuracy)} of {held.n} "
                     f"({held.what}; measured for this card, latest checkpoint, greedy)")
    return [*lines, ""]


def write_report(run: str | Path, out: str | Path | None = None, n: int = 200, device: str = "cpu",
                 progress: Callable[[str], None] | None = None) -> tuple[Path, list[str]]:
    """Write the report card of ``run`` (default ``RUN/report.md``); returns its path and the breaks
    in the ancestry (parents that are gone or unreadable, a cycle), which the card lists too."""
    chain = ancestry(run)
    target = Path(out) if out else Path(run) / "report.md"
    dev = torch.device(device)
    lines = [f"# Report card: {Path(run).name}", "",
             f"{len(chain.stages)} stage(s), from the first run down to `{run}`; written "
             f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}.", ""]
    if chain.breaks:
        lines += ["**The chain is incomplete:**", "", *(f"- {b}" for b in chain.breaks), ""]
    for number, stage in enumerate(chain.stages, 1):
        if progress:
            progress(f"stage {number}/{len(chain.stages)}: {stage.name}")
        lines += stage_section(number, stage, held_out_exact_match(stage, n, dev))
    info = machine()
    lines += ["## Machine and software (that wrote this card)", "",
              f"- CPU: {info['cpu']} ({info['cores']} cores visible)",
              f"- GPU: {info['gpu']}",
              f"- quillgpt {quillgpt.__version__}, commit {quill_commit()}; torch {info['torch']}, "
              f"Python {info['python']}", ""]
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, "\n".join(lines).encode())
    return target, chain.breaks
