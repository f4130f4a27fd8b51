"""Build docs/tutorial.ipynb from docs/tutorial.md, so the notebook and the markdown cannot drift apart.

    .venv/bin/python docs/make_tutorial_notebook.py          # write docs/tutorial.ipynb
    .venv/bin/python docs/make_tutorial_notebook.py --check  # exit 1 if the committed notebook is stale

The markdown's prose becomes the notebook's text cells, section by section and in order. Its
``python`` blocks become code cells as they are. Each command line of its ``bash`` blocks becomes
the Python cells that do the same with the library (``STEPS`` below, keyed by the exact command
line), followed by the notebook's own extras: the loss curve and the attention heatmap, inline.
A command line without a step, or a step whose command the markdown no longer has, stops the
build: edit the markdown and the steps together. The sizes (training steps, samples) come from
the commands' own flags into one parameters cell, which tests/test_tutorial_notebook.py shrinks.

The notebook is committed without outputs: the file is exactly what this script writes (a diff
shows only real changes), and no numbers or plots go stale; Jupyter draws them when it runs.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

DOCS = Path(__file__).resolve().parent
MARKDOWN = DOCS / "tutorial.md"
NOTEBOOK = DOCS / "tutorial.ipynb"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n?", re.MULTILINE | re.DOTALL)


class DriftError(Exception):
    """The markdown and the notebook's steps no longer match: the message says which line and what to do."""


@dataclass(frozen=True)
class Step:
    """The Python cells for one ``quill`` command line of the markdown."""

    command: str  # the exact line in tutorial.md
    cells: tuple[str, ...]  # code cells, in order
    sizes: dict[str, str] = field(default_factory=dict)  # parameter name -> the flag whose value it takes


STEPS = (
    Step("quill prepare shakespeare", ("""\
from quillgpt.data import TokenDataset, prepare_corpus

folder = prepare_corpus("shakespeare")  # writes data/shakespeare here
dataset = TokenDataset(folder)
split = dataset.meta["split"]
print(f"{folder}: vocab {dataset.tokenizer.vocab_size}, "
      f"{split['train_tokens']:,} train / {split['val_tokens']:,} val tokens")
print(dataset.tokenizer.decode(dataset.splits["train"][:120].tolist()))""",)),
    Step("quill lesson bigram", ("""\
from quillgpt.lessons import bigram

lesson = bigram.run(steps=BIGRAM_LESSON_STEPS)
assert lesson.ok, lesson.checks""",)),
    Step("quill train --preset bigram --out-dir runs/bigram --max-iters 300 --lr 0.1 --eval-interval 300 "
         "--eval-iters 20 --sample-chars 80 --no-progress", ("""\
import torch

from quillgpt.config import preset
from quillgpt.sample import generate
from quillgpt.train import Trainer

config = preset("bigram").replace({"train": {
    "max_iters": BIGRAM_ITERS, "lr": 0.1, "eval_interval": BIGRAM_ITERS, "eval_iters": 20}})
config.validate()
trainer = Trainer(config, dataset, "runs/bigram", progress=False)
result = trainer.train()
print(f"{result.steps} steps in {result.seconds:.1f} s: train loss {result.train_loss:.4f}, "
      f"val loss {result.val_loss:.4f}")

generator = torch.Generator().manual_seed(config.train.seed)
start = torch.tensor([dataset.tokenizer.start_ids()])
print(dataset.tokenizer.decode(generate(trainer.model, start, 80, generator=generator)[0].tolist()))""",),
         {"BIGRAM_ITERS": "--max-iters"}),
    Step("quill lesson attention", ("""\
from quillgpt.lessons import attention

assert attention.run().ok""",)),
    Step("quill lesson norms", ("""\
from quillgpt.lessons import norms

assert norms.run().ok""",)),
    Step("quill train --preset tiny --out-dir runs/tiny --max-iters 60 --no-progress --sample-chars 0", ("""\
config = preset("tiny").replace({"train": {"max_iters": TINY_ITERS}})
config.validate()
trainer = Trainer(config, dataset, "runs/tiny", progress=False)
result = trainer.train()
print(f"{trainer.model.num_parameters():,} parameters, {result.steps} steps in {result.seconds:.1f} s: "
      f"val loss {result.val_loss:.4f} (best {result.best_val_loss:.4f} at step {result.best_step})")""",
        """\
from quillgpt.metrics import loss_figure

# The run's metrics.jsonl holds a record per logged step and one per eval: the loss curve.
loss_figure(trainer.metrics.read(), "runs/tiny")"""), {"TINY_ITERS": "--max-iters"}),
    Step('quill sample runs/tiny --prompt "ROMEO:" --max-new-tokens 80 --seed 1', ("""\
from quillgpt.checkpoint import load_run

run = load_run("runs/tiny")
prompt = torch.tensor([run.tokenizer.encode("ROMEO:")])
out = generate(run.model, prompt, SAMPLE_TOKENS, generator=torch.Generator().manual_seed(1))
print(run.tokenizer.decode(out[0].tolist()))""",), {"SAMPLE_TOKENS": "--max-new-tokens"}),
    Step("quill info runs/tiny", ("""\
print(f"{run.run_dir}: {run.model.num_parameters():,} parameters, {run.checkpoint.name} (step {run.step})")
print(f"best val {run.trainer_state['best_val']:.4f} at step {run.trainer_state['best_step']}")
run.config.model""",)),
    Step('quill attention runs/tiny --text "ROMEO: I" --layer 1 --head 0 --out attn.png', ("""\
from quillgpt.lessons.heatmap import attention_figure, run_attention

weights, labels = run_attention(run, "ROMEO: I", layer=1, head=0)
attention_figure(weights, labels, "runs/tiny: layer 1, head 0")""",)),
    Step("quill seq2seq --task reverse --steps 150 --max-len 5 --n-test 200", ("""\
from quillgpt.lessons import seq2seq

task = seq2seq.Seq2SeqTask("reverse", max_len=5)
reversal = seq2seq.train(task, steps=SEQ2SEQ_STEPS, n_test=SEQ2SEQ_TEST)""",),
         {"SEQ2SEQ_STEPS": "--steps", "SEQ2SEQ_TEST": "--n-test"}),
)

