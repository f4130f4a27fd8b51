"""What the benchmark scripts share: timing a command from launch to exit, and naming the machine."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quill_command() -> tuple[list[str], dict[str, str]]:
    """This checkout's quill (``python -m quillgpt`` with src/ first on the path) and its environment."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return [sys.executable, "-m", "quillgpt"], env


def timed(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run ``cmd``; its wall seconds from launch to exit and its output. A failure ends the script in one line."""
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])} ... failed ({result.returncode}): {result.stderr.strip()[-1500:]}")
    return seconds, result.stdout + result.stderr


def machine() -> str:
    """The CPU's model name (as lscpu shows it), its cores, and the torch and Python versions."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return f"{model}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}"
