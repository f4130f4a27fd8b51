"""models/inspect.py: the recomputed attention weights are the ones the heads use."""

import pytest
import torch

from quillgpt.config import ModelConfig
from quillgpt.errors import ConfigError
from quillgpt.models import build_model
from quillgpt.models.introspect import attention_weights

CONFIG = dict(vocab_size=20, block_size=12, n_layer=2, n_head=3, n_embd=24, dropout=0.1)


def tiny(attention: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(attention=attention, **CONFIG))


def test_weights_are_causal_and_rows_sum_to_one() -> None:
    idx = torch.randint(0, 20, (10,))
    weights = attention_weights(tiny("fused"), idx)
    assert weights.shape == (2, 3, 10, 10)
    assert torch.all(weights.triu(1) == 0)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 3, 10), atol=1e-6)


def test_weights_reproduce_each_heads_output() -> None:
    """weights @ value(x) must equal Head.forward(x) for the input each head really receives."""
    model = tiny("classic").eval()
    idx = torch.randint(0, 20, (1, 9))
    inputs = []
    hooks = [block.sa.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
             for block in model.blocks]
    with torch.no_grad():
        model(idx)
    for hook in hooks:
        hook.remove()
    weights = attention_weights(model, idx)
    for layer, block in enumerate(model.blocks):
        for h, head in enumerate(block.sa.heads):
            x = inputs[layer]
            with torch.no_grad():
                assert torch.allclose(weights[layer, h] @ head.value(x)[0], head(x)[0], atol=1e-6)


def test_classic_and_fused_give_the_same_weights_and_model_is_untouched() -> None:
    classic, fused = tiny("classic"), tiny("fused")
    fused.load_state_dict(classic.state_dict())
    fused.train()
    idx = torch.randint(0, 20, (12,))
    assert torch.allclose(attention_weights(classic, idx), attention_weights(fused, idx), atol=1e-6)
    assert fused.training  # the mode is restored


def test_bad_inputs_are_one_line_errors() -> None:
    model = tiny("fused")
    with pytest.raises(ConfigError, match="block_size"):
        attention_weights(model, torch.zeros(13, dtype=torch.long))
    with pytest.raises(ConfigError, match="one text"):
        attention_weights(model, torch.zeros(2, 5, dtype=torch.long))
    bigram = build_model(ModelConfig(arch="bigram", vocab_size=20, block_size=8))
    with pytest.raises(ConfigError, match="no attention"):
        attention_weights(bigram, torch.zeros(5, dtype=torch.long))
