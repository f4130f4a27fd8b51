"""quill bench: the measurements run and the tables hold what they claim (not the speeds)."""

from pathlib import Path

import pytest
import torch

from quillgpt.cli import main
from quillgpt.config import preset
from quillgpt.data import TokenizerChoice
from quillgpt.errors import DataError
from quillgpt.speed import (
    TrainVariant,
    bench_prepare,
    bench_sample,
    bench_train,
    flops_per_token,
    format_prepare_table,
    format_sample_table,
    format_train_table,
)


def test_bench_sample_measures_both_paths() -> None:
    rows = bench_sample("tiny", new_tokens=20)
    assert [r["path"] for r in rows] == ["no cache", "KV cache"]
    assert rows[0]["ratio"] == 1.0 and all(r["tokens_per_s"] > 0 for r in rows)
    assert "| KV cache | 20 |" in format_sample_table(rows, "tiny", "cpu")


def test_bench_train_reports_every_variant() -> None:
    variants = [TrainVariant("classic fp32", "classic", "float32", False),
                TrainVariant("fused bf16", "fused", "bfloat16", False)]
    result = bench_train("tiny", steps=1, warmup=1, variants=variants, progress=lambda line: None)
    assert [r["variant"] for r in result["rows"]] == ["classic fp32", "fused bf16"]
    for row in result["rows"]:
        assert row["ms_per_step"] > 0 and row["mfu"] > 0 and row["tflops"] > 0
    table = format_train_table(result)
    assert "| classic fp32 |" in table and "1.00x" in table and "measured matmul peak" in table
    assert ("no fast bf16 here" in table) == (not result["fast_bf16"])
    assert "no fast bf16 here" in format_train_table({**result, "fast_bf16": False})


def test_flops_per_token_for_the_lecture_gpt() -> None:
    config = preset("seed-gpt")
    config.model.vocab_size = 65
    n_params = 10_788_929
    matmul_params = n_params - 65 * 384 - 256 * 384
    assert flops_per_token(config, n_params) == 6 * matmul_params + 12 * 6 * 384 * 256


@pytest.mark.parametrize("argv,fragment", [
    (["bench", "sample", "--preset", "huge"], "unknown preset 'huge'"),
    (["bench", "sample", "--new-tokens", "0"], "--new-tokens must be >= 1"),
    (["bench", "train", "--steps", "0"], "--steps must be >= 1"),
])
def test_bench_bad_input(capsys: pytest.CaptureFixture, argv: list[str], fragment: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err


def test_bench_prepare_measures_a_child_process(tmp_path: Path, small_text: str) -> None:
    text = tmp_path / "t.txt"
    text.write_text(small_text * 5)
    result = bench_prepare(texts=[str(text)], tokenizer=TokenizerChoice("bpe", 300))
    assert result["bytes"] == result["chars"] == len(small_text) * 5
    assert 0 < result["tokens"] < result["chars"] and result["vocab"] <= 300
    assert result["mb_per_s"] == pytest.approx(result["bytes"] / 1e6 / result["seconds"])
    assert 50 < result["peak_rss_mb"] < 2000  # a whole python with torch, measured for the child alone
    table = format_prepare_table(result)
    assert "| MB/s | peak RSS |" in table and f"{result['tokens']:,}" in table
    # every column of the RESULTS table comes from the command (issue 17.12)
    assert "| tokenizer |" in table and "| characters per token |" in table
    assert f"| {result['chars'] / result['tokens']:.2f} |" in table
    with pytest.raises(DataError, match="not found"):
        bench_prepare(texts=[str(tmp_path / "missing.txt")])


def test_the_matmul_peak_grows_its_side_only_while_a_product_is_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    import quillgpt.speed as speed

    sides: list[int] = []

    def fake_timed(fn, device):  # a product of side n "takes" n^3 / 512^3 * 0.2 s: 512 is the last under budget
        product = fn()
        sides.append(product.shape[0])
        return 0.2 * (product.shape[0] / 512) ** 3

    monkeypatch.setattr(speed, "_timed", fake_timed)
    flops, side = speed.measure_matmul_peak(torch.device("cpu"), torch.float32, size=2048, repeats=2, budget_s=0.25)
    assert sides == [256, 512, 1024, 1024, 1024]  # 1024 took 1.6 s: measured there, never 2048
    assert side == 1024 and flops == pytest.approx(2 * 1024**3 / 1.6)
    sides.clear()
    speed.measure_matmul_peak(torch.device("cpu"), torch.float32, size=512, repeats=1, budget_s=100.0)
    assert sides == [256, 512, 512]  # a fast dtype stops at the size asked for
