"""Arithmetic questions in words and symbols, for chat finetuning and RL with a checkable reward.

    user:      What is 17 plus 26?          user:      Subtract 8 from 120.
    assistant: 43                           assistant: 112

A demonstration can also show its work: ``units first 34, so 43`` writes the digits of the
result from the units up, the order column arithmetic produces them and the order a
left-to-right model can compute them without guessing carries (Lee et al. 2023: 3-digit
addition with the answer reversed is learned far sooner than in plain order), then reads
the number back. Only the final number is graded (the GSM8K convention).

The problems come from ``tasks.arithmetic`` and keep its split: a hash of the problem puts
each in train or held out, so a held-out question is never trained on, whatever its wording.
Questions have three splits: ``train``; ``val``, one half of the held-out problems, on which
settings are chosen (SFT's val loss, the reward model's held-out pairs, the RL and DPO eval
points); and ``test``, the other half, scored once on the chosen model (``quill task eval``).
Choosing settings by their test score would report the best of many draws as if it were one.
The wording is drawn at random from a few templates per operator, so the model has to read
the question, not one fixed layout.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from quillgpt.chat import Message
from quillgpt.tasks.arithmetic import Problem, draw_problem, problems

TEMPLATES = {
    "+": ("What is {a} plus {b}?", "{a} + {b} = ?", "Add {a} and {b}.", "What's the sum of {a} and {b}?",
          "How much is {a} plus {b}?", "Compute {a}+{b}."),
    "-": ("What is {a} minus {b}?", "{a} - {b} = ?", "Subtract {b} from {a}.", "What's {a} take away {b}?",
          "How much is {a} minus {b}?", "Compute {a}-{b}."),
    "*": ("What is {a} times {b}?", "{a} * {b} = ?", "Multiply {a} by {b}.", "What's the product of {a} and {b}?",
          "How much is {a} times {b}?", "Compute {a}*{b}."),
}
ANSWER = re.compile(r"-?\d+")
WORKED_LEAD = "units first "
WORKED = re.compile(WORKED_LEAD + r"\d+, so (-?\d+)|(?:\d\+\d(?:\+1)?=\d+ )*\d\+\d(?:\+1)?=\d+: (-?\d+)")


def show_work(number: str) -> str:
    """A number with its work shown: its digits from the units up, then the number."""
    return f"{WORKED_LEAD}{number.lstrip('-')[::-1]}, so {number}"


def show_columns(a: int, b: int) -> str:
    """Column addition written out, units first: ``3+5=8 4+6=10 9+3+1=13: 1308`` for 943 + 365."""
    steps, carry = [], 0
    da, db = str(a)[::-1], str(b)[::-1]
    for i in range(max(len(da), len(db))):
        x, y = int(da[i]) if i < len(da) else 0, int(db[i]) if i < len(db) else 0
        total = x + y + carry
        steps.append(f"{x}+{y}{'+1' if carry else ''}={total}")
        carry = int(total >= 10)
    return f"{' '.join(steps)}: {a + b}"


@dataclass(frozen=True)
class Question:
    """A problem and the wording it is asked in."""

    problem: Problem
    template: int = 0

    @property
    def text(self) -> str:
        return TEMPLATES[self.problem.op][self.template].format(a=self.problem.a, b=self.problem.b)

    @property
    def answer(self) -> str:
        return str(self.problem.result[0])

    @property
    def worked_answer(self) -> str:
        return show_work(self.answer)

    def demonstration(self, worked: bool, style: str = "units") -> str:
        """The reply SFT shows: the bare answer, or with its work (``columns``: addition only)."""
        if not worked:
            return self.answer
        if style == "columns" and self.problem.op == "+":
            return show_columns(self.problem.a, self.problem.b)
        return self.worked_answer

    def messages(self, reply: str | None = None) -> list[Message]:
        out = [Message("user", self.text)]
        return out if reply is None else [*out, Message("assistant", reply)]


def alphabet() -> str:
    """Every character a question or answer can contain."""
    text = "".join("".join(t) for t in TEMPLATES.values())
    shown = Question(Problem(1, "+", 2)).worked_answer + show_columns(1, 2)
    return "".join(sorted(set(text) - set("{}") | set("0123456789-") | set(shown)))


def _worded(rng: random.Random, chosen: list[Problem]) -> list[Question]:
    return [Question(p, rng.randrange(len(TEMPLATES[p.op]))) for p in chosen]


QUESTION_SPLITS = ("train", "val", "test")


def questions(ops: str, digits: int, count: int, seed: int, split: str) -> list[Question]:
    """``count`` distinct problems of ``split`` (train, val or test), each worded at random; the same
    for the same seed. ``val`` and ``test`` are the two halves of the held-out problems; with operands
    of 1-2 digits a half may hold fewer than ``count``, and then all of it is returned."""
    if split not in QUESTION_SPLITS:
        raise ValueError(f"unknown question split {split!r}: choose one of {', '.join(QUESTION_SPLITS)}")
    if split == "train":
        chosen = problems(ops, digits, count, seed, "train")
    else:
        def in_half(p: Problem) -> bool:
            return p.held_out_half == split

        # a half of 2-digit + holds about 500 problems: take all there are rather than fail
        chosen = problems(ops, digits, count, seed, "test", keep=in_half, all_if_fewer=True)
    return _worded(random.Random(f"words:{seed}:{split}"), chosen)


def fresh_questions(rng: random.Random, ops: str, digits: int, count: int) -> list[Question]:
    """``count`` random train-split questions (repeats possible), for training on the fly."""
    chosen: list[Problem] = []
    while len(chosen) < count:
        problem = draw_problem(rng, ops, digits)
        if problem.split == "train":
            chosen.append(problem)
    return _worded(rng, chosen)


def misread_columns(question: Question, rng: random.Random) -> str:
    """A wrong worked addition of the kind a model makes: one operand digit misread by one, the
    columns then done right for the misread numbers (so the final number is off by 1, 10 or 100)."""
    operands = [str(question.problem.a), str(question.problem.b)]
    for _ in range(100):
        which = rng.randrange(2)
        digits = list(operands[which])
        place = rng.randrange(len(digits))
        new = int(digits[place]) + rng.choice((-1, 1))
        if 0 <= new <= 9:  # a digit stays a digit: the reply is no longer than the right one
            digits[place] = str(new)
            misread = [operands[0], operands[1]]
            misread[which] = "".join(digits)
            x, y = int(misread[0]), int(misread[1])
            if x + y != question.problem.a + question.problem.b:
                return show_columns(x, y)
    return show_columns(question.problem.a, question.problem.b + 1)


def slipped_columns(question: Question, rng: random.Random) -> str:
    """A wrong worked addition of the other kinds a sampling model makes: the operands read right,
    but one column's sum written one off (the final number follows it: off by 1, 10 or 100), or
    every column right and the final number not the one they add up to."""
    steps, total = show_columns(question.problem.a, question.problem.b).split(": ")
    if rng.random() < 0.5:
        for _ in range(100):
            wrong = wrong_answer(question, rng)
            if len(wrong) <= len(total):  # no longer than the right reply: it still fits the context
                return f"{steps}: {wrong}"
    columns = steps.split(" ")
    place = rng.randrange(len(columns))
    added, written = columns[place].split("=")
    units = int(written) % 10  # slip within the column's units so its carry stays as it was
    delta = 1 if units == 0 else -1 if units == 9 else rng.choice((-1, 1))
    columns[place] = f"{added}={int(written) + delta}"
    return f"{' '.join(columns)}: {int(total) + delta * 10 ** place}"


def well_formed(reply: str) -> bool:
    """The answer format: a number (an optional minus sign and digits), alone or after its work."""
    return ANSWER.fullmatch(reply) is not None or WORKED.fullmatch(reply) is not None


def final_answer(reply: str) -> str:
    """The number a reply commits to: the reply itself, or the number after a worked answer's "so"."""
    worked = WORKED.fullmatch(reply)
    return (worked.group(1) or worked.group(2)) if worked else reply


