"""Exact-match evaluation: greedy decoding, parsing, breakdowns, and the calculator's input."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from quillgpt.tasks.arithmetic import ALPHABET, Problem, problems, sample_text
from quillgpt.tasks.exact_match import Report, TaskError, attempt_all, carries, parse_expression


class Oracle(nn.Module):
    """A 'model' that writes the true sample (optionally botching chosen problems): it tests the
    decoding, parsing and scoring around a model, not a model."""

    block_size = 128

    def __init__(self, fmt: str, botch: set[str] = frozenset()) -> None:
        super().__init__()
        self.fmt, self.botch = fmt, botch

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits = torch.full((*idx.shape, len(ALPHABET)), -1e9)
        for row, ids in enumerate(idx.tolist()):
            text = "".join(ALPHABET[i] for i in ids)
            a, op, b = re.match(r"(\d+)([-+*/])(\d+)=", text).groups()
            full = sample_text(Problem(int(a), op, int(b)), self.fmt)
            nxt = full[len(text)] if len(text) < len(full) else "\n"
            if text.split("=")[0] + "=" in self.botch and nxt.isdigit():
                nxt = str((int(nxt) + 1) % 10)
            logits[row, -1, ALPHABET.index(nxt)] = 0.0
        return logits, None


@pytest.mark.parametrize("fmt", ["plain", "reversed", "scratchpad"])
def test_a_perfect_model_scores_100_percent_in_every_format(fmt: str) -> None:
    tests = problems("+-*/", 3, 60, seed=5, split="test")
    report = Report(attempt_all(Oracle(fmt), tests, fmt, torch.device("cpu"), batch_size=7))
    assert report.accuracy == 1.0
    assert [a.problem for a in report.attempts] == tests  # results come back in the order asked
    if fmt == "scratchpad":
        assert all(a.steps_ok for a in report.attempts)


def test_wrong_answers_are_counted_and_broken_down() -> None:
    tests = [Problem(5, "+", 7), Problem(55, "+", 55), Problem(12, "+", 1), Problem(99, "-", 100)]
    report = Report(attempt_all(Oracle("reversed", botch={"55+55="}), tests, "reversed", torch.device("cpu")))
    assert [a.correct for a in report.attempts] == [True, False, True, True]
    assert report.accuracy == 0.75
    assert report.breakdown("length") == {1: (1, 1), 2: (1, 2), 3: (1, 1)}
    assert report.breakdown("carries") == {0: (1, 1), 1: (1, 1), 2: (1, 2)}
    summary = report.to_dict()
    assert summary["wrong_examples"] == ["55+55=122"] and summary["by_op"]["+"]["n"] == 3
    assert "75.00%" in report.format("add")


def test_carries_and_borrows() -> None:
    assert carries(Problem(999, "+", 1)) == 3
    assert carries(Problem(123, "+", 456)) == 0
    assert carries(Problem(100, "-", 1)) == 2  # borrows of 100-1
    assert carries(Problem(1, "-", 100)) == 2  # the larger minus the smaller
    assert carries(Problem(12, "*", 3)) is None


@pytest.mark.parametrize(("text", "expected"), [
    ("123*45", Problem(123, "*", 45)), (" 7 x 8 ", Problem(7, "*", 8)), ("9÷2", Problem(9, "/", 2)),
    ("10-30", Problem(10, "-", 30)),
])
def test_parse_expression(text: str, expected: Problem) -> None:
    assert parse_expression(text) == expected


@pytest.mark.parametrize("text", ["1+", "a+b", "1+2+3", "-1+2", "1.5*2", "5/0"])
def test_parse_expression_refuses_with_one_line(text: str) -> None:
    with pytest.raises(TaskError) as info:
        parse_expression(text)
    assert "\n" not in str(info.value)
