"""Arithmetic tasks: generators, formats, the step checker, the parser, disjoint splits, masking."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quillgpt.config import ModelConfig
from quillgpt.models import build_model
from quillgpt.tasks.arithmetic import (
    ALPHABET,
    FORMATS,
    HINTS,
    IGNORE,
    OPS,
    Problem,
    ProblemBatches,
    answer_text,
    batch,
    check_steps,
    encode,
    parse_answer,
    problems,
    prompt_text,
    readable_step,
    sample_text,
)


@pytest.mark.parametrize(("problem", "fmt", "text"), [
    (Problem(123, "+", 456), "plain", "123+456=579\n"),
    (Problem(123, "+", 456), "reversed", "123+456=975\n"),
    (Problem(85, "-", 123), "reversed", "85-123=-83\n"),
    (Problem(17, "/", 5), "plain", "17/5=3r2\n"),
    # scratchpad steps write numbers least significant digit first
    (Problem(19, "+", 29), "scratchpad", "19+29=91+92=84|48\n"),
    (Problem(12, "*", 34), "scratchpad", "12*34=21*4=84;21*3=63;84+063=804|408\n"),
    (Problem(30, "-", 8), "scratchpad", "30-8=03-8=22|22\n"),
    (Problem(85, "-", 123), "scratchpad", "85-123=321-58=830|-38\n"),  # 123-85=038, zero-padded
    (Problem(157, "/", 4), "scratchpad", "157/4=1/4=0;51/4=3;51-21=30;73/4=9;73-63=10|39r1\n"),
    # hinted: a place letter before each digit, the answer reversed
    (Problem(123, "+", 45), "hinted", "c1b2a3+b4a5=a8b6c1\n"),
])
def test_formats(problem: Problem, fmt: str, text: str) -> None:
    assert sample_text(problem, fmt) == text


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 99_999), st.sampled_from(OPS), st.integers(0, 99_999), st.sampled_from(FORMATS))
def test_every_answer_parses_back_and_every_step_checks(a: int, op: str, b: int, fmt: str) -> None:
    problem = Problem(a, op, max(b, 1) if op == "/" else b)
    answer = answer_text(problem, fmt)
    assert set(answer) <= set(ALPHABET)
    assert parse_answer(answer + "\n999+1=", op, fmt) == problem.result  # stops at the delimiter
    if fmt == "scratchpad":
        assert check_steps(answer)


def test_checker_catches_a_wrong_step_and_parser_rejects_junk() -> None:
    assert check_steps("21*4=84;21*3=63;84+063=804|408")
    assert not check_steps("21*4=84;21*3=63;84+063=805|408")  # 48+360 is not 508
    assert not check_steps("51/4=4|3r3")  # 15/4 is 3
    assert not check_steps("51-21=20|3r3")  # 15-12 is 3
    assert not check_steps("12+x=3|3")
    assert readable_step("84+063=804") == "48+360=408" and readable_step("51/4=3") == "15/4=3"
    assert parse_answer("4x8\n", "+", "plain") is None
    assert parse_answer("12\n", "/", "plain") is None  # division needs a remainder
    assert parse_answer("9+9+0=18", "+", "scratchpad") is None  # never reached the answer


def test_generators_are_deterministic_and_splits_disjoint() -> None:
    assert problems("+", 3, 300, seed=1) == problems("+", 3, 300, seed=1)
    assert problems("+", 3, 300, seed=1) != problems("+", 3, 300, seed=2)
    train = set(problems("+", 2, 3000, seed=1, split="train"))
    test = set(problems("+", 2, 500, seed=7, split="test"))
    assert len(train) == 3000 and len(test) == 500 and not train & test
    assert all(p.b >= 1 for p in problems("/", 2, 200, seed=3))


def expected_targets(problem: Problem, fmt: str, offset: int, shift: int, width: int) -> list[int]:
    """A row's targets worked out by hand: IGNORE while the next character is the prompt's (or a leading
    newline's), then every character of the answer and its closing newline, then IGNORE over the padding."""
    prompt = "\n" * shift + prompt_text(problem, fmt, offset)
    targets = [IGNORE] * (len(prompt) - 1) + encode(answer_text(problem, fmt, offset) + "\n")
    return targets + [IGNORE] * (width - len(targets))


# Every operator in every format (calc runs ask all four; division answers carry a remainder), answers of
# different lengths (a 1-character answer, a negative one, a long chain of thought) in one padded batch.
MASK_PROBLEMS = [Problem(0, "+", 0), Problem(7, "+", 5), Problem(85, "-", 123), Problem(999, "-", 1),
                 Problem(12, "*", 34), Problem(907, "*", 8), Problem(157, "/", 4), Problem(6, "/", 7)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_loss_mask_is_exactly_the_answer_and_its_newline(fmt: str) -> None:
    plain = [(0, 0)] * len(MASK_PROBLEMS)
    shifted = [(i % 4, 3 * i) for i in range(len(MASK_PROBLEMS))]  # the hinted format's training rows
    for randomness in ([plain, shifted] if fmt == "hinted" else [plain]):
        x, y = batch(MASK_PROBLEMS, fmt, block_size=96, randomness=randomness if fmt == "hinted" else None)
        width = y.size(1)
        for row, (problem, (offset, shift)) in enumerate(zip(MASK_PROBLEMS, randomness, strict=True)):
            assert y[row].tolist() == expected_targets(problem, fmt, offset, shift, width), (fmt, problem)
            text = "\n" * shift + sample_text(problem, fmt, offset)
            assert x[row].tolist() == encode(text[:-1].ljust(width, "\n"))  # the sample, padded with newlines


def test_masked_positions_contribute_zero_gradient() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=len(ALPHABET), block_size=32, n_layer=1, n_head=2, n_embd=16,
                                    dropout=0.0))
    examples = problems("+", 3, 8, seed=0)
    x, y = batch(examples, "reversed", block_size=32)
    assert y.tolist() == [expected_targets(p, "reversed", 0, 0, y.size(1)) for p in examples]
    logits, _ = model(x)
    logits.retain_grad()
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1),
                                             ignore_index=IGNORE)
    loss.backward()
    masked = (y == IGNORE)
    assert logits.grad[masked].abs().max() == 0
    assert logits.grad[~masked].abs().max() > 0
    _, model_loss = model(x, y)  # the model's own loss ignores the same positions
    assert torch.allclose(model_loss, loss)


