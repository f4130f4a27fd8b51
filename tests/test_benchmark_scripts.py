"""The post-training benchmark scripts: every quill command in them parses.

They run for up to an hour, so no test runs them; a renamed or mistyped flag would only show
an hour in. Here QUILL points at a stand-in that records its arguments, so each script runs
through in a second without training anything, and quill's own parser then reads each command.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from quillgpt.cli import build_parser

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
STAND_IN = "import json, sys\nwith open({log!r}, 'a') as f:\n    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"


def recorded_calls(script: Path, stages: str, tmp_path: Path) -> list[list[str]]:
    """Run ``script`` with the stand-in as QUILL; the argument lists it was called with.

    The folders of the runs the scripts loop over exist (empty), so their scoring commands run too.
    """
    log, runs = tmp_path / "calls.jsonl", tmp_path / "runs"
    for names in re.findall(r"for run in ([^;]+); do", script.read_text()):
        for name in names.split():
            (runs / name).mkdir(parents=True, exist_ok=True)
    fake = tmp_path / "quill"
    fake.write_text(f"#!{sys.executable}\n" + STAND_IN.format(log=str(log)))
    fake.chmod(0o755)
    env = {**os.environ, "QUILL": str(fake), "STAGES": stages, "POSTTRAIN_RUNS": str(runs),
           "POSTTRAIN_OUT": str(tmp_path / "out")}
    subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True, timeout=120)
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def rejected(calls: list[list[str]]) -> list[str]:
    """The calls quill's parser refuses (an unknown flag, a missing argument)."""
    parser, bad = build_parser(), []
    for argv in calls:
        try:
            parser.parse_args(argv)
        except SystemExit:
            bad.append(" ".join(argv))
    return bad


@pytest.mark.parametrize(("script", "stages", "expected"), [
    # 13 training commands, then 8 runs x 2 test draws, then the report card
    ("posttrain_heldout.sh", "base sft2 sft3 sftw sftc post test", 13 + 16 + 1),
    # 7 training commands, then 4 runs x 2 eval commands
    ("posttrain.sh", "base sft rm grpo ppo dpo eval", 7 + 8),
    # every stage but eval, which also runs rl_diagnostics.py on the (here empty) runs
    ("posttrain3.sh", "sft3d sftw rm grpo ppo columns cross", 15),
])
def test_every_quill_command_in_the_script_parses(script: str, stages: str, expected: int, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    calls = recorded_calls(BENCHMARKS / script, stages, tmp_path)
    assert len(calls) == expected
    assert not rejected(calls), f"{script}: quill refuses {rejected(calls)}"


def test_a_mistyped_flag_is_caught(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    script = tmp_path / "broken.sh"
    script.write_text('QUILL="${QUILL:-quill}"\n"$QUILL" train --preset tiny --max-iterz 3\n')
    calls = recorded_calls(script, "", tmp_path)
    assert calls == [["train", "--preset", "tiny", "--max-iterz", "3"]]
    assert rejected(calls) == ["train --preset tiny --max-iterz 3"]


def test_a_failed_background_run_stops_the_script(tmp_path: Path) -> None:
    """posttrain_heldout.sh runs two jobs at a time; a failed one must not be scored from an old folder."""
    fake = tmp_path / "quill"
    fake.write_text(f"#!{sys.executable}\nimport sys\nsys.exit(2 if sys.argv[1:3] == ['rl', 'grpo'] else 0)\n")
    fake.chmod(0o755)
    env = {**os.environ, "QUILL": str(fake), "STAGES": "post test", "POSTTRAIN_RUNS": str(tmp_path / "runs"),
           "POSTTRAIN_OUT": str(tmp_path / "out")}
    done = subprocess.run(["bash", str(BENCHMARKS / "posttrain_heldout.sh")], env=env, capture_output=True,
                          timeout=120)
    assert done.returncode != 0
