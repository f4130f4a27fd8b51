"""Errors a user can fix.

Every error that comes from bad input (a wrong path, an unknown character, an impossible
config) is a ``QuillError``. Its message is one line that names the problem and the fix.
The CLI prints exactly that line and exits with code 2; it never shows a traceback for
these. Anything else that escapes is a bug in quillgpt.
"""

from __future__ import annotations


class QuillError(Exception):
    """Base class: a problem with the user's input, with a one-line message and a fix."""

    def __init__(self, message: str) -> None:
        # Keep messages on one line so the CLI output stays a single readable line.
        super().__init__(" ".join(str(message).split()))


class ConfigError(QuillError, ValueError):
    """A config value is invalid (wrong type, out of range, inconsistent)."""


class DataError(QuillError):
    """A text file or prepared dataset is missing, empty, undecodable or too small."""


class TokenizerError(QuillError, ValueError):
    """Text cannot be encoded (e.g. a character outside the vocabulary)."""


class CheckpointError(QuillError):
    """A run directory or checkpoint is missing, corrupt or incompatible."""


class SamplingError(QuillError, ValueError):
    """Sampling parameters are invalid."""