def test_batches_serve_on_the_fly_or_from_a_pool_and_resume_exactly() -> None:
    pool = problems("*", 2, 50, seed=0)
    x, y = ProblemBatches("plain", 4, 16, seed=0, pool=pool).next()
    assert x.shape == y.shape and x.size(0) == 4
    fly = ProblemBatches("scratchpad", 4, 64, seed=0, ops="+-*/", digits=3)
    fly.next()
    state = fly.state_dict()
    x2, y2 = fly.next()
    again = ProblemBatches("scratchpad", 4, 64, seed=99, ops="+-*/", digits=3)
    again.load_state_dict(state)
    x3, y3 = again.next()
    assert torch.equal(x2, x3) and torch.equal(y2, y3)
    with pytest.raises(ValueError, match="raise block_size"):
        batch(pool, "scratchpad", block_size=8)


def test_on_the_fly_problems_never_come_from_the_test_split() -> None:
    fly = ProblemBatches("plain", 64, 16, seed=3, ops="+", digits=2)
    held_out = set(problems("+", 2, 300, seed=0, split="test"))
    seen = set()
    for _ in range(30):
        x, _ = fly.next()
        for row in x.tolist():
            a, b = "".join(ALPHABET[i] for i in row).split("=")[0].split("+")
            seen.add(Problem(int(a), "+", int(b)))
    assert all(p.split == "train" for p in seen) and not seen & held_out
    assert len(seen) > 500  # and they are many different problems


def test_mixed_operators_and_bad_operators() -> None:
    drawn = problems("+-*/", 3, 400, seed=0)
    assert {p.op for p in drawn} == set("+-*/")
    with pytest.raises(ValueError, match="unknown operators"):
        problems("^", 3, 10, seed=0)


def test_hinted_training_rows_start_anywhere_with_any_hint_offset() -> None:
    rows = ProblemBatches("hinted", 64, 48, seed=0, pool=problems("+", 3, 200, seed=0))
    starts, first_hints = set(), set()
    for _ in range(5):
        x, y = rows.next()
        for inputs, targets in zip(x.tolist(), y.tolist(), strict=True):
            text = "".join(ALPHABET[i] for i in inputs)
            body = text.lstrip("\n")
            starts.add(len(text) - len(body))
            first_hints.add(body[0] if body[0] in HINTS else None)
            prompt, answer = body.split("=", 1)
            a, b = (int("".join(c for c in part if c.isdigit())) for part in prompt.split("+"))
            assert parse_answer(answer, "+", "hinted") == (a + b, None)
            answer_positions = [i for i, t in enumerate(targets) if t != IGNORE]
            first = len(text) - len(body) + len(prompt)  # loss on the answer and its newline only
            assert answer_positions == list(range(first, first + len(answer.split("\n")[0]) + 1))
    assert len(starts) > 10 and len(first_hints) > 5
