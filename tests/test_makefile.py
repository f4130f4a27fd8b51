"""The Makefile's test target: a run that collects no test is a failure, and a missing browser is said."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def make(*args: str) -> subprocess.CompletedProcess:
    # BIN points at this interpreter's folder, so the target runs the same pytest as this suite.
    command = ["make", "--no-print-directory", "-C", str(ROOT), *args, f"BIN={Path(sys.executable).parent}"]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=os.environ.copy())


pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def test_a_run_that_collects_no_test_fails(tmp_path: Path) -> None:
    (tmp_path / "test_nothing.py").write_text('"""No tests here."""\n')
    result = make("pytest", f"TESTS={tmp_path}")
    assert result.returncode != 0, result.stdout + result.stderr
    assert "no tests ran" in result.stdout


def test_a_run_with_tests_passes(tmp_path: Path) -> None:
    (tmp_path / "test_one.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    result = make("pytest", f"TESTS={tmp_path}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_a_missing_browser_is_said_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "test_one.py").write_text("def test_one():\n    assert True\n")
    result = make("pytest", f"TESTS={tmp_path}", "CHROMIUM=/nonexistent/chromium")
    lines = [line for line in result.stdout.splitlines() if "browser test is skipped" in line]
    assert len(lines) == 1 and "apt-get install chromium" in lines[0]
    present = make("pytest", f"TESTS={tmp_path}", f"CHROMIUM={sys.executable}")
    assert "browser test is skipped" not in present.stdout
