"""Arithmetic tasks through the one trainer: data, masked loss, resume, and the task commands."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from quillgpt.checkpoint import load_run
from quillgpt.cli import main
from quillgpt.config import preset
from quillgpt.errors import ConfigError, DataError
from quillgpt.tasks.arithmetic import ALPHABET, HINTS, IGNORE, Problem, answer_text, encode, prompt_text
from quillgpt.tasks.dataset import ArithmeticDataset, open_dataset
from quillgpt.train import Trainer
from test_task_evaluate import Oracle

SMALL = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--batch-size", "16", "--eval-iters", "2",
         "--train-examples", "200", "--eval-examples", "50", "--digits", "2", "--no-progress"]


def small_config(**train):
    config = preset("add3-reversed")
    config.model.n_layer, config.model.n_head, config.model.n_embd = 1, 2, 32
    config.train.batch_size, config.train.eval_iters, config.train.max_iters, config.train.eval_interval = 16, 2, 30, 10
    config.arithmetic.digits, config.arithmetic.train_examples, config.arithmetic.eval_examples = 2, 200, 50
    for key, value in train.items():
        setattr(config.train, key, value)
    return config


def test_training_and_held_out_sets_are_disjoint_and_fixed() -> None:
    config = small_config().arithmetic
    data = ArithmeticDataset(config)
    assert len(data.train_pool) == 200 and len(data.val_pool) == 50
    assert not set(data.train_pool) & set(data.val_pool)
    assert ArithmeticDataset(config).train_pool == data.train_pool
    assert ArithmeticDataset(config).source_sha256 == data.source_sha256
    config.eval_seed = 7
    assert ArithmeticDataset(config).val_pool != data.val_pool
    assert ArithmeticDataset(config).source_sha256 != data.source_sha256


def test_block_size_check_names_the_size_needed() -> None:
    data = ArithmeticDataset(preset("calc3").arithmetic)
    need = data.longest_sample()
    data.check_block_size(need)
    with pytest.raises(DataError, match=f"--block-size {need}"):
        data.check_block_size(need - 1)


def test_too_many_held_out_problems_is_a_config_error() -> None:
    config = small_config().arithmetic
    config.digits, config.eval_examples = 1, 500  # 1-digit addition has only 100 problems
    with pytest.raises(ConfigError, match="--eval-examples"):
        ArithmeticDataset(config)


def expected_row(inputs: list[int], fmt: str) -> tuple[list[int], list[int]]:
    """What a training row must be, worked out from the problem it shows: (inputs, targets). The inputs are
    the sample (after any leading newlines) without its last character, padded with newlines; the targets
    are IGNORE until the last prompt character, then the answer and its closing newline, then IGNORE."""
    text = "".join(ALPHABET[i] for i in inputs)
    body = text.lstrip("\n")
    shift = len(text) - len(body)
    a, op, b = re.match(r"([a-j\d]+)([-+*/])([a-j\d]+)=", body).groups()
    offset = HINTS.index(a[-2]) if fmt == "hinted" else 0  # the hint on the units digit
    problem = Problem(int(re.sub("[a-j]", "", a)), op, int(re.sub("[a-j]", "", b)))
    prompt, answer = "\n" * shift + prompt_text(problem, fmt, offset), answer_text(problem, fmt, offset) + "\n"
    width = len(inputs)
    targets = [IGNORE] * (len(prompt) - 1) + encode(answer)
    return encode((prompt + answer)[:-1].ljust(width, "\n")), targets + [IGNORE] * (width - len(targets))


def packed_problems(x: torch.Tensor, y: torch.Tensor, inputs: dict[str, torch.Tensor]) -> list[tuple[list, list]]:
    """The (inputs, targets) of every problem in packed rows: a problem starts at position 0 (padding
    tokens too, one each, all IGNORE)."""
    out = []
    for ids, targets, positions in zip(x.tolist(), y.tolist(), inputs["positions"].tolist(), strict=True):
        starts = [t for t, p in enumerate(positions) if p == 0] + [len(positions)]
        for start, end in zip(starts, starts[1:], strict=False):
            assert positions[start:end] == list(range(end - start))
            if any(t != IGNORE for t in targets[start:end]):
                out.append((ids[start:end], targets[start:end]))
    return out


@pytest.mark.parametrize("name", ["add3-reversed", "add3-plain", "add3-hinted", "mul2-scratchpad", "calc3"])
def test_only_answer_tokens_are_trained_on(name: str) -> None:
    config = preset(name)
    if config.arithmetic.train_examples:
        config.arithmetic.train_examples = 300  # drawn faster; calc3 draws fresh problems (0) and keeps that
    data = ArithmeticDataset(config.arithmetic)
    ops = set()
    for split in ("train", "val"):
        x, y, *packed = data.batches(split, 32, config.model.block_size, seed=0).next()
        assert bool(packed) == config.arithmetic.pack  # calc3: several problems per row
        rows = zip(x.tolist(), y.tolist(), strict=True) if not packed else packed_problems(x, y, packed[0])
        for inputs, targets in rows:
            assert (inputs, targets) == expected_row(inputs, config.arithmetic.format)
            ops |= set(re.match(r"\n*[a-j\d]+([-+*/])", "".join(ALPHABET[i] for i in inputs)).groups())
    assert ops == set(config.arithmetic.ops)  # calc3: rows of all four operators were checked


def test_a_task_run_learns_and_resumes_bitwise_identically(tmp_path: Path) -> None:
    straight = Trainer(small_config(), open_dataset(small_config()), tmp_path / "straight", progress=False)
    result = straight.train()
    evals = [json.loads(line) for line in (tmp_path / "straight/metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["kind"] == "eval"]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.2 and result.val_bpc is None
    first = Trainer(small_config(), open_dataset(small_config()), tmp_path / "resumed", progress=False)
    first.train(stop_at=13)
    assert main(["train", "--resume", str(tmp_path / "resumed"), "--no-progress"]) == 0
    a, b = load_run(tmp_path / "straight"), load_run(tmp_path / "resumed")
    for name, tensor in a.model.state_dict().items():
        assert torch.equal(tensor, b.model.state_dict()[name]), name
    assert main(["train", "--resume", str(tmp_path / "resumed"), "--digits", "3"]) == 2  # a different task


@pytest.fixture(scope="module")
def task_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("task") / "run"
    assert main(["train", "--preset", "add3-reversed", "--max-iters", "20", "--eval-interval", "10",
                 "--out-dir", str(run), *SMALL]) == 0
    return run


def test_train_prints_held_out_accuracy(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--preset", "add3-reversed", "--max-iters", "5", "--eval-interval", "5",
                 "--out-dir", str(tmp_path / "run"), *SMALL]) == 0
    out = capsys.readouterr().out
    assert "held-out accuracy (50 problems of the val set)" in out and "quill task eval" in out


class Silent(torch.nn.Module):
    """A 'model' that ends every answer at once (writes the newline): no answer at all."""

    block_size = 128

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits = torch.full((*idx.shape, len(ALPHABET)), -1e9)
        logits[..., ALPHABET.index("\n")] = 0.0
        return logits, None


def answer_with(monkeypatch: pytest.MonkeyPatch, model: torch.nn.Module) -> None:
    """quill task eval and quill calc load the run as usual, then answer with ``model`` instead of its own."""
    import quillgpt.commands.tasks as task_cli

    load = task_cli.load_run
    monkeypatch.setattr(task_cli, "load_run", lambda *args, **kwargs: dataclasses.replace(load(*args, **kwargs),
                                                                                          model=model))


EVERY_2_DIGIT_SUM = frozenset(f"{a}+{b}=" for a in range(100) for b in range(100))


def test_task_eval_reports_accuracy(task_run: Path, capsys: pytest.CaptureFixture,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["task", "eval", str(task_run), "--n", "40", "--eval-seed", "9", "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 40 and report["eval_seed"] == 9 and report["digits"] == 2
    assert sum(v["n"] for v in report["by_length"].values()) == 40
    assert report["accuracy"] == sum(v["correct"] for v in report["by_length"].values()) / 40
    assert main(["task", "eval", str(task_run), "--n", "40"]) == 0
    assert "exact =" in capsys.readouterr().out
    # The scoring, with models whose answers are known: all right, then all wrong (every digit off by one).
    answer_with(monkeypatch, Oracle("reversed"))
    assert main(args) == 0
    perfect = json.loads(capsys.readouterr().out)
    assert perfect["accuracy"] == 1.0 and perfect["wrong_examples"] == []
    answer_with(monkeypatch, Oracle("reversed", botch=EVERY_2_DIGIT_SUM))
    assert main(args) == 0
    botched = json.loads(capsys.readouterr().out)
    assert botched["accuracy"] == 0.0 and len(botched["wrong_examples"]) == 10


@pytest.mark.parametrize(("model", "out", "code"), [
    (Oracle("reversed"), "12+34=46  (correct)\n", 0),
    (Oracle("reversed", botch={"12+34="}), "12+34=57  (WRONG, Python says 46)\n", 1),  # wrote 75: 57 reversed
    (Silent(), "12+34=?  (the model wrote '', not an answer; Python: 46)\n", 1),
], ids=["right", "wrong", "no-answer"])
def test_calc_answers_and_says_whether_python_agrees(task_run: Path, capsys: pytest.CaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch, model: torch.nn.Module,
                                                     out: str, code: int) -> None:
    answer_with(monkeypatch, model)
    assert main(["calc", str(task_run), "12+34"]) == code
    assert capsys.readouterr().out == out


@pytest.mark.parametrize(("argv", "message"), [
    (["calc", "{run}", "3*4"], "trained on + only"),
    (["calc", "{run}", "3 plus 4"], "cannot read"),
    (["task", "eval", "{run}", "--task", "mul"], "not on *"),
    (["task", "eval", "{run}", "--task", "pow"], "unknown task"),
    (["task", "eval", "{run}", "--n", "0"], "--n must be >= 1, got 0"),
])
def test_task_commands_refuse_with_one_line(task_run: Path, capsys: pytest.CaptureFixture, argv: list[str],
                                            message: str) -> None:
    assert main([a.replace("{run}", str(task_run)) for a in argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err and captured.err.count("\n") == 1


def test_task_commands_refuse_a_text_model(tmp_path: Path, dataset_dir: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "text"
    assert main(["train", "--preset", "tiny", "--dataset", str(dataset_dir), "--max-iters", "2", "--eval-interval", "2",
                 "--out-dir", str(run), "--no-progress", "--sample-chars", "0"]) == 0
    capsys.readouterr()
    assert main(["calc", str(run), "1+1"]) == 2
    assert "not trained on an arithmetic task" in capsys.readouterr().err
