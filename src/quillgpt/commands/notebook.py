"""The lab notebook: ``quill runs`` (a table of runs), ``quill compare`` (their curves in one figure)
and ``quill report`` (a report card for a run and its ancestry).

    quill runs [DIR] [--sort best] [--json]
    quill compare RUN RUN ... --out cmp.png [--x steps|tokens|minutes] [--metric val_loss]
    quill report RUN [--out PATH] [--n 200]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from quillgpt import argtypes
from quillgpt.device import resolve_device
from quillgpt.errors import ConfigError
from quillgpt.report import write_report
from quillgpt.runs_table import COLUMNS, X_AXES, curve, format_table, list_runs, plot_curves, read_run, sort_rows


def add_notebook_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``runs``, ``compare`` and ``report`` to the ``quill`` subcommands."""
    runs = commands.add_parser("runs", help="a table of the runs in a folder: kind, size, steps, val, speed, parent")
    runs.add_argument("dir", nargs="?", default="runs", help="the folder holding run directories (default: runs)")
    runs.add_argument("--sort", default="name", metavar="COLUMN", help=f"one of: {', '.join(COLUMNS)}")
    runs.add_argument("--json", action="store_true", help="print a JSON list of objects, one per run")
    runs.set_defaults(func=cmd_runs)

    compare = commands.add_parser("compare", help="draw several runs' val (or reward/accuracy) curves in one PNG")
    compare.add_argument("runs", nargs="+", metavar="RUN")
    compare.add_argument("--out", required=True, help="the PNG to write, e.g. cmp.png")
    compare.add_argument("--x", choices=X_AXES, default="steps", help="the x axis (default: steps)")
    compare.add_argument("--metric", help="an eval metric every run logs, e.g. val_loss, val_bpc, accuracy "
                                          "(default: each run's headline: val loss for language-model runs, "
                                          "val exact match for RL/DPO, pairwise accuracy for reward models)")
    compare.set_defaults(func=cmd_compare)

    report = commands.add_parser("report", help="write report.md for a run and every run it started from")
    report.add_argument("run")
    report.add_argument("--out", help="where to write it (default: RUN/report.md)")
    report.add_argument("--n", type=argtypes.whole(0, 100_000), default=200,
                        help="held-out questions per half (val, test) to score each arithmetic stage on "
                             "(default 200; 0: skip)")
    report.add_argument("--device", default="cpu", help="where to score them (default cpu)")
    report.set_defaults(func=cmd_report)


def cmd_runs(args: argparse.Namespace) -> int:
    records, problems = list_runs(args.dir)
    for line in problems:
        print(line, file=sys.stderr)
    rows = sort_rows([r.row() for r in records], args.sort)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        print(format_table(rows))
    else:
        print(f"no runs in {args.dir}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    if not args.out.lower().endswith(".png"):
        raise ConfigError(f"--out {args.out}: compare writes a PNG; name a file ending in .png")
    records = [read_run(path) for path in args.runs]
    names = [r.name for r in records]
    if len(set(names)) < len(names):  # the legend names runs by folder name
        raise ConfigError(f"two runs share a folder name ({', '.join(names)}): give runs with distinct names")
    curves = [curve(r, args.metric, args.x) for r in records]
    drawn = plot_curves(curves, args.x, Path(args.out), title=f"against {args.x}")
    what = "; ".join(f"{metric} of {', '.join(names)}" for metric, names in drawn.items())
    panels = f" ({len(drawn)} panels: the runs log different headline metrics)" if len(drawn) > 1 else ""
    print(f"wrote {args.out}: {what} against {args.x}{panels}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)
    progress = (lambda line: print(line, file=sys.stderr)) if sys.stderr.isatty() else None
    path, breaks = write_report(args.run, args.out, args.n, str(device), progress)
    for line in breaks:
        print(f"note: {line}", file=sys.stderr)
    print(f"wrote {path}")
    return 0
