"""Arithmetic problems for a small GPT: generators, formats, a checker, a parser, masked batches.

A sample is one line: the prompt ``a<op>b=`` then the answer, then ``\\n`` (the delimiter that
stops greedy decoding before the next problem). Operators: ``+ - * /`` (``/`` is integer
division with remainder, ``17/5=3r2``). Formats of the answer:

* ``plain``       ``123+456=579``
* ``reversed``    ``123+456=975``: every number of the answer written least significant digit
  first, the order in which carries are produced (Lee et al. 2023, "Teaching Arithmetic to
  Small Transformers", sec. 4: reversing lifts 3-digit addition from ~87% to ~99.8%);
* ``scratchpad``  a chain of thought, then ``|`` and the plain answer. Numbers in the steps are
  written least significant digit first: ``12*34=21*4=84;21*3=63;84+063=804|408`` is
  12*4=48, 12*3=36, 48+360=408. Every step is an equation that ``check_steps`` verifies,
  so a wrong chain of thought is visible.
* ``hinted``      ``reversed`` with index hints (Zhou et al. 2024, "Transformers Can Achieve
  Length Generalization But Not Robustly"): a letter before every digit names its place,
  ``123+45=c1b2a3+b4a5=a8b6c1``, so the answer digit after hint ``b`` reads the operand
  digits after ``b`` (found by content, not by position). In training the letters start at
  a random offset and each row at a random position, so every letter and every position
  up to ``block_size`` is seen; at test time they start at ``a`` and position 0. A remedy
  for length generalization (train on 3 digits, test on 4-5).

Train and test sets are disjoint by construction: a stable hash of the problem's canonical
form puts each problem in exactly one split, and each split is drawn from its own seed. The
canonical form of a commutative problem orders its operands (``45*12`` and ``12*45`` hash
alike), so a held-out ``a*b`` never has its twin ``b*a``, the same fact, in training.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from quillgpt.data import Batch, SeededSampler, to_device, unpadded_tokens
from quillgpt.errors import ConfigError
from quillgpt.tasks.position_schemes import SCHEMES, offset_room, position_ids, shifted

OPS = ("+", "-", "*", "/")
COMMUTATIVE = ("+", "*")  # a problem and its swapped twin must share a split
FORMATS = ("plain", "reversed", "scratchpad", "hinted")
HINTS = "abcdefghij"  # place hints of the hinted format: digit places 0..9
BASE_ALPHABET = "\n-0123456789+*/=r;|"  # every character of the other formats
ALPHABET = BASE_ALPHABET + HINTS
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
    def canonical(self) -> tuple[int, str, int]:
        """The operands of ``+`` and ``*`` in order: a problem and its swapped twin are one fact."""
        if self.op in COMMUTATIVE and self.b < self.a:
            return self.b, self.op, self.a
        return self.a, self.op, self.b

    @property
    def _hash(self) -> int:
        a, op, b = self.canonical
        return int.from_bytes(hashlib.blake2b(f"{a}{op}{b}".encode(), digest_size=8).digest(), "little")

    @property
    def split(self) -> str:
        return "test" if self._hash % TEST_BUCKETS == 0 else "train"

    @property
    def held_out_half(self) -> str:
        """Which half of the held-out split: ``val`` to choose settings on, ``test`` to report once."""
        return "val" if (self._hash // TEST_BUCKETS) % 2 else "test"


# ---------------------------------------------------------------------------------------
# Generating problems
# ---------------------------------------------------------------------------------------


def random_operand(rng: random.Random, digits: int, low: int = 0) -> int:
    """A number of 1..digits digits, the digit count uniform (small numbers are not rare)."""
    n = rng.randint(1, digits)
    return rng.randint(max(low, 0 if n == 1 else 10 ** (n - 1)), 10**n - 1)


def check_ops(ops: str) -> str:
    """``ops`` is one operator or several (``"+-*/"``: each problem picks one uniformly)."""
    if not ops or any(op not in OPS for op in ops) or len(set(ops)) != len(ops):
        raise ValueError(f"unknown operators {ops!r}: use one or more of {''.join(OPS)}, e.g. + or +-*/")
    return ops


def draw_problem(rng: random.Random, ops: str, digits: int, exact: bool = False) -> Problem:
    """One random problem (of either split): the operator uniform over ``ops``.

    ``exact``: the longer operand has exactly ``digits`` digits (either one, at random), the other
    1..digits: a test at one length, e.g. past the lengths a model was trained on."""
    op = ops[rng.randrange(len(ops))]
    a, b = random_operand(rng, digits), random_operand(rng, digits, low=1 if op == "/" else 0)
    if exact and max(len(str(a)), len(str(b))) < digits:
        longest = rng.randint(10 ** (digits - 1), 10**digits - 1)
        a, b = (longest, b) if rng.randrange(2) else (a, longest)
    return Problem(a, op, b)


def longer_operand(problem: Problem) -> int:
    """Digits of the longer operand: a problem's length."""
    return max(len(str(problem.a)), len(str(problem.b)))


