"""docs/tutorial.md runs as written: every ```bash and ```python block, in order, in a fresh folder.

bash blocks run with ``quill`` defined as this interpreter's ``python -m quillgpt``; python
blocks run as separate scripts. QUILL_DATA_DIR defaults to ../shared/data beside the checkout.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorial.md"
BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def blocks() -> list[tuple[str, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(TUTORIAL.read_text())]


def test_tutorial_has_both_kinds_of_blocks() -> None:
    kinds = [kind for kind, _ in blocks()]
    assert kinds.count("bash") >= 5 and kinds.count("python") >= 2


@pytest.mark.slow
def test_tutorial_runs(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
           "QUILL_DATA_DIR": os.environ.get("QUILL_DATA_DIR", str(ROOT.parent / "shared" / "data")),
           # The tutorial's models are tiny: on a CPU that other jobs share, two threads spinning
           # on them made `quill train --preset tiny` 5x slower (43 s vs 7.4 s). One is plenty.
           "OMP_NUM_THREADS": "1"}
    quill = f'quill() {{ "{sys.executable}" -m quillgpt "$@"; }}\nset -e\n'
    for number, (kind, code) in enumerate(blocks(), 1):
        if kind == "bash":
            command = ["bash", "-c", quill + code]
        else:
            script = tmp_path / f"block{number}.py"
            script.write_text(code)
            command = [sys.executable, str(script)]
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"block {number} ({kind}) failed:\n{code}\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "attn.png").is_file() and (tmp_path / "runs/tiny/config.json").is_file()
