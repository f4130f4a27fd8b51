"""pass@k (tasks/pass_at_k.py): the unbiased estimator against hand-computed values and brute force."""

from __future__ import annotations

import itertools
import json
import math
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from quillgpt.cli import main
from quillgpt.tasks.arithmetic import ALPHABET, Problem, problems, sample_text
from quillgpt.tasks.exact_match import count_correct
from quillgpt.tasks.pass_at_k import PassAtK, pass_at_k, report_ks
from test_task_evaluate import Oracle


@pytest.mark.parametrize(("n", "c", "k", "expected"), [
    (4, 1, 1, 1 / 4),  # one right in four: a single draw finds it a quarter of the time
    (4, 1, 2, 1 - 3 / 6),  # 1 - C(3,2)/C(4,2)
    (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
    (10, 3, 4, 1 - 35 / 210),  # 1 - C(7,4)/C(10,4)
    (64, 1, 16, 16 / 64),  # one right in 64: a 16-subset holds it with chance 16/64
    (10, 0, 5, 0.0),
    (10, 7, 4, 1.0),  # only 3 wrong ones: every 4-subset holds a right one
    (8, 8, 1, 1.0),
])
def test_hand_computed(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@given(st.integers(1, 9).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_equals_the_share_of_k_subsets_holding_a_right_answer(nck: tuple[int, int, int]) -> None:
    n, c, k = nck
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets), abs=1e-12)


def test_large_n_without_overflow() -> None:
    # C(1000, 500) has ~300 digits; the product form never builds it
    expected = 1 - math.comb(900, 500) / math.comb(1000, 500)
    assert pass_at_k(1000, 100, 500) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 5, 1), (4, 1, 0), (4, 1, 5), (4, -1, 1)])
def test_impossible_counts_are_refused(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError, match="pass@k needs"):
        pass_at_k(n, c, k)


def test_report_averages_over_questions_and_lists_powers_of_two() -> None:
    report = PassAtK(correct=[0, 1, 4], samples=4, temperature=1.0)
    assert report_ks(4) == [1, 2, 4]
    assert report_ks(6) == [1, 2, 4, 6]
    assert report.value(1) == pytest.approx((0 + 0.25 + 1) / 3)
    assert report.value(4) == pytest.approx(2 / 3)
    assert report.never_solved == 1
    assert report.to_dict()["pass_at_k"] == {"1": report.value(1), "2": report.value(2), "4": report.value(4)}
    assert "pass@4 66.7%" in report.format()


class Coin(nn.Module):
    """Writes the true reversed answer, except that its first answer digit is a coin between the right
    digit (logit ``lead``) and that digit + 1 (logit 0): with lead 0 each sample is right with chance 1/2."""

    block_size = 128

    def __init__(self, lead: float = 0.0) -> None:
        super().__init__()
        self.lead = lead

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits = torch.full((*idx.shape, len(ALPHABET)), -1e9)
        for row, ids in enumerate(idx.tolist()):
            text = "".join(ALPHABET[i] for i in ids)
            a, op, b = re.match(r"(\d+)([-+*/])(\d+)=", text).groups()
            full = sample_text(Problem(int(a), op, int(b)), "reversed")
            nxt = full[len(text)] if len(text) < len(full) else "\n"
            logits[row, -1, ALPHABET.index(nxt)] = 0.0
            if text.endswith("="):
                logits[row, -1, ALPHABET.index(nxt)] = self.lead
                logits[row, -1, ALPHABET.index(str((int(nxt) + 1) % 10))] = 0.0
        return logits, None


def test_sampled_answers_are_counted_per_problem() -> None:
    cpu = torch.device("cpu")
    tests = problems("+", 2, 12, seed=3, split="test")
    assert count_correct(Oracle("reversed"), tests, "reversed", cpu, 8, 1.0, seed=0) == [8] * 12
    botched = {f"{p.a}+{p.b}=" for p in tests[:5]}
    assert count_correct(Oracle("reversed", botch=botched), tests, "reversed", cpu, 8, 1.0, seed=0) == [0] * 5 + [8] * 7
    coin = count_correct(Coin(), tests, "reversed", cpu, 64, 1.0, seed=0)
    assert all(12 <= c <= 52 for c in coin), coin  # Binomial(64, 1/2): outside 12..52 has chance < 1e-6 each
    assert coin == count_correct(Coin(), tests, "reversed", cpu, 64, 1.0, seed=0)  # the seed fixes the draw
    assert coin != count_correct(Coin(), tests, "reversed", cpu, 64, 1.0, seed=1)
    # the temperature reaches the draw: a lead of 3 is right 95% of the time at T=1, ~53% at T=30
    sharp = count_correct(Coin(lead=3.0), tests, "reversed", cpu, 64, 1.0, seed=0)
    hot = count_correct(Coin(lead=3.0), tests, "reversed", cpu, 64, 30.0, seed=0)
    assert sum(sharp) > 0.9 * 768 and sum(hot) < 0.65 * 768


@pytest.mark.slow
def test_task_eval_reports_pass_at_k_for_task_and_chat_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    task = tmp_path / "task"
    assert main(["train", "--preset", "add3-reversed", "--max-iters", "3", "--out-dir", str(task), "--n-layer", "1",
                 "--n-head", "2", "--n-embd", "32", "--batch-size", "8", "--eval-iters", "1", "--train-examples",
                 "100", "--eval-examples", "10", "--digits", "2", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["task", "eval", str(task), "--n", "10", "--samples", "4", "--temperature", "1.5", "--json"]) == 0
    sampled = json.loads(capsys.readouterr().out)["sampled"]
    assert sampled["samples"] == 4 and sampled["temperature"] == 1.5 and sampled["questions"] == 10
    values = [sampled["pass_at_k"][k] for k in ("1", "2", "4")]
    assert values == sorted(values)  # more tries never find less
    chat = tmp_path / "chat"
    assert main(["train", "--chat-data", "arithmetic", "--chat-digits", "2", "--chat-val", "20", "--preset", "tiny",
                 "--block-size", "40", "--max-iters", "2", "--out-dir", str(chat), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["task", "eval", str(chat), "--split", "val", "--n", "6", "--samples", "3"]) == 0
    out = capsys.readouterr().out
    assert "3 samples a question at temperature 1" in out and "pass@3" in out and "never solved" in out
    assert main(["task", "eval", str(chat), "--samples", "0"]) == 2
    assert main(["task", "eval", str(chat), "--samples", "2", "--temperature", "0"]) == 2