def problems(ops: str, digits: int, count: int, seed: int, split: str = "train",
             keep: Callable[[Problem], bool] | None = None, all_if_fewer: bool = False,
             exact: bool = False) -> list[Problem]:
    """``count`` distinct problems of ``split`` (train or test) that ``keep`` accepts, the same for the same seed.

    ``all_if_fewer``: where the problems are few enough to count (1-2 digit operands) and there are
    fewer than ``count``, return all of them instead of failing. ``exact``: only problems whose longer
    operand has exactly ``digits`` digits (``draw_problem``)."""
    check_ops(ops)
    if digits < 1:
        raise ValueError(f"operands need at least 1 digit, got {digits}")
    if exact:
        wanted = keep
        keep = lambda p: longer_operand(p) == digits and (wanted is None or wanted(p))  # noqa: E731
    available = available_problems(ops, digits, split, keep)
    if all_if_fewer and digits <= SMALL_DIGITS:
        count = min(count, int(available))
    if count > available:  # fail at once, rather than drawing for hours
        raise ConfigError(f"cannot draw {count} distinct {split} problems of {digits}-digit {ops}: there are "
                          f"{'only' if digits <= SMALL_DIGITS else 'about'} {available:,.0f}; ask for fewer")
    rng = random.Random(f"{ops}:{digits}:{seed}:{split}" + (":exact" if exact else ""))
    seen: set[Problem] = set()
    out: list[Problem] = []
    attempts = 0
    while len(out) < count:
        attempts += 1
        if digits > SMALL_DIGITS and attempts > 100 * count + 1000:  # small spaces were counted exactly
            raise ConfigError(f"cannot draw {count} distinct {split} problems of {digits}-digit {ops}: ask for fewer")
        problem = draw_problem(rng, ops, digits, exact)
        if problem.split == split and (keep is None or keep(problem)) and problem not in seen:
            seen.add(problem)
            out.append(problem)
    return out


SMALL_DIGITS = 2  # up to 2-digit operands there are at most 40,000 problems: count them exactly


def available_problems(ops: str, digits: int, split: str, keep: Callable[[Problem], bool] | None) -> float:
    """How many distinct problems ``split`` holds: counted for small operands, estimated for large ones
    (operands run over 10**digits values each; one problem in TEST_BUCKETS is held out, half of those
    pass a ``keep`` that picks a held-out half)."""
    if digits <= SMALL_DIGITS:
        return sum(1 for op in ops for a in range(10**digits) for b in range(1 if op == "/" else 0, 10**digits)
                   if (p := Problem(a, op, b)).split == split and (keep is None or keep(p)))
    share = 1 / TEST_BUCKETS if split == "test" else 1 - 1 / TEST_BUCKETS
    return len(ops) * 10 ** (2 * digits) * share * (0.5 if keep is not None else 1.0)


# ---------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------


def _reverse_number(n: int) -> str:
    return ("-" if n < 0 else "") + str(abs(n))[::-1]


def _lsd(n: int, width: int = 0) -> str:
    """``n >= 0`` written least significant digit first, zero-padded to ``width`` digits."""
    return str(n).rjust(width, "0")[::-1]


