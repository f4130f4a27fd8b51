"""Held-out arithmetic problems are never trained on, not even as their swapped twin."""

from __future__ import annotations

import pytest

from quillgpt.config import preset
from quillgpt.errors import ConfigError
from quillgpt.tasks.arithmetic import COMMUTATIVE, OPS, Problem, problems


def swapped(problem: Problem) -> Problem:
    return Problem(problem.b, problem.op, problem.a)


def test_a_commutative_problem_and_its_twin_share_a_split() -> None:
    for op in OPS:
        for a in range(0, 120, 7):
            for b in range(1, 120, 11):
                p = Problem(a, op, b)
                if op in COMMUTATIVE:
                    assert p.split == swapped(p).split, p
    # Subtraction and division are not commutative: a-b and b-a are different facts, split apart.
    assert {Problem(a, "-", b).split == Problem(b, "-", a).split for a in range(60) for b in range(60)} == {True, False}


def test_mul2_scratchpad_held_out_problems_have_no_twin_in_training() -> None:
    """The reviewer's count: 291 of the 800 held-out problems had their twin among the 3,000."""
    arith = preset("mul2-scratchpad").arithmetic
    train = set(problems("*", arith.digits, arith.train_examples, arith.data_seed, "train"))
    held_out = problems("*", arith.digits, 800, 1000, "test")
    twins = [p for p in held_out if swapped(p) in train]
    assert not twins, f"{len(twins)} held-out problems have their swapped twin in training"
    assert not train & set(held_out)


def test_add3_held_out_problems_have_no_twin_in_training() -> None:
    arith = preset("add3-reversed").arithmetic
    train = set(problems("+", arith.digits, arith.train_examples, arith.data_seed, "train"))
    held_out = problems("+", arith.digits, 2000, 1000, "test")
    assert not [p for p in held_out if swapped(p) in train]


def test_chat_questions_have_disjoint_train_val_and_test_halves() -> None:
    from quillgpt.tasks.questions import questions

    train = {q.problem.canonical for q in questions("+-*", 2, 2000, 0, "train")}
    val = {q.problem.canonical for q in questions("+-*", 2, 300, 0, "val")}
    test = {q.problem.canonical for q in questions("+-*", 2, 300, 0, "test")}
    assert len(val) > 200 and len(test) > 200  # 300 distinct problems each, some of them twins
    assert not train & val and not train & test and not val & test
    # Another seed's val draw still never meets any test draw: the halves are fixed by the problem.
    assert not {q.problem.canonical for q in questions("+-*", 2, 300, 7, "val")} & test


def test_a_small_held_out_half_is_taken_whole_rather_than_failing() -> None:
    """2-digit addition holds about 500 questions per held-out half: 500 asked gives all of them."""
    from quillgpt.tasks.arithmetic import available_problems
    from quillgpt.tasks.questions import questions

    def in_val(p: Problem) -> bool:
        return p.held_out_half == "val"

    there = int(available_problems("+", 2, "test", in_val))
    assert 400 < there < 600
    val = questions("+", 2, 10_000, 0, "val")
    assert len(val) == there and len({q.problem for q in val}) == there
    # Large operand ranges are never enumerated: asking for more than can exist is a one-line error.
    with pytest.raises(ConfigError, match="there are about"):
        problems("+", 3, 200_000, 0, "test")


def test_settings_are_chosen_on_the_val_half_only(tmp_path, monkeypatch, capsys) -> None:
    """Issue 17.11: SFT's val set, the reward model's held-out pairs and the RL/DPO eval points all
    read the val half; the test half is left to `quill task eval`, which reports the chosen model."""
    import quillgpt.posttrain.dpo as dpo
    import quillgpt.posttrain.reward as reward
    import quillgpt.posttrain.rl as rl
    import quillgpt.posttrain.sft as sft
    from quillgpt.cli import main
    from quillgpt.tasks.questions import questions

    asked: dict[str, set[str]] = {}

    def spy(module: str):
        def recorded(ops, digits, count, seed, split):
            asked.setdefault(module, set()).add(split)
            return questions(ops, digits, count, seed, split)
        return recorded

    for module in (sft, reward, rl, dpo):
        monkeypatch.setattr(module, "questions", spy(module.__name__.rsplit(".", 1)[-1]))
    run = tmp_path / "sft"
    assert main(["train", "--chat-data", "arithmetic", "--chat-digits", "2", "--chat-val", "10", "--preset", "tiny",
                 "--block-size", "40", "--max-iters", "2", "--out-dir", str(run), "--no-progress"]) == 0
    assert main(["reward", "train", str(run), "--digits", "2", "--steps", "1", "--val-pairs", "6",
                 "--policy-pairs", "2", "--out-dir", str(tmp_path / "rm"), "--no-progress"]) == 0
    assert main(["rl", "grpo", str(run), "--reward", "task:arithmetic", "--digits", "1", "--steps", "1",
                 "--prompts-per-step", "2", "--samples-per-prompt", "2", "--minibatches", "1", "--eval-questions", "4",
                 "--out-dir", str(tmp_path / "grpo"), "--no-progress"]) == 0
    assert main(["dpo", str(run), "--digits", "2", "--steps", "1", "--batch-size", "2", "--val-pairs", "4",
                 "--eval-questions", "4", "--out-dir", str(tmp_path / "dpo"), "--no-progress"]) == 0
    capsys.readouterr()
    assert asked == {"sft": {"val"}, "reward": {"val"}, "rl": {"val"}, "dpo": {"val"}}
