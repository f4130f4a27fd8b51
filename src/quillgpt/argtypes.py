"""Argument types for the ``quill`` command: numbers are checked where they are parsed.

A value that cannot work (a count of 0 or -1, a probability above 1, NaN, a seed NumPy
refuses, a size no machine holds) is refused by argparse itself, in one line that names the
flag and the allowed range, before a model is loaded or a file is touched. A value that only
takes long (a million steps, a million tokens) is the user's choice and is allowed: Ctrl-C
stops those cleanly.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from quillgpt.config import MAX_SEED


def _bounds(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"between {low:g} and {high:g}"
    return f">= {low:g}" if low is not None else f"<= {high:g}"


def whole(low: int | None = 1, high: int | None = None) -> Callable[[str], int]:
    """An integer in [low, high] (either end may be open-ended with None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {_bounds(low, high)}, got {value}")
        return value

    parse.__name__ = "whole"  # argparse names the type in its own messages
    return parse


def real(low: float | None = None, high: float | None = None, *, above: float | None = None) -> Callable[[str], float]:
    """A finite number in [low, high], or above ``above`` (exclusive) when that is given."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if above is not None and value <= above:
            raise argparse.ArgumentTypeError(f"must be > {above:g}, got {value:g}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {_bounds(low, high)}, got {value:g}")
        return value

    parse.__name__ = "real"
    return parse


count = whole(1)  # something to do at least once: steps, tokens, problems, a batch
seed = whole(0, MAX_SEED)
probability = real(0.0, 1.0)


def bounded(kind: Callable[[str], float], lo: float, hi: float) -> Callable[[str], Any]:
    """An argparse type: a number of ``kind`` in [lo, hi], else a one-line usage error (exit 2)."""
    what = "an integer" if kind is int else "a number"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:  # also NaN
            raise argparse.ArgumentTypeError(f"expected {what} in {lo:g}..{hi:g}, got {text!r}")
        return value

    return parse
