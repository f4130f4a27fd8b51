"""Model flags an architecture does not read, and --dataset on a run that trains on no corpus, are
refused in one line (``ignored_flags.MODEL_FIELDS_READ_BY``, ``RunConfig.replace``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from quillgpt.cli import main
from quillgpt.config import ARCHS, ModelConfig, preset
from quillgpt.errors import ConfigError
from quillgpt.ignored_flags import MODEL_FIELDS_READ_BY
from quillgpt.models import build_model

BASE = ModelConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0, context_len=3)
# A second valid value for every model field a flag sets (arch, block_size and vocab_size act on every model).
OTHER: dict[str, Any] = {"n_layer": 3, "n_head": 4, "n_embd": 32, "dropout": 0.5, "attention": "classic",
                         "norm": "rms", "position": "rope", "activation": "gelu", "tie_weights": True,
                         "qk_norm": True, "qkv_bias": True, "head_bias": False, "context_len": 5}


def fingerprint(config: ModelConfig) -> tuple[str, int, list[float]]:
    """What a field could change: the modules, the parameter count, the logits (in training mode, so
    dropout shows) of a model drawn from the same seed."""
    torch.manual_seed(0)
    model = build_model(config).train()
    torch.manual_seed(1)
    idx = torch.arange(16).reshape(2, 8) % config.vocab_size
    logits, _ = model(idx)
    return repr(model), model.num_parameters(), logits.flatten().tolist()


def test_the_table_covers_every_model_flag() -> None:
    fields = {f.name for f in dataclasses.fields(ModelConfig)} - {"arch", "block_size", "vocab_size"}
    assert set(MODEL_FIELDS_READ_BY) == fields == set(OTHER)


@pytest.mark.parametrize("arch", ARCHS)
def test_an_arch_reads_exactly_the_fields_the_table_says(arch: str) -> None:
    """Changing a field the table gives to ``arch`` changes its model; changing any other does not."""
    base = fingerprint(dataclasses.replace(BASE, arch=arch))
    for name, value in OTHER.items():
        changed = fingerprint(dataclasses.replace(BASE, arch=arch, **{name: value})) != base
        assert changed == (arch in MODEL_FIELDS_READ_BY[name]), (arch, name)


@pytest.mark.parametrize(("arch", "change", "flag"), [
    ("bigram", {"n_head": 4}, "--n-head"),
    ("bigram", {"n_embd": 64}, "--n-embd"),
    ("bigram", {"dropout": 0.1}, "--dropout"),
    ("lstm", {"qk_norm": True}, "--qk-norm"),
    ("gru", {"head_bias": False}, "--no-head-bias"),
    ("cnn", {"position": "rope"}, "--position"),
    ("mlp", {"n_layer": 3}, "--n-layer"),
    ("rnn", {"context_len": 4}, "--context-len"),
])
def test_a_model_flag_the_arch_does_not_read_is_refused(arch: str, change: dict, flag: str) -> None:
    with pytest.raises(ConfigError, match=f"^{flag} is read only by arch .*, and this run's arch is {arch}, "
                                          f"which has no use for it: drop {flag}$"):
        preset("tiny").replace({"model": {"arch": arch, **change}})


def test_model_flags_are_taken_where_the_arch_reads_them() -> None:
    preset("tiny").replace({"model": {"arch": "lstm", "n_layer": 3, "n_embd": 48}}).validate()
    preset("tiny").replace({"model": {"arch": "mlp", "n_embd": 48, "context_len": 4}}).validate()
    preset("tiny").replace({"model": {"n_head": 4, "dropout": 0.1, "qk_norm": True, "head_bias": False}}).validate()
    # asking for what the model is anyway (no dropout, no QK-norm) asks for nothing ignored
    preset("tiny").replace({"model": {"arch": "gru", "dropout": 0.0, "qk_norm": False}}).validate()


@pytest.mark.parametrize(("name", "change", "message"), [
    ("tiny", {"arithmetic": {"task": "add"}}, "--dataset names a text corpus, but this run trains on the arithmetic "
                                              r"task --task add \(its problems are generated\): drop --dataset"),
    ("add3-reversed", {}, "--dataset names a text corpus, but this run trains on the arithmetic task"),
    ("sft", {}, "--dataset names a text corpus, but this run trains on the conversations of --chat-data arithmetic"),
])
def test_dataset_is_refused_where_no_corpus_is_read(name: str, change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        preset(name).replace({**change, "train": {"dataset": "shakespeare"}})
    preset("tiny").replace({"train": {"dataset": "shakespeare"}}).validate()  # a text run reads it


def test_the_cli_refuses_in_one_line(capsys: pytest.CaptureFixture) -> None:
    # (--max-iters 2: were a flag taken, the run would be short)
    assert main(["train", "--preset", "bigram", "--n-head", "4", "--max-iters", "2", "--no-progress"]) == 2
    assert main(["train", "--preset", "add3-reversed", "--dataset", "shakespeare", "--max-iters", "2",
                 "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "quill: error: --n-head is read only by arch gpt, and this run's arch is bigram, which has no use for it: "
        "drop --n-head",
        "quill: error: --dataset names a text corpus, but this run trains on the arithmetic task --task add (its "
        "problems are generated): drop --dataset"]


@pytest.mark.parametrize("flag", ["--qk-norm", "--no-head-bias", "--dropout=0.1"])
def test_seq2seq_takes_no_gpt_flags(flag: str, capsys: pytest.CaptureFixture) -> None:
    """quill seq2seq's model has its own few flags: a GPT flag is an unknown argument, in one line."""
    assert main(["seq2seq", flag, "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"unrecognized arguments: {flag}" in err


def test_a_model_flag_is_checked_against_the_init_from_runs_arch(tmp_path: Path, dataset_dir: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """--init-from swaps in the pretrained run's model (an lstm here, while the preset is a GPT): a GPT-only
    flag would act on nothing, in quill train and in quill sft alike."""
    lstm = tmp_path / "lstm"
    assert main(["train", "--preset", "tiny", "--arch", "lstm", "--dataset", str(dataset_dir), "--max-iters", "2",
                 "--eval-interval", "2", "--eval-iters", "1", "--sample-chars", "0", "--out-dir", str(lstm),
                 "--no-progress"]) == 0
    capsys.readouterr()
    short = ["--max-iters", "2", "--eval-iters", "1", "--no-progress"]  # were --dropout taken, a short run
    assert main(["train", "--preset", "tiny", "--init-from", str(lstm), "--dataset", str(dataset_dir), "--dropout",
                 "0.1", "--out-dir", str(tmp_path / "finetuned"), *short]) == 2
    assert main(["sft", str(lstm), "--dropout", "0.1", *short]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        "quill: error: --dropout is read only by arch gpt, and this run's arch is lstm, which has no use for it: "
        "drop --dropout"] * 2
    assert not (tmp_path / "finetuned").exists() and not (tmp_path / "lstm-sft").exists()