def _plain(value: int, remainder: int | None) -> str:
    return f"{value}" if remainder is None else f"{value}r{remainder}"


def scratchpad_steps(problem: Problem) -> list[str]:
    """The checkable steps that lead to the answer (see ``check_steps``).

    Every number in a step is written least significant digit first, so each digit of a
    result depends only on digits already written and on the carry (or borrow) they make:
    the order in which a small transformer computes reliably (the reason ``reversed``
    helps). The final answer after ``|`` is written the usual way.
    """
    a, b = problem.a, problem.b
    if problem.op == "+":
        return [f"{_lsd(a)}+{_lsd(b)}={_lsd(a + b)}"]
    if problem.op == "-":
        big, small = max(a, b), min(a, b)  # a < b: subtract the other way round, the answer gets a "-"
        return [f"{_lsd(big)}-{_lsd(small)}={_lsd(big - small, len(str(big)))}"]
    if problem.op == "*":
        digits = [int(d) for d in str(b)[::-1]]
        steps = [f"{_lsd(a)}*{d}={_lsd(a * d)}" for d in digits]  # one partial product per digit of b
        total = a * digits[0]
        for i, d in enumerate(digits[1:], start=1):  # add them up, each shifted by its place
            partial = a * d * 10**i
            steps.append(f"{_lsd(total)}+{_lsd(partial, len(str(a * d)) + i)}={_lsd(total + partial)}")
            total += partial
        return steps
    steps, rest = [], 0
    for d in str(a):  # long division, most significant digit first: one quotient digit at a time
        rest = rest * 10 + int(d)
        q = rest // b
        steps.append(f"{_lsd(rest)}/{_lsd(b)}={q}")
        if q:  # what is left: rest - q*b, the product written out (a subtraction of reversed numbers)
            steps.append(f"{_lsd(rest)}-{_lsd(q * b)}={_lsd(rest - q * b, len(str(rest)))}")
        rest -= q * b
    return steps


def _hinted(n: int, offset: int, lsd_first: bool) -> str:
    """``n`` with the place hint before each digit (place 0 = units gets ``HINTS[offset]``)."""
    digits = str(abs(n))[::-1]  # place order
    if offset + len(digits) > len(HINTS):
        raise ValueError(f"{n} has too many digits for the {len(HINTS)} place hints")
    pairs = [HINTS[offset + place] + d for place, d in enumerate(digits)]
    return ("-" if n < 0 else "") + "".join(pairs if lsd_first else pairs[::-1])


def prompt_text(problem: Problem, fmt: str, hint_offset: int = 0) -> str:
    """What the model is given: ``a<op>b=`` (hinted: with place hints)."""
    if fmt == "hinted":
        return f"{_hinted(problem.a, hint_offset, False)}{problem.op}{_hinted(problem.b, hint_offset, False)}="
    return problem.prompt


def answer_text(problem: Problem, fmt: str, hint_offset: int = 0) -> str:
    value, remainder = problem.result
    if fmt == "hinted":
        rest = "" if remainder is None else "r" + _hinted(remainder, hint_offset, True)
        return _hinted(value, hint_offset, True) + rest
    if fmt == "plain":
        return _plain(value, remainder)
    if fmt == "reversed":
        return _reverse_number(value) + ("" if remainder is None else "r" + _reverse_number(remainder))
    if fmt == "scratchpad":
        return ";".join(scratchpad_steps(problem)) + "|" + _plain(value, remainder)
    raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")


def sample_text(problem: Problem, fmt: str, hint_offset: int = 0) -> str:
    """One training line: prompt, answer, newline."""
    return prompt_text(problem, fmt, hint_offset) + answer_text(problem, fmt, hint_offset) + "\n"


_STEP = re.compile(r"^(\d+)([-+*/])(\d+)=(\d+)(?:r(\d+))?$")


def _from_lsd(digits: str) -> int:
    return int(digits[::-1])


