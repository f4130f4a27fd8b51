"""Arithmetic problems for a small GPT: generators, formats, a checker, a parser, masked batches.

A sample is one line: the prompt ``a<op>b=`` then the answer, then ``\\n`` (the delimiter that
stops greedy decoding before the next problem). Operators: ``+ - * /`` (``/`` is integer
division with remainder, ``17/5=3r2``). Formats of the answer:

* ``plain``       ``123+456=579``
* ``reversed``    ``123+456=975``: every number of the answer written least significant digit
  first, the order in which carries are produced (Lee et al. 2023, "Teaching Arithmetic to
  Small Transformers", sec. 4: reversing lifts 3-digit addition from ~87% to ~99.8%);
* ``scratchpad``  steps, then ``|`` and the plain answer: ``19+29=9+9+0=18;1+2+1=4|48``. Every
  step is an equation that ``check_steps`` verifies, so a wrong chain of thought is visible.

Train and test sets are disjoint by construction: a stable hash of (op, a, b) puts each
problem in exactly one split, and each split is drawn from its own seed.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

import torch

OPS = ("+", "-", "*", "/")
FORMATS = ("plain", "reversed", "scratchpad")
ALPHABET = "\n-0123456789+*/=r;|"  # every character any format uses
IGNORE = -100  # the target id F.cross_entropy ignores: prompt and padding positions
TEST_BUCKETS = 10  # one problem in ten belongs to the test split


@dataclass(frozen=True)
class Problem:
    a: int
    op: str
    b: int

    @property
    def prompt(self) -> str:
        return f"{self.a}{self.op}{self.b}="

    @property
    def result(self) -> tuple[int, int | None]:
        """The true answer: (value, None), or (quotient, remainder) for division."""
        if self.op == "+":
            return self.a + self.b, None
        if self.op == "-":
            return self.a - self.b, None
        if self.op == "*":
            return self.a * self.b, None
        return divmod(self.a, self.b)

    @property
    def split(self) -> str:
        digest = hashlib.blake2b(f"{self.a}{self.op}{self.b}".encode(), digest_size=8).digest()
        return "test" if int.from_bytes(digest, "little") % TEST_BUCKETS == 0 else "train"


# ---------------------------------------------------------------------------------------
# Generating problems
# ---------------------------------------------------------------------------------------


def random_operand(rng: random.Random, digits: int, low: int = 0) -> int:
    """A number of 1..digits digits, the digit count uniform (small numbers are not rare)."""
    n = rng.randint(1, digits)
    return rng.randint(max(low, 0 if n == 1 else 10 ** (n - 1)), 10**n - 1)


def problems(op: str, digits: int, count: int, seed: int, split: str = "train") -> list[Problem]:
    """``count`` distinct problems of ``split`` (train or test), the same for the same seed."""
    if op not in OPS:
        raise ValueError(f"unknown operator {op!r}: use one of {' '.join(OPS)}")
    rng = random.Random(f"{op}:{digits}:{seed}:{split}")
    seen: set[Problem] = set()
    out: list[Problem] = []
    attempts = 0
    while len(out) < count:
        attempts += 1
        if attempts > 100 * count + 1000:
            raise ValueError(f"cannot draw {count} distinct {split} problems of {digits}-digit {op}: ask for fewer")
        problem = Problem(random_operand(rng, digits), op, random_operand(rng, digits, low=1 if op == "/" else 0))
        if problem.split == split and problem not in seen:
            seen.add(problem)
            out.append(problem)
    return out


# ---------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------


def _reverse_number(n: int) -> str:
    return ("-" if n < 0 else "") + str(abs(n))[::-1]


def _digits_lsd_first(n: int) -> list[int]:
    return [int(d) for d in str(n)[::-1]]


def _plain(value: int, remainder: int | None) -> str:
    return f"{value}" if remainder is None else f"{value}r{remainder}"


def scratchpad_steps(problem: Problem) -> list[str]:
    """The checkable steps that lead to the answer (see ``check_steps``)."""
    a, b = problem.a, problem.b
    if problem.op == "+":
        steps, carry = [], 0
        xs, ys = _digits_lsd_first(a), _digits_lsd_first(b)
        for i in range(max(len(xs), len(ys))):
            x, y = (xs[i] if i < len(xs) else 0), (ys[i] if i < len(ys) else 0)
            steps.append(f"{x}+{y}+{carry}={x + y + carry}")
            carry = (x + y + carry) // 10
        return steps
    if problem.op == "-":
        big, small = max(a, b), min(a, b)  # a < b: subtract the other way round, then negate
        steps, borrow = [], 0
        xs, ys = _digits_lsd_first(big), _digits_lsd_first(small)
        for i, x in enumerate(xs):
            y = ys[i] if i < len(ys) else 0
            steps.append(f"{x}-{y}-{borrow}={x - y - borrow}")
            borrow = 1 if x - y - borrow < 0 else 0
        return steps
    if problem.op == "*":
        steps, total = [], 0
        for i, d in enumerate(_digits_lsd_first(b)):  # one partial product per digit of b
            partial = a * d * 10**i
            steps.append(f"{a}*{d * 10**i}={partial}")
            steps.append(f"{total}+{partial}={total + partial}")
            total += partial
        return steps
    steps, rest = [], 0
    for d in str(a):  # long division, most significant digit first
        rest = rest * 10 + int(d)
        steps.append(f"{rest}/{b}={rest // b}r{rest % b}")
        rest %= b
    return steps


def answer_text(problem: Problem, fmt: str) -> str:
    value, remainder = problem.result
    if fmt == "plain":
        return _plain(value, remainder)
    if fmt == "reversed":
        return _reverse_number(value) + ("" if remainder is None else "r" + _reverse_number(remainder))
    if fmt == "scratchpad":
        return ";".join(scratchpad_steps(problem)) + "|" + _plain(value, remainder)
    raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")


def sample_text(problem: Problem, fmt: str) -> str:
    """One training line: prompt, answer, newline."""
    return problem.prompt + answer_text(problem, fmt) + "\n"


_STEP = re.compile(r"^(-?\d+)([-+*/])(-?\d+)(?:([-+])(\d+))?=(-?\d+)(?:r(\d+))?$")


def check_steps(answer: str) -> bool:
    """Are all scratchpad steps of ``answer`` true equations? (Says nothing about the final answer.)"""
    steps = answer.split("|", 1)[0]
    for step in filter(None, steps.split(";")):
        match = _STEP.match(step)
        if not match:
            return False
        x, op, y, op2, z, rhs, rem = match.groups()
        x, y, rhs = int(x), int(y), int(rhs)
        if op == "/":
            if op2 or rem is None or y == 0 or (x // y, x % y) != (rhs, int(rem)):
                return False
            continue
        left = x + y if op == "+" else x - y if op == "-" else x * y
        if op2:
            left = left + int(z) if op2 == "+" else left - int(z)
        if rem is not None or left != rhs:
            return False
    return True


def parse_answer(completion: str, op: str, fmt: str) -> tuple[int, int | None] | None:
    """The model's answer from the text it generated after the prompt, or None if unreadable."""
    text = completion.split("\n", 1)[0]
    if fmt == "scratchpad":
        if "|" not in text:
            return None
        text = text.rsplit("|", 1)[1]
    parts = text.split("r")
    if (op == "/") != (len(parts) == 2) or not all(re.fullmatch(r"-?\d+", p) for p in parts):
        return None
    if fmt == "reversed":
        parts = [("-" if p.startswith("-") else "") + p.lstrip("-")[::-1] for p in parts]
    numbers = [int(p) for p in parts]
    return (numbers[0], numbers[1] if op == "/" else None)