def exact_match(question: Question, reply: str) -> float:
    """The verifiable reward: 1.0 for exactly the right number, else 0.0."""
    return float(final_answer(reply) == question.answer)


def shows_work(reply: str) -> bool:
    return WORKED.fullmatch(reply) is not None


def work_style(reply: str) -> str | None:
    """The style a reply shows its work in (``units`` or ``columns``), or None for a bare answer."""
    if not shows_work(reply):
        return None
    return "units" if reply.startswith(WORKED_LEAD) else "columns"


def wrong_answer(question: Question, rng: random.Random) -> str:
    """A plausible wrong answer: a near miss (off by 1, 10 or 100; two digits swapped; a digit
    dropped or repeated; the sign flipped) or, one time in five, another number of similar size."""
    right = question.answer
    value = int(right)
    for _ in range(100):
        kind = rng.randrange(5)
        if kind == 0:
            guess = str(value + rng.choice((-1, 1)) * 10 ** rng.randrange(max(1, len(right.lstrip("-")))))
        elif kind == 1 and len(right.lstrip("-")) >= 2:
            digits = list(right.lstrip("-"))
            i = rng.randrange(len(digits) - 1)
            digits[i], digits[i + 1] = digits[i + 1], digits[i]
            guess = ("-" if value < 0 else "") + "".join(digits).lstrip("0")
        elif kind == 2 and len(right.lstrip("-")) >= 2:
            i = rng.randrange(len(right.lstrip("-")))
            body = right.lstrip("-")
            guess = ("-" if value < 0 else "") + (body[:i] + body[i + 1:] if rng.random() < 0.5 else
                                                  body[:i] + body[i] + body[i:])
        elif kind == 3 and value != 0:
            guess = str(-value)
        else:
            guess = str(rng.randint(-(10 ** len(right)), 10 ** len(right)))
        if well_formed(guess) and guess != right:
            return guess
    return str(value + 1)