def check_steps(answer: str) -> bool:
    """Are all scratchpad steps of ``answer`` true equations? (Says nothing about the final answer.)

    Numbers in steps are least significant digit first; a division step is
    ``rest/divisor=quotient_digit`` (integer division), followed by ``rest-product=left``.
    """
    steps = answer.split("|", 1)[0]
    for step in filter(None, steps.split(";")):
        match = _STEP.match(step)
        if not match:
            return False
        op, rem = match.group(2), match.group(5)
        x, y, rhs = _from_lsd(match.group(1)), _from_lsd(match.group(3)), match.group(4)
        if op == "/":  # "rest/divisor=quotient digit"
            if rem is not None or y == 0 or x // y != int(rhs):
                return False
            continue
        left = x + y if op == "+" else x - y if op == "-" else x * y
        if rem is not None or left != _from_lsd(rhs):
            return False
    return True


def readable_step(step: str) -> str:
    """A scratchpad step with its numbers turned the usual way round: ``21*4=84`` -> ``12*4=48``."""
    match = _STEP.match(step)
    if not match:
        return step
    x, op, y, rhs, rem = match.groups()
    if op == "/":
        return f"{_from_lsd(x)}/{_from_lsd(y)}={rhs}"
    return f"{_from_lsd(x)}{op}{_from_lsd(y)}={_from_lsd(rhs)}"


def parse_answer(completion: str, op: str, fmt: str) -> tuple[int, int | None] | None:
    """The model's answer from the text it generated after the prompt, or None if unreadable."""
    text = completion.split("\n", 1)[0]
    if fmt == "scratchpad":
        if "|" not in text:
            return None
        text = text.rsplit("|", 1)[1]
    if fmt == "hinted":
        text = "".join(c for c in text if c not in HINTS)
    parts = text.split("r")
    if (op == "/") != (len(parts) == 2) or not all(re.fullmatch(r"-?\d+", p) for p in parts):
        return None
    if fmt in ("reversed", "hinted"):
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


def masked_example(problem: Problem, fmt: str, hint_offset: int = 0, shift: int = 0) -> tuple[list[int], list[int]]:
    """(inputs, targets) of one sample; targets are IGNORE where the next token is part of the prompt.

    ``shift`` newlines go first (ignored too), so the problem starts at position ``shift``.
    """
    ids = encode("\n" * shift + sample_text(problem, fmt, hint_offset))
    prompt = shift + len(prompt_text(problem, fmt, hint_offset))
    targets = [IGNORE] * (prompt - 1) + ids[prompt:]
    return ids[:-1], targets


