"""Which device and which precision: ``--device auto|cpu|cuda|mps`` and ``--dtype auto|float32|...``.

Every command that runs a model needs these, and most never train (sample, serve, lessons), so
they live here and not in the trainer.
"""

from __future__ import annotations

from pathlib import Path

import torch

from quillgpt.errors import ConfigError


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA, else Apple MPS, else the CPU; a named device that is missing is one clear line."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but no CUDA GPU is available: use --device cpu or auto")
    if name == "mps" and not _mps_available():
        raise ConfigError("device mps requested but Apple MPS is not available: use --device cpu or auto")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bfloat16 where the hardware does it fast (recent GPUs, CPUs with AMX/AVX512-BF16), else float32."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if device.type == "cpu" and _cpu_has_fast_bf16():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags
