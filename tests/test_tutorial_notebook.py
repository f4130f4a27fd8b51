"""docs/tutorial.ipynb: generated from docs/tutorial.md (so the two cannot drift apart), and it runs
top to bottom in a real Jupyter kernel (this interpreter's ipykernel), drawing its plots inline.

The generator is docs/make_tutorial_notebook.py; the notebook's sizes sit in its parameters cell,
which the run here makes smaller, leaving every other cell as committed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKDOWN = ROOT / "docs" / "tutorial.md"
NOTEBOOK = ROOT / "docs" / "tutorial.ipynb"
# Smaller runs than the notebook's (seconds, not a minute): the same cells and the same plots.
SHRINK = {"BIGRAM_LESSON_STEPS": 30, "BIGRAM_ITERS": 40, "TINY_ITERS": 20, "SAMPLE_TOKENS": 20,
          "SEQ2SEQ_STEPS": 20, "SEQ2SEQ_TEST": 50}
PLOTS = {"s5-2": "the loss curve of runs/tiny", "s6-1": "the attention heatmap"}  # cell id -> what it draws


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_tutorial_notebook", ROOT / "docs" / "make_tutorial_notebook.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def cells(notebook: dict) -> list[tuple[str, str, str, list[str]]]:
    """What the notebook says, without what running it left behind (outputs, counts, other metadata)."""
    return [(c["cell_type"], c.get("id", ""), "".join(c["source"]), c["metadata"].get("tags", []))
            for c in notebook["cells"]]


def test_notebook_is_generated_from_the_markdown() -> None:
    make = generator()
    committed = cells(json.loads(NOTEBOOK.read_text()))
    expected = cells(make.build(MARKDOWN.read_text()))
    for have, want in zip(committed, expected, strict=False):
        assert have == want, f"docs/tutorial.ipynb is out of step with docs/tutorial.md at cell {want[1]}: " \
                             "run .venv/bin/python docs/make_tutorial_notebook.py"
    assert len(committed) == len(expected), "docs/tutorial.ipynb has a different number of cells: regenerate it"


def test_notebook_follows_every_section_and_block() -> None:
    """The same headings in the same order, every python block as a cell, every command as a step."""
    make = generator()
    markdown = MARKDOWN.read_text()
    sources = [source for kind, _, source, _ in cells(json.loads(NOTEBOOK.read_text()))]
    headings = re.findall(r"^## .*$", markdown, re.MULTILINE)
    found = [h for s in sources for h in re.findall(r"^## .*$", s, re.MULTILINE)]
    assert found == headings and len(headings) >= 8
    for kind, code in make.pieces(markdown):
        if kind == "python":
            assert code in sources
    commands = [line for block in re.findall(r"^```bash\n(.*?)^```", markdown, re.MULTILINE | re.DOTALL)
                for line in block.splitlines() if line.strip()]
    assert commands == [step.command for step in make.STEPS]  # one step per command, in the markdown's order


def test_changed_command_stops_the_build() -> None:
    make = generator()
    markdown = MARKDOWN.read_text()
    changed = markdown.replace("--max-iters 60", "--max-iters 600")
    assert changed != markdown
    with pytest.raises(make.DriftError, match=r"quill train --preset tiny .*--max-iters 600.* has no notebook step"):
        make.build(changed)


def test_removed_command_stops_the_build() -> None:
    make = generator()
    markdown = MARKDOWN.read_text()
    removed = markdown.replace("quill lesson norms\n", "")
    assert removed != markdown
    with pytest.raises(make.DriftError, match="no longer runs `quill lesson norms`"):
        make.build(removed)


def test_changed_prose_or_python_changes_the_notebook() -> None:
    """What the comparison above would catch: prose and python blocks are copied, not re-typed."""
    make = generator()
    markdown = MARKDOWN.read_text()
    committed = cells(json.loads(NOTEBOOK.read_text()))
    for old, new in (("a 65 x 65 table", "a 66 x 66 table"), ('encode("ROMEO: I")', 'encode("ROMEO: O")')):
        assert old in markdown
        assert cells(make.build(markdown.replace(old, new))) != committed


def test_sizes_come_from_the_commands() -> None:
    make = generator()
    notebook = make.build(MARKDOWN.read_text().replace("--max-new-tokens 80", "--max-new-tokens 81"), steps=tuple(
        make.Step(s.command.replace("--max-new-tokens 80", "--max-new-tokens 81"), s.cells, s.sizes)
        for s in make.STEPS))
    parameters = next(c for c in notebook["cells"] if c["id"] == "parameters")
    assert "SAMPLE_TOKENS = 81\n" in "".join(parameters["source"]) + "\n"


def test_library_plots_leave_a_notebooks_matplotlib_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer draws loss.png at every eval: if that switched matplotlib to Agg (it once did), a
    notebook that trained a run lost its inline plots. Neither plot picks a backend or opens a figure."""
    import matplotlib
    import matplotlib.pyplot as plt
    import torch

    from quillgpt.lessons.heatmap import plot_attention
    from quillgpt.metrics import plot_losses

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a library plot called matplotlib.use")

    monkeypatch.setattr(matplotlib, "use", refuse)
    open_before = plt.get_fignums()
    records = [{"kind": "train", "step": 1, "loss": 4.0},
               {"kind": "eval", "step": 2, "train_loss": 3.5, "val_loss": 3.6}]
    plot_losses(records, tmp_path / "loss.png", "run")
    plot_attention(torch.tril(torch.ones(3, 3)) / torch.arange(1, 4)[:, None], ["a", "b", "c"],
                   tmp_path / "attn.png", "head")
    assert plt.get_fignums() == open_before
    for name in ("loss.png", "attn.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")