def batch(examples: list[Problem], fmt: str, block_size: int,
          randomness: list[tuple[int, int]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) inputs and targets, one problem per row, right-padded (padding is ignored too).

    ``randomness``: a (hint offset, shift) per row, for the hinted format's training rows.
    """
    rows = [masked_example(p, fmt, *(randomness[i] if randomness else (0, 0))) for i, p in enumerate(examples)]
    longest = max(len(x) for x, _ in rows)
    if longest > block_size:
        raise ValueError(f"a {fmt} sample needs {longest} positions but block_size is {block_size}: raise block_size")
    x = torch.full((len(rows), longest), encode("\n")[0], dtype=torch.long)
    y = torch.full((len(rows), longest), IGNORE, dtype=torch.long)
    for i, (ids, targets) in enumerate(rows):
        x[i, : len(ids)] = torch.tensor(ids)
        y[i, : len(targets)] = torch.tensor(targets)
    return x, y


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of items grouped into rows of at most ``capacity`` tokens: first-fit decreasing
    (longest first, each into the first row with room), every item in exactly one row.

    Within a row the indices keep their order; a row's leftover room is padding. Deterministic:
    ties in length go by index. O(n log n) for n items: the first row with room is found in a
    tree of the rows' room (``_RoomTree``), not by scanning the rows (n x rows steps, quadratic).
    """
    longest = max(lengths, default=0)
    if longest > capacity:
        raise ValueError(f"an item of {longest} tokens does not fit a row of {capacity}")
    rows: list[list[int]] = []
    room = _RoomTree(len(lengths), capacity)  # n rows at most; a row not opened yet is empty
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        row = room.take_first_fit(lengths[i])  # an open row, or else the next one (== len(rows))
        if row == len(rows):
            rows.append([])
        rows[row].append(i)
    return [sorted(row) for row in rows]


class _RoomTree:
    """The free room of ``slots`` rows, each starting at ``capacity``, as a max segment tree (node k
    holds the most room of the rows below it; leaves are the rows): the first row with room for an
    item is one walk from the root, always left where the left subtree has room, O(log slots)."""

    def __init__(self, slots: int, capacity: int) -> None:
        self.leaves = 1
        while self.leaves < slots:
            self.leaves *= 2
        self.most = [capacity] * (2 * self.leaves)  # node k's children: 2k and 2k + 1; root 1

    def take_first_fit(self, size: int) -> int:
        """The first row with at least ``size`` room, that room lowered by ``size``."""
        node = 1
        while node < self.leaves:
            node = 2 * node if self.most[2 * node] >= size else 2 * node + 1
        self.most[node] -= size
        row, node = node - self.leaves, node // 2
        while node:
            self.most[node] = max(self.most[2 * node], self.most[2 * node + 1])
            node //= 2
        return row


PACKED_ROW_TOKENS = 128  # rows hold at most this many tokens, or the longest problem if longer


def packed_row_tokens(longest: int, block_size: int) -> int:
    """How long a packed row may grow. Attention over a row costs its length squared, all of it
    masked away between problems, so a row much longer than its problems only adds cost: with
    --block-size 4096 uncapped rows made a step 2.8x slower than no packing (outside review)."""
    return min(block_size, max(longest, PACKED_ROW_TOKENS))


def packed_batch(examples: list[Problem], fmt: str,
                 block_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(R, T) inputs, targets and positions, several whole problems per row (``pack_rows``).

    Each problem's inputs and targets are exactly its ``masked_example``, and its positions run
    0, 1, 2, ... so it sits where it would alone in a row. With those positions the model's
    attention keeps each problem to its own earlier tokens (``models.attention.Packing``), so a
    packed batch has the same per-token loss as ``batch`` of the same problems, in fewer
    tokens. Padding after a row's last problem is ignored in the loss, each padding token at
    position 0 (a sequence of its own). T is the longest row, at most ``packed_row_tokens``.
    """
    samples = [masked_example(p, fmt) for p in examples]
    lengths = [len(ids) for ids, _ in samples]
    rows = pack_rows(lengths, packed_row_tokens(max(lengths), block_size))
    T = max(sum(len(samples[i][0]) for i in row) for row in rows)
    x = torch.full((len(rows), T), encode("\n")[0], dtype=torch.long)
    y = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), T), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            ids, targets = samples[i]
            n = len(ids)
            x[r, at:at + n] = torch.tensor(ids)
            y[r, at:at + n] = torch.tensor(targets)
            positions[r, at:at + n] = torch.arange(n)
            at += n
    return x, y, positions


def padding_fraction(x: torch.Tensor, y: torch.Tensor) -> float:
    """The share of a batch's input tokens that belong to no problem: the positions after each
    row's last answer token (its last target that is not IGNORE)."""
    return 1.0 - float(unpadded_tokens(y, IGNORE)) / x.numel()


def scheme_position_ids(x: torch.Tensor, positions: torch.Tensor | None, scheme: str, rows: int,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """The position scheme's id (``tasks.position_schemes``) of every token of a batch ``x`` (B, T).

    ``positions``: a packed batch's, where each problem starts at 0 (None: one problem per row).
    The ids are computed per problem from its own text, so packing does not change them. With a
    ``generator`` (training) each problem's ids get a random offset that keeps them below ``rows``,
    the model's table size; without one (evaluation) the offset is 0.
    """
    starts = (positions == 0).tolist() if positions is not None else None
    rows_ids: list[list[int]] = []  # offset 0, the problems of each row one after another
    spans: list[tuple[int, int, int]] = []  # (row, begin, end) of every problem
    for r, row in enumerate(x.tolist()):
        text = "".join(ALPHABET[i] for i in row)
        bounds = [0] if starts is None else [t for t, start in enumerate(starts[r]) if start]
        ids: list[int] = []
        for begin, end in zip(bounds, [*bounds[1:], len(row)], strict=True):
            ids += position_ids(text[begin:end], scheme)
            spans.append((r, begin, end))
        rows_ids.append(ids)
    if generator is not None:  # one draw for the batch: a uniform offset in 0..room for each problem
        for (r, begin, end), u in zip(spans, torch.rand(len(spans), generator=generator).tolist(), strict=True):
            own = rows_ids[r][begin:end]
            rows_ids[r][begin:end] = shifted(own, int(u * (offset_room(own, rows) + 1)))
    return torch.tensor(rows_ids, dtype=torch.long, device=x.device)


class ProblemBatches(SeededSampler):
    """Endless, resumable (x, y) batches of problems: drawn from ``pool`` (a prepared set) or, with
    no pool, made on the fly from ``ops``/``digits`` (train split only, so never a test problem).

    Like ``data.Batches`` the draws come from a private ``torch.Generator``, so ``state_dict``
    lets a resumed run see exactly the batches it would have seen.

    A batch holds ``batch_size`` problems. By default one problem per row, right-padded; with
    ``pack`` they are packed several to a row of up to ``block_size`` tokens (``packed_batch``),
    and ``next`` returns ``(x, y, {"positions": ...})``, the third item the model's keyword
    arguments (see ``data.split_batch``). The same problems either way, so the same loss.

    ``position`` abacus or coupled: the model's position ids come from the problems
    (``scheme_position_ids``) and travel as ``{"position_ids": ...}`` beside the batch, with a random
    offset per problem where ``offsets`` (the training split; never the held-out one).
    """

    def __init__(self, fmt: str, batch_size: int, block_size: int, seed: int, device: str | torch.device = "cpu",
                 pool: list[Problem] | None = None, ops: str = "+", digits: int = 3, pack: bool = False,
                 position: str = "learned", offsets: bool = False) -> None:
        if pool is not None and not pool:
            raise ValueError("the problem pool is empty: ask for at least one example")
        if pack and fmt == "hinted":
            raise ValueError("the hinted format starts each training problem at a random position: it cannot pack")
        self.fmt, self.batch_size, self.block_size = fmt, batch_size, block_size
        self.pool, self.ops, self.digits, self.pack = pool, check_ops(ops), digits, pack
        self.scheme = position if position in SCHEMES else None
        self.offsets = offsets
        self.device = torch.device(device)
        super().__init__(seed)

    def next(self) -> Batch:
        if self.pool is not None:
            chosen = self.pick(self.pool, self.batch_size)
        else:
            rng = self.fresh_rng()
            chosen = []
            while len(chosen) < self.batch_size:
                problem = draw_problem(rng, self.ops, self.digits)
                if problem.split == "train":
                    chosen.append(problem)
        if self.pack:
            x, y, positions = packed_batch(chosen, self.fmt, self.block_size)
            inputs = {"positions": positions}
        else:
            randomness = self._hint_randomness(chosen) if self.fmt == "hinted" else None
            x, y = batch(chosen, self.fmt, self.block_size, randomness)
            inputs = {}
        if self.scheme is not None:
            inputs["position_ids"] = scheme_position_ids(x, inputs.get("positions"), self.scheme, self.block_size,
                                                         self.generator if self.offsets else None)
        x, y = to_device(x, y, self.device)
        if not inputs:
            return x, y
        return x, y, {name: value.to(self.device) for name, value in inputs.items()}

    def _hint_randomness(self, chosen: list[Problem]) -> list[tuple[int, int]]:
        """A random hint offset and start position per row (the hinted format's training)."""
        out = []
        for problem, (u, v) in zip(chosen, torch.rand(len(chosen), 2, generator=self.generator).tolist(),
                                   strict=True):
            places = max(len(str(abs(n))) for n in (problem.a, problem.b, *filter(None, problem.result)))
            offset = int(u * (len(HINTS) - places + 1))
            room = self.block_size - (len(sample_text(problem, self.fmt, offset)) - 1)
            out.append((offset, int(v * (max(room, 0) + 1))))
        return out
