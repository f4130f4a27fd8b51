"""The models. Each is one readable module with ``forward(idx, targets=None, loss_mask=None)``."""

from __future__ import annotations

from quillgpt.config import ModelConfig
from quillgpt.models.base import LanguageModel
from quillgpt.models.bigram import BigramLanguageModel
from quillgpt.models.gpt import GPT


def build_model(config: ModelConfig) -> LanguageModel:
    """Validate ``config`` and build the model it describes."""
    config.validate()
    if config.arch == "bigram":
        return BigramLanguageModel(config)
    from quillgpt.models.zoo import ZOO  # mlp, cnn, rnn, lstm, gru

    if config.arch in ZOO:
        return ZOO[config.arch](config)
    return GPT(config)


__all__ = ["GPT", "BigramLanguageModel", "LanguageModel", "build_model"]