# ---------------------------------------------------------------------------------------
# Batches with the loss masked on the prompt
# ---------------------------------------------------------------------------------------


def encode(text: str) -> list[int]:
    try:
        return [ALPHABET.index(c) for c in text]
    except ValueError:
        raise ValueError(f"{text!r} has a character outside the arithmetic alphabet {ALPHABET!r}") from None


def masked_example(problem: Problem, fmt: str) -> tuple[list[int], list[int]]:
    """(inputs, targets) of one sample; targets are IGNORE where the next token is part of the prompt."""
    ids = encode(sample_text(problem, fmt))
    prompt = len(problem.prompt)
    targets = [IGNORE] * (prompt - 1) + ids[prompt:]
    return ids[:-1], targets


def batch(examples: list[Problem], fmt: str, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) inputs and targets, one problem per row, right-padded (padding is ignored too)."""
    rows = [masked_example(p, fmt) for p in examples]
    longest = max(len(x) for x, _ in rows)
    if longest > block_size:
        raise ValueError(f"a {fmt} sample needs {longest} positions but block_size is {block_size}: raise block_size")
    x = torch.full((len(rows), longest), encode("\n")[0], dtype=torch.long)
    y = torch.full((len(rows), longest), IGNORE, dtype=torch.long)
    for i, (ids, targets) in enumerate(rows):
        x[i, : len(ids)] = torch.tensor(ids)
        y[i, : len(targets)] = torch.tensor(targets)
    return x, y


def batches(op: str, digits: int, fmt: str, batch_size: int, block_size: int, seed: int,
            pool: list[Problem] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless training batches: drawn from ``pool`` (a prepared set) or on the fly (train split only)."""
    rng = random.Random(seed)
    stream_seed = seed
    while True:
        if pool is not None:
            chosen = [pool[rng.randrange(len(pool))] for _ in range(batch_size)]
        else:
            stream_seed += 1
            chosen = problems(op, digits, batch_size, stream_seed, "train")
        yield batch(chosen, fmt, block_size)
