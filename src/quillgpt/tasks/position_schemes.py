"""Position ids that follow the digits' places, for adding numbers longer than any seen in training.

A GPT with learned positions gives each token the id of its place in the row (0, 1, 2, ...):
train on 10-digit additions and the ids past ~35 are never trained, so 11 digits fail
(Lee et al. 2023 report 0% one digit beyond training; our add3-hinted run, 0.6% at 5 digits).
The schemes here give the model's position table (``--position abacus|coupled``) an id per
token computed from the problem's text instead, so the digit of a given significance has the
same id however long its number is. They need the reversed format, where the answer is written
least significant digit first and each answer digit's significance is known when it is written.

Ids start at 1 for the units; 0 is "no place" (operators, ``=`` for Abacus, padding). In
training every problem gets a random ``offset`` added to its nonzero ids, so the table rows
past the trained lengths are trained too; at evaluation the offset is 0. The table has
``block_size`` rows (``ModelConfig.block_size``), so ``--block-size`` bounds both the context
and the largest id: an N-digit addition needs 3N+3 tokens and ids up to N+2.

Worked example, ``123+45=`` and the reversed answer ``861`` (168), offset 0::

    text     1 2 3 + 4 5 = 8 6 1
    abacus   3 2 1 0 2 1 0 1 2 3
    coupled  3 2 1 0 2 1 1 2 3 4
"""

from __future__ import annotations

from collections.abc import Sequence

from quillgpt.config import POSITION_SCHEMES as SCHEMES  # the ModelConfig.position values whose ids come from here

DIGITS = frozenset("0123456789")


def check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown position scheme {scheme!r}: use one of {', '.join(SCHEMES)}")
    return scheme


def prompt_ids(prompt: str) -> list[int]:
    """Each operand digit's significance + 1 within its own number (the same for both schemes); 0 elsewhere.

    The operands are written most significant digit first, so a number's digits count down to 1."""
    ids = [0] * len(prompt)
    i = 0
    while i < len(prompt):
        if prompt[i] not in DIGITS:
            i += 1
            continue
        end = i
        while end < len(prompt) and prompt[end] in DIGITS:
            end += 1
        for j in range(i, end):
            ids[j] = end - j
        i = end
    return ids


class AnswerPlaces:
    """The ids of a reversed answer's tokens, one token at a time, as they are fed back while decoding.

    ``written`` counts the digits of the current answer number so far (the remainder after ``r``
    starts again at 0), so a generated token's id needs nothing but the answer before it."""

    def __init__(self, scheme: str) -> None:
        self.scheme = check_scheme(scheme)
        self.written = 0

    def equals_id(self) -> int:
        """The id of the ``=`` that ends the prompt: it predicts the units digit of the answer."""
        return 0 if self.scheme == "abacus" else 1

    def next(self, char: str) -> int:
        """The id of answer token ``char`` (fed in after the tokens already seen)."""
        if self.scheme == "abacus":
            # Abacus: a digit's own significance + 1; signs, "r" and the end are no place.
            if char in DIGITS:
                self.written += 1
                return self.written
            if char in "r\n":
                self.written = 0
            return 0
        # Coupled: the token that is fed in when digit s is to be written carries digit s's id, the
        # id of the operand digits it adds up; so answer digit s itself carries s + 1's id.
        if char in DIGITS:
            self.written += 1
            return self.written + 1
        if char in "r\n":
            self.written = 0
            return 1 if char == "r" else 0
        return self.written + 1  # a leading "-": the units digit comes next


def position_ids(text: str, scheme: str) -> list[int]:
    """The ids (offset 0) of every token of ``text``: a prompt ``a+b=``, maybe followed by (part of) its
    reversed answer and padding newlines. Text before ``=`` is all prompt."""
    places = AnswerPlaces(scheme)
    end = text.find("=")
    if end < 0:
        return prompt_ids(text)
    return [*prompt_ids(text[:end]), places.equals_id(), *(places.next(c) for c in text[end + 1:])]


def shifted(ids: Sequence[int], offset: int) -> list[int]:
    """``ids`` with ``offset`` added to every place (0, no place, stays 0): the training-time shift."""
    return [i + offset if i else 0 for i in ids]


def offset_room(ids: Sequence[int], rows: int) -> int:
    """The largest offset that keeps ``ids`` inside a table of ``rows`` rows (0 if none fits)."""
    return max(0, rows - 1 - max(ids, default=0))
