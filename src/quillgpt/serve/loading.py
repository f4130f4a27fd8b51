"""The run a server serves: a GPT run, always with the fused attention (it has the KV cache)."""

from __future__ import annotations

from pathlib import Path

from quillgpt.checkpoint import LoadedRun, load_run
from quillgpt.device import resolve_device
from quillgpt.errors import CheckpointError
from quillgpt.models import build_model


def load_serving_run(run_dir: str | Path, which: str = "latest", device: str = "cpu") -> LoadedRun:
    """Load a GPT run for serving; a run trained with the classic attention is served by the fused
    module (the same parameters, see models/attention.py), which has the KV cache."""
    run = load_run(run_dir, which=which, device=resolve_device(device))
    if run.config.model.arch != "gpt":
        raise CheckpointError(f"{run.run_dir} is a {run.config.model.arch} model: quill serve needs a GPT run")
    if run.config.model.attention != "fused":
        config = run.config.replace({"model": {"attention": "fused"}})
        model = build_model(config.model)
        model.load_state_dict(run.model.state_dict())
        run.model = model.to(run.model.lm_head.weight.device).eval()
    return run