# Sizes the markdown's commands leave to a default.
DEFAULT_SIZES = {"BIGRAM_LESSON_STEPS": 300}  # quill lesson bigram --steps

INTRO = """\
This is [tutorial.md](tutorial.md) as a notebook: the same sections in the same order, with each
`quill` command done by the library's Python calls and the plots drawn inline. Run it top to
bottom from an empty folder: it writes `data/` and `runs/` where it runs, and it finds Tiny
Shakespeare in `$QUILL_DATA_DIR`, `~/.cache/quillgpt` or `../shared/data` (or downloads it).

It is generated from the markdown by `docs/make_tutorial_notebook.py`: edit the markdown (or
that script's steps) and run it again, never this file. `tests/test_tutorial_notebook.py`
checks that the two agree and runs the notebook with a Jupyter kernel."""

SETUP = """\
# Show matplotlib figures under their cells (the library returns its plots as Figure objects).
%matplotlib inline"""


def sections(markdown: str) -> tuple[str, list[tuple[str, str]]]:
    """The title and first paragraph, and the ``## `` sections (heading, body) of the markdown."""
    parts = re.split(r"^(## .*)\n", markdown, flags=re.MULTILINE)
    head, rest = parts[0].strip(), parts[1:]
    if not head.startswith("# "):
        raise DriftError("tutorial.md must start with a '# ' title line")
    opening = head.split("\n\n")[:2]  # the title and what the tutorial is; the rest is about its test
    return "\n\n".join(opening), [(rest[i], rest[i + 1]) for i in range(0, len(rest), 2)]


