"""``quill bench``: speed measured side by side in one process, printed as ratios.

    quill bench sample --preset seed-gpt --new-tokens 1000   KV cache vs no cache
    quill bench train --preset seed-gpt --steps 5            classic fp32, fused fp32, fused bf16, + compile
    quill bench prepare --corpus english-novels --tokenizer bpe --vocab-size 8192   MB/s and peak RSS

Models are randomly initialised (speed does not depend on the weights) and trained on
random tokens, so no data set is needed. Timings on shared machines are noisy: compare
the ratios within one table, not numbers across runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from quillgpt.config import RunConfig, preset
from quillgpt.data import TokenDataset, TokenizerChoice, prepare_text
from quillgpt.device import resolve_device, resolve_dtype
from quillgpt.errors import DataError
from quillgpt.models import build_model
from quillgpt.sample import generate
from quillgpt.train import Trainer

VOCAB = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # Tiny Shakespeare's 65


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------


def bench_sample(preset_name: str = "seed-gpt", new_tokens: int = 1000, device: str = "cpu",
                 seed: int = 0) -> list[dict]:
    """Tokens/s of sampling ``new_tokens`` from a 1-token prompt, with and without the KV cache."""
    config = preset(preset_name).model
    config.vocab_size = len(VOCAB)
    config.attention = "fused"
    dev = resolve_device(device)
    torch.manual_seed(seed)
    model = build_model(config).to(dev).eval()
    prompt = torch.zeros(1, 1, dtype=torch.long, device=dev)
    rows = []
    for use_cache in (False, True):
        generate(model, prompt, 8, use_cache=use_cache)  # warm-up
        gen = torch.Generator(device=dev).manual_seed(seed)
        seconds = _timed(lambda uc=use_cache, g=gen: generate(model, prompt, new_tokens, generator=g, use_cache=uc),
                         dev)
        rows.append({"path": "KV cache" if use_cache else "no cache", "tokens": new_tokens, "seconds": seconds,
                     "tokens_per_s": new_tokens / seconds})
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["ratio"] = row["tokens_per_s"] / base
    return rows


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------


@dataclass
class TrainVariant:
    name: str
    attention: str
    dtype: str
    compile: bool


TRAIN_VARIANTS = [
    TrainVariant("classic fp32", "classic", "float32", False),
    TrainVariant("fused fp32", "fused", "float32", False),
    TrainVariant("fused bf16", "fused", "bfloat16", False),
    TrainVariant("fused bf16 + compile", "fused", "bfloat16", True),
]


def flops_per_token(config: RunConfig, n_params: int) -> float:
    """Training FLOPs per token: 6 per parameter (forward + backward matmuls) plus attention's
    QK^T and AV, 12 * n_layer * n_embd * block_size (Kaplan et al. 2020; PaLM appendix B)."""
    m = config.model
    n_embedding = m.vocab_size * m.n_embd + m.block_size * m.n_embd  # lookups, not matmuls
    return 6 * (n_params - n_embedding) + 12 * m.n_layer * m.n_embd * m.block_size


def measure_matmul_peak(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 5,
                        budget_s: float = 0.25) -> tuple[float, int]:
    """FLOP/s of a square matmul in ``dtype`` (the practical peak MFU is measured against), and its side.

    The side doubles from 256 up to ``size`` only while one product takes under ``budget_s``: where a
    dtype has no fast kernel (bf16 on a CPU without AMX/AVX512-BF16 runs ~30x slower than fp32) the
    2048^3 product would take minutes, and a smaller one measures that slow rate just as well.
    """
    side, seconds = 256, 0.0
    while True:
        a = torch.randn(side, side, device=device).to(dtype)
        b = torch.randn(side, side, device=device).to(dtype)
        seconds = _timed(lambda a=a, b=b: a @ b, device)  # also the warm-up of this size
        if side >= size or seconds >= budget_s:
            break
        side *= 2
    seconds = min(_timed(lambda: a @ b, device) for _ in range(repeats))
    return 2 * side**3 / seconds, side


def _synthetic_dataset(folder: Path, n_chars: int = 200_000, seed: int = 0) -> TokenDataset:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(VOCAB), (n_chars,), generator=gen).tolist()
    text = "".join(VOCAB[i] for i in ids)
    return TokenDataset(prepare_text(text, folder, {"name": "random", "sha256": "0" * 64}))


def bench_train(preset_name: str = "seed-gpt", steps: int = 5, warmup: int = 2, device: str = "cpu",
                batch_size: int | None = None, variants: list[TrainVariant] | None = None,
                progress: Callable[[str], None] = print) -> dict:
    """ms/step, tokens/s, ratio vs the first variant, and MFU for each training variant."""
    dev = resolve_device(device)
    base = preset(preset_name)
    if batch_size:
        base.train.batch_size = batch_size
    measured = {dt: measure_matmul_peak(dev, getattr(torch, dt)) for dt in ("float32", "bfloat16")}
    peaks = {dt: flops for dt, (flops, _) in measured.items()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dataset = _synthetic_dataset(Path(tmp) / "data")
        for variant in variants or TRAIN_VARIANTS:
            progress(f"  {variant.name}: {warmup} warm-up + {steps} timed steps ...")
            config = RunConfig(model=dataclasses.replace(base.model, attention=variant.attention),
                               train=dataclasses.replace(base.train, dtype=variant.dtype, compile=variant.compile,
                                                         device=str(dev), max_iters=warmup + steps))
            trainer = Trainer(config, dataset, Path(tmp) / variant.name.replace(" ", "_"), progress=False)
            for _ in range(warmup):
                trainer.train_step()
            seconds = _timed(lambda t=trainer: [t.train_step() for _ in range(steps)], dev) / steps
            tokens = config.train.batch_size * config.train.grad_accum * config.model.block_size
            flops = flops_per_token(config, trainer.model.num_parameters()) * tokens / seconds
            peak = peaks["float32" if variant.dtype == "float32" else "bfloat16"]
            rows.append({"variant": variant.name, "ms_per_step": 1000 * seconds, "tokens_per_s": tokens / seconds,
                         "tflops": flops / 1e12, "mfu": flops / peak})
            del trainer
    for row in rows:
        row["ratio"] = row["tokens_per_s"] / rows[0]["tokens_per_s"]
    return {"rows": rows, "peaks": peaks, "peak_sides": {dt: side for dt, (_, side) in measured.items()},
            "device": str(dev), "preset": preset_name, "fast_bf16": resolve_dtype("auto", dev) == torch.bfloat16,
            "batch_size": base.train.batch_size, "block_size": base.model.block_size}


def format_train_table(result: dict) -> str:
    peaks, sides = result["peaks"], result["peak_sides"]
    lines = [f"quill bench train: preset {result['preset']}, batch {result['batch_size']} x block "
             f"{result['block_size']}, device {result['device']}, torch {torch.__version__}",
             f"measured matmul peak: fp32 {peaks['float32'] / 1e12:.2f} TFLOP/s ({sides['float32']}^3), "
             f"bf16 {peaks['bfloat16'] / 1e12:.2f} TFLOP/s ({sides['bfloat16']}^3), same run"]
    if not result["fast_bf16"]:
        lines.append("note: no fast bf16 here (a CPU without AMX/AVX512-BF16): the bf16 rows run slow kernels, "
                     "and --dtype auto trains in float32")
    lines += ["",
             "| variant | ms/step | tokens/s | vs classic fp32 | TFLOP/s | MFU (vs measured peak of its dtype) |",
             "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['variant']} | {r['ms_per_step']:.0f} | {r['tokens_per_s']:,.0f} | {r['ratio']:.2f}x | "
                     f"{r['tflops']:.3f} | {100 * r['mfu']:.0f}% |")
    return "\n".join(lines)


def format_sample_table(rows: list[dict], preset_name: str, device: str) -> str:
    lines = [f"quill bench sample: preset {preset_name}, device {device}, torch {torch.__version__}", "",
             "| path | new tokens | seconds | tokens/s | ratio |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['path']} | {r['tokens']} | {r['seconds']:.2f} | {r['tokens_per_s']:.1f} | "
                     f"{r['ratio']:.1f}x |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Preparing a corpus
# ---------------------------------------------------------------------------------------


def bench_prepare(corpus: str = "english-novels", texts: list[str] | None = None,
                  tokenizer: TokenizerChoice | None = None, data_path: str | None = None) -> dict:
    """Time ``quill prepare`` in a child process and read its peak resident memory.

    A child process, so the peak RSS is that of the preparation alone (the whole CLI,
    torch import included), not of whatever this process did before.
    """
    choice = tokenizer or TokenizerChoice()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "dataset"
        argv = [sys.executable, "-m", "quillgpt", "prepare", *(["--text", *texts] if texts else [corpus]),
                "--out", str(out), "--tokenizer", choice.kind]
        argv += ["--vocab-size", str(choice.vocab_size)] if choice.vocab_size else []
        argv += ["--data", data_path] if data_path else []
        with open(Path(tmp) / "stderr", "w+") as errors:
            start = time.perf_counter()
            child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=errors)
            _, status, usage = os.wait4(child.pid, 0)  # the child's own resource usage
            seconds = time.perf_counter() - start
            child.returncode = os.waitstatus_to_exitcode(status)
            errors.seek(0)
            message = errors.read().strip()
        if child.returncode != 0:
            raise DataError(message.removeprefix("quill: error: ") or f"quill prepare exited {child.returncode}")
        meta = json.loads((out / "meta.json").read_text())
    split, source = meta["split"], meta["source"]
    return {"what": " ".join(texts) if texts else corpus, "tokenizer": f"{choice.kind}"
            + (f" {choice.vocab_size}" if choice.vocab_size else ""), "vocab": _vocab_size(meta),
            "bytes": source["bytes"], "chars": source["chars"], "tokens": split["train_tokens"] + split["val_tokens"],
            "seconds": seconds, "mb_per_s": source["bytes"] / 1e6 / seconds,
            "peak_rss_mb": usage.ru_maxrss / 1024, "cpu_seconds": usage.ru_utime + usage.ru_stime}


def _vocab_size(meta: dict) -> int:
    from quillgpt.tokenizers import tokenizer_from_dict

    return tokenizer_from_dict(meta["tokenizer"]).vocab_size


def format_prepare_table(result: dict) -> str:
    r = result
    return "\n".join([
        f"quill bench prepare: {r['what']}, tokenizer {r['tokenizer']}, {os.cpu_count()} CPU cores",
        "",
        "| tokenizer | text | tokens | characters per token | wall s | CPU s | MB/s | peak RSS |",
        "|---|---|---|---|---|---|---|---|",
        f"| {r['tokenizer']} ({r['vocab']:,} tokens) | {r['bytes'] / 1e6:.1f} MB ({r['chars']:,} chars) | "
        f"{r['tokens']:,} | {r['chars'] / max(1, r['tokens']):.2f} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | "
        f"{r['mb_per_s']:.2f} | {r['peak_rss_mb']:.0f} MB |",
    ])
