"""One choice of a completion as it streams, and the OpenAI JSON and server-sent-event shapes it
is answered in (``serve.app`` builds answers from these)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from quillgpt.tokenizers import StreamDecoder


@dataclass
class Choice:
    """The text of one choice as it streams: incremental UTF-8 decoding, then stop strings.

    Linear time: ``pending`` is never longer than the longest stop minus one plus the newest
    token's text, and each token costs one ``find`` per stop over it. A stop string cannot
    start in text already sent: that text was followed by at least longest-stop - 1 more
    characters, all searched before it was sent.
    """

    decoder: StreamDecoder
    stops: list[str]
    pending: str = ""  # decoded, not yet sent: its tail might be the start of a stop string
    text: str = ""  # sent so far
    tokens: int = 0  # tokens that made up the text (up to and including one that completed a stop)
    finish_reason: str | None = None
    hold: int = field(init=False)  # characters held back while streaming

    def __post_init__(self) -> None:
        self.hold = max((len(s) for s in self.stops), default=1) - 1

    def feed(self, token: int) -> str:
        self.tokens += 1
        self.pending += self.decoder.feed([token])
        return self._release()

    def close(self, reason: str) -> str:
        self.pending += self.decoder.flush()
        delta = self._release(final=True)
        self.finish_reason = self.finish_reason or reason
        return delta

    def _release(self, final: bool = False) -> str:
        """Send what cannot be part of a stop string; on a stop string, send what precedes it and finish."""
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending, self.finish_reason = self.pending[: min(hits)], "", "stop"
        else:
            hold = 0 if final else min(self.hold, len(self.pending))
            out = self.pending[: len(self.pending) - hold]
            self.pending = self.pending[len(self.pending) - hold:]
        self.text += out
        return out


def whole_choice(index: int, choice: Choice, chat: bool) -> dict[str, Any]:
    """One finished choice in a JSON (not streamed) answer."""
    if chat:
        return {"index": index, "message": {"role": "assistant", "content": choice.text},
                "finish_reason": choice.finish_reason}
    return {"index": index, "text": choice.text, "logprobs": None, "finish_reason": choice.finish_reason}


def chunk(head: dict[str, Any], chat: bool, index: int, delta: str, finish: str | None, role: bool = False) -> str:
    """One streamed event: new text of one choice (chat: the first names the role; the last is empty)."""
    if chat:
        body: dict[str, Any] = {"role": "assistant", "content": delta} if role else {"content": delta}
        if finish is not None and not delta:
            body = {}
        choice: dict[str, Any] = {"index": index, "delta": body, "finish_reason": finish}
    else:
        choice = {"index": index, "text": delta, "logprobs": None, "finish_reason": finish}
    return sse({**head, "choices": [choice]})


def sse(data: Any) -> str:
    return f"data: {json.dumps(data)}\n\n"