def pieces(body: str) -> list[tuple[str, str]]:
    """A section's body as ("markdown", text) and ("bash" | "python", code) pieces, in order;
    other fenced blocks (``text``) stay inside the markdown."""
    out: list[tuple[str, str]] = []
    prose, at = "", 0
    for block in FENCE.finditer(body):
        prose += body[at:block.start()]
        at = block.end()
        if block.group(1) not in ("bash", "python"):
            prose += block.group(0)
            continue
        if block.group(1) == "bash":  # the prose shows the command; the cells after it do it in Python
            prose += block.group(0)
        out += [("markdown", prose), (block.group(1), block.group(2))]
        prose = ""
    out.append(("markdown", prose + body[at:]))
    return [(kind, text.strip()) for kind, text in out if text.strip()]


def flag_value(command: str, flag: str) -> int:
    words = shlex.split(command)
    if flag not in words[:-1]:
        raise DriftError(f"the step for `{command}` takes a size from {flag}, which the command no longer has: "
                         "fix the step's sizes in docs/make_tutorial_notebook.py")
    return int(words[words.index(flag) + 1])


def code_cells(kind: str, code: str, steps: dict[str, Step], used: set[str]) -> list[str]:
    """The notebook's code cells for one block of the markdown."""
    if kind == "python":
        return [code]
    cells = []
    for line in code.splitlines():
        if not line.strip():
            continue
        if line not in steps:
            raise DriftError(f"tutorial.md runs `{line}`, which has no notebook step: add a Step for it to "
                             "docs/make_tutorial_notebook.py (or fix the one whose command it was)")
        used.add(line)
        cells += steps[line].cells
    return cells


def build(markdown: str, steps: tuple[Step, ...] = STEPS) -> dict:
    """The notebook (nbformat 4 JSON, no outputs) for the markdown ``markdown``."""
    by_command = {step.command: step for step in steps}
    title, body = sections(markdown)
    sizes = dict(DEFAULT_SIZES)
    for step in steps:
        sizes.update({name: flag_value(step.command, flag) for name, flag in step.sizes.items()})
    parameters = ("# Sizes, from the tutorial's commands: tests/test_tutorial_notebook.py makes them smaller.\n"
                  + "\n".join(f"{name} = {value}" for name, value in sizes.items()))
    cells = [_cell("markdown", f"{title}\n\n{INTRO}", "intro"), _cell("code", SETUP, "setup"),
             _cell("code", parameters, "parameters", tags=["parameters"])]
    used: set[str] = set()
    for number, (heading, text) in enumerate(body, 1):
        n = 0
        for kind, piece in pieces(text):
            sources = [piece] if kind == "markdown" else code_cells(kind, piece, by_command, used)
            if n == 0 and kind != "markdown":
                raise DriftError(f"section {heading!r} starts with a code block: give it a sentence first")
            for source in sources:
                cells.append(_cell("markdown" if kind == "markdown" else "code",
                                   f"{heading}\n\n{source}" if n == 0 else source, f"s{number}-{n}"))
                n += 1
    stale = [step.command for step in steps if step.command not in used]
    if stale:
        raise DriftError(f"tutorial.md no longer runs `{stale[0]}`: remove or update its Step in "
                         "docs/make_tutorial_notebook.py")
    return {"cells": cells, "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                                        "name": "python3"},
                                         "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def _cell(kind: str, source: str, cell_id: str, tags: list[str] | None = None) -> dict:
    cell: dict = {"cell_type": kind, "id": cell_id, "metadata": {"tags": tags} if tags else {},
                  "source": source.splitlines(keepends=True)}
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def render(notebook: dict) -> str:
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/tutorial.ipynb is not up to date")
    args = parser.parse_args(argv)
    try:
        text = render(build(MARKDOWN.read_text()))
    except DriftError as exc:
        print(f"make_tutorial_notebook: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if not NOTEBOOK.is_file() or NOTEBOOK.read_text() != text:
            print(f"{NOTEBOOK} is out of date: run python docs/make_tutorial_notebook.py", file=sys.stderr)
            return 1
        return 0
    NOTEBOOK.write_text(text)
    print(f"wrote {NOTEBOOK} ({len(text):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
