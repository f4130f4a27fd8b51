"""``quill export`` and ``quill import``.

    quill export RUN_DIR --format hf --out DIR      transformers folder (+ tokenizer, model card)
    quill export RUN_DIR --format gguf --out F.gguf one GGUF file for llama.cpp / Ollama
    quill import DIR --out RUN_DIR                  a local GPT-2-family folder -> a quill run

transformers and gguf (the export extra) are imported by ``quillgpt.export.require`` inside the
functions that use them, so the modules imported here are light and a missing extra is one line.
Outputs are written next to the target under a temporary name and renamed at the end, so a
refused or failed export leaves nothing behind.
"""

from __future__ import annotations

import argparse
import os
import shlex
import time
from pathlib import Path

from quillgpt.checkpoint import load_run
from quillgpt.export import check_out_dir, check_out_file, require, staged_dir
from quillgpt.export.card import model_card
from quillgpt.export.gguf import export_gguf
from quillgpt.export.hf import export_hf
from quillgpt.export.importer import QUILL_META, import_gpt2
from quillgpt.fsutil import atomic_write_json

FORMATS = ("hf", "gguf")


def add_export_commands(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", help="write a run as a Hugging Face transformers folder or a GGUF file")
    export.add_argument("run_dir")
    export.add_argument("--format", choices=FORMATS, default="hf", help="hf (transformers folder) or gguf")
    export.add_argument("--out", required=True, help="the new folder (hf) or file (gguf); must not exist")
    export.add_argument("--checkpoint", default="latest", help="latest or best")
    export.set_defaults(func=cmd_export)

    imp = commands.add_parser("import", help="turn a local Hugging Face GPT-2-family folder into a quill run")
    imp.add_argument("folder", help="config.json (model_type gpt2) + model.safetensors + tokenizer.json")
    imp.add_argument("--out", help="the new run directory (default runs/FOLDER_NAME); must not exist")
    imp.set_defaults(func=cmd_import)


def _command_line(*words: str) -> str:
    """The command as a user would type it (from the parsed arguments: argv may be pytest's)."""
    return " ".join(["quill", *(shlex.quote(w) for w in words)])


def _quiet_transformers() -> None:
    # Progress bars and load reports would bury the one summary line.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers = require("transformers")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def cmd_export(args: argparse.Namespace) -> int:
    out = Path(args.out)
    start = time.perf_counter()
    if args.format == "gguf":
        check_out_file(out, ".gguf")  # before loading anything
        require("gguf")
        run = load_run(args.run_dir, which=args.checkpoint)
        result = export_gguf(run, out)
        print(f"exported {run.run_dir} (step {run.step}) -> {out} (GGUF, arch {result.arch}, "
              f"{result.n_tensors} tensors) in {time.perf_counter() - start:.1f}s")
        return 0
    check_out_dir(out)  # before loading anything
    _quiet_transformers()
    run = load_run(args.run_dir, which=args.checkpoint)
    with staged_dir(out) as tmp:
        result = export_hf(run, tmp)
        command = _command_line("export", args.run_dir, "--format", "hf", "--out", args.out)
        card = model_card(run, result.arch, result.max_logit_diff, command)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        atomic_write_json(tmp / QUILL_META, {"config": run.config.to_dict(), "data": run.data_info,
                                             "step": run.step, "source_run": str(run.run_dir)})
    fold = "" if result.fold == "none" else f", lm_head bias folded into ln_f ({result.fold})"
    print(f"exported {run.run_dir} (step {run.step}) -> {out} ({result.arch}{', tied' if result.tied else ''}"
          f"{fold}); max |logit diff| {result.max_logit_diff:.2g}; {time.perf_counter() - start:.1f}s")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    out = Path(args.out) if args.out else Path("runs") / folder.resolve().name
    start = time.perf_counter()
    with staged_dir(out) as tmp:
        info = import_gpt2(folder, tmp, _command_line("import", args.folder, "--out", str(out)))
    print(f"imported {folder} -> {out}: GPT-2 layout, {info['layers']} layers x {info['n_embd']}, "
          f"{info['tokenizer']}, activation {info['activation']}{', tied head' if info['tied'] else ''}; "
          f"{time.perf_counter() - start:.1f}s. Try: quill sample {out} --top-k 1")
    return 0
