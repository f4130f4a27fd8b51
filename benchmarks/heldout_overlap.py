"""How many problems of today's test draws the post-training settings were once tuned on (issue 17.11).

Before 6777dae the split hashed the ordered problem, and every GRPO/PPO/DPO setting was chosen on
that split's seed-1000 test draw of 3-digit ``+`` questions. This reads that draw with the code of
the day (``git archive 6777dae^``) and counts the distinct problems (a problem and its swapped twin
are one) it shares with today's test draws:

    python benchmarks/heldout_overlap.py        (needs git; a second or two)
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OLD_SPLIT = "6777dae^"  # the last commit whose split hashed the ordered problem


def question_module(src: Path):
    for name in [n for n in sys.modules if n == "quillgpt" or n.startswith("quillgpt.")]:
        del sys.modules[name]
    sys.path.insert(0, str(src))
    try:
        return importlib.import_module("quillgpt.tasks.questions")
    finally:
        sys.path.remove(str(src))


def facts(drawn) -> set[tuple[int, str, int]]:
    return {(min(q.problem.a, q.problem.b), q.problem.op, max(q.problem.a, q.problem.b)) for q in drawn}


def main() -> None:
    archive = subprocess.run(["git", "archive", OLD_SPLIT, "src/quillgpt"], cwd=ROOT, check=True,
                             capture_output=True).stdout
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(fileobj=BytesIO(archive)) as files:
        files.extractall(tmp, filter="data")
        tuned_on = facts(question_module(Path(tmp) / "src").questions("+", 3, 500, 1000, "test"))
    today = question_module(ROOT / "src")
    print(f"old seed-1000 test draw (3-digit +): {len(tuned_on)} distinct problems")
    for seed in (1000, 4242, 2026, 7):
        drawn = facts(today.questions("+", 3, 500, seed, "test"))
        print(f"today's test half, eval seed {seed}: {len(drawn)} distinct problems, "
              f"{len(drawn & tuned_on)} of them in the old draw")


if __name__ == "__main__":
    main()
