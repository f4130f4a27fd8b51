"""The model card (README.md) that goes with an exported folder.

A YAML header the Hugging Face Hub reads (library, pipeline, tags, and ``license:`` left
empty: only the person publishing knows the license of the data and can fill it in), then
what the model is, what it was trained on, how far, how good (val loss, bits per character)
and the commands that made it.
"""

from __future__ import annotations

import json
import math
from typing import Any

from quillgpt.checkpoint import LoadedRun

ARCH_NAMES = {"gpt2": "GPT-2 layout (GPT2LMHeadModel)", "llama": "Llama layout (LlamaForCausalLM)"}


def _last_eval(run: LoadedRun) -> dict[str, Any]:
    last = run.trainer_state.get("last_eval") if isinstance(run.trainer_state, dict) else None
    return last if isinstance(last, dict) else {}


def _finetuned_from(run: LoadedRun) -> str:
    """", finetuned from RUN (step N)" for a run started with --init-from or quill sft (init.json)."""
    try:
        init = json.loads((run.run_dir / "init.json").read_text())
        return f", finetuned from {init['run']} (step {init['step']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def model_card(run: LoadedRun, arch: str, max_logit_diff: float, export_command: str) -> str:
    c = run.config
    m = c.model
    params = sum(p.numel() for p in run.model.parameters())
    data = run.data_info if isinstance(run.data_info, dict) else {}
    source = data.get("source") if isinstance(data.get("source"), dict) else {}
    last = _last_eval(run)
    val_loss, bpc = last.get("val_loss"), last.get("val_bpc")
    if bpc is None and isinstance(val_loss, (int, float)) and run.tokenizer.kind == "char":
        bpc = val_loss / math.log(2)  # one token per character
    fmt = (lambda x: f"{x:.4f}" if isinstance(x, (int, float)) else "not measured")  # noqa: E731
    tags = ["quillgpt", arch, "text-generation"] + (["chat"] if c.chat.enabled else [])
    flags = (f"position {m.position}, norm {m.norm}, activation {m.activation}, "
             f"tied head {'yes' if m.tie_weights else 'no'}")
    dataset = data.get("dataset") or "unknown"
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "license:  # fill in: the license of the weights (mind the license of the training data)",
        "tags:", *[f"- {tag}" for tag in tags],
        "---",
        "",
        f"# {run.run_dir.name}",
        "",
        f"A {params:,}-parameter GPT trained with quillgpt, exported to the {ARCH_NAMES[arch]}.",
        f"{m.n_layer} layers, {m.n_head} heads, {m.n_embd} wide, context {m.block_size} tokens; {flags}.",
        f"Tokenizer: {run.tokenizer.describe()}." + (" Chat model: use `tokenizer.apply_chat_template`; "
                                                     "replies end with `<|end|>`." if c.chat.enabled else ""),
        "",
        "## Training",
        "",
        f"- data: {dataset}" + (f" ({source.get('name')}, {source.get('chars', '?'):,} characters, sha256 "
                                f"{str(source.get('sha256'))[:12]}...)" if source.get("name") else ""),
        f"- steps: {run.step} (batch {c.train.batch_size} x {m.block_size} tokens)" + _finetuned_from(run),
        f"- val loss: {fmt(val_loss)} nats/token; bits per character: {fmt(bpc)}",
        "",
        "## Commands that made it",
        "",
        "```bash",
        f"quill train --config {run.run_dir}/config.json   # the run's config, below",
        export_command,
        "```",
        "",
        f"The export was checked: max |logit difference| against quill in fp32 {max_logit_diff:.2g}.",
        "",
        "```json",
        json.dumps(c.to_dict()["model"], indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)
