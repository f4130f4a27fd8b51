"""The post-training benchmark scripts: every quill command in them parses.

They run for up to an hour, so no test runs them; a renamed or mistyped flag would only show
an hour in. Here QUILL points at a stand-in that records its arguments, so each script runs
through in a second without training anything, and quill's own parser then reads each command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from quillgpt.cli import build_parser

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
STAND_IN = "import json, sys\nwith open({log!r}, 'a') as f:\n    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"


def recorded_calls(script: Path, stages: str, tmp_path: Path) -> list[list[str]]:
    """Run ``script`` with the stand-in as QUILL; the argument lists it was called with."""
    log = tmp_path / "calls.jsonl"
    fake = tmp_path / "quill"
    fake.write_text(f"#!{sys.executable}\n" + STAND_IN.format(log=str(log)))
    fake.chmod(0o755)
    env = {**os.environ, "QUILL": str(fake), "STAGES": stages, "RUNS": str(tmp_path / "runs"),
           "OUT": str(tmp_path / "out")}
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


@pytest.mark.parametrize(("script", "stages", "skipped"), [
    ("posttrain_heldout.sh", "base sft2 sft3 sftw sftc post", "if stage test"),
    ("posttrain.sh", "base sft rm grpo ppo dpo", "if stage eval"),
    ("posttrain3.sh", "sft3d sftw rm grpo ppo columns cross", "if stage eval"),
])
def test_every_quill_command_in_the_script_parses(script: str, stages: str, skipped: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    calls = recorded_calls(BENCHMARKS / script, stages, tmp_path)
    # every quill command before the block that needs finished runs (their test scores) was made
    assert len(calls) == (BENCHMARKS / script).read_text().split(skipped)[0].count('"$QUILL" ') > 0
    assert not rejected(calls), f"{script}: quill refuses {rejected(calls)}"


def test_a_mistyped_flag_is_caught(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    script = tmp_path / "broken.sh"
    script.write_text('QUILL="${QUILL:-quill}"\n"$QUILL" train --preset tiny --max-iterz 3\n')
    calls = recorded_calls(script, "", tmp_path)
    assert calls == [["train", "--preset", "tiny", "--max-iterz", "3"]]
    assert rejected(calls) == ["train --preset tiny --max-iterz 3"]