def shrink(notebook: dict) -> None:
    """Set the parameters cell's sizes to SHRINK's (every one must be there: no silent no-op)."""
    (cell,) = [c for c in notebook["cells"] if "parameters" in c["metadata"].get("tags", [])]
    source = "".join(cell["source"])
    for name, value in SHRINK.items():
        source, count = re.subn(rf"^{name} = \d+$", f"{name} = {value}", source, flags=re.MULTILINE)
        assert count == 1, f"the parameters cell has no {name}"
    cell["source"] = source


def kernel_here(folder: Path) -> str:
    """A kernelspec for this interpreter (the venv's, with quillgpt and ipykernel), found via JUPYTER_PATH:
    the notebook must not run in whatever "python3" a machine has registered."""
    spec = folder / "kernels" / "quill-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "quillgpt tests", "language": "python"}))
    return "quill-test"


@pytest.mark.slow
def test_notebook_runs_with_inline_plots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nbclient  # the dev extra's: pip install -e ".[dev]"
    import nbformat

    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))  # connection files
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # no profile or startup files of this machine's
    monkeypatch.setenv("QUILL_DATA_DIR", os.environ.get("QUILL_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny models: see tests/test_tutorial.py
    monkeypatch.setenv("PYTHONWARNINGS", "ignore")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    before = cells(notebook)
    shrink(notebook)
    assert [c for c in cells(notebook) if c[1] != "parameters"] == [c for c in before if c[1] != "parameters"]
    work = tmp_path / "work"
    work.mkdir()
    client = nbclient.NotebookClient(notebook, kernel_name=kernel_here(tmp_path / "jupyter"), timeout=300,
                                     resources={"metadata": {"path": str(work)}})
    tic = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if any cell fails
    print(f"notebook ran in {time.perf_counter() - tic:.1f} s")
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors
    for cell_id, what in PLOTS.items():
        (cell,) = [c for c in code if c.id == cell_id]
        assert any("image/png" in o.get("data", {}) for o in cell.outputs), f"no inline image for {what}"
    images = [c.id for c in code if any("image/png" in o.get("data", {}) for o in c.outputs)]
    assert images == list(PLOTS)
    assert (work / "runs" / "tiny" / "config.json").is_file() and (work / "data" / "shakespeare").is_dir()
