"""The model zoo: recurrent cells equal torch's, every model is causal, trains, samples and saves."""

import pytest
import torch

from quillgpt.config import ModelConfig
from quillgpt.models import build_model
from quillgpt.models.zoo import ZOO, GRULanguageModel, LSTMLanguageModel, RNNLanguageModel
from quillgpt.sample import generate

ALL = ["bigram", "gpt", *ZOO]


def small(arch: str, **kw) -> ModelConfig:
    config = dict(arch=arch, vocab_size=19, block_size=24, n_layer=3, n_head=2, n_embd=16, dropout=0.0,
                  context_len=4)
    return ModelConfig(**{**config, **kw})


@pytest.mark.parametrize("ours, theirs", [(RNNLanguageModel, torch.nn.RNN), (LSTMLanguageModel, torch.nn.LSTM),
                                          (GRULanguageModel, torch.nn.GRU)])
def test_recurrent_cells_equal_torch(ours: type, theirs: type) -> None:
    torch.manual_seed(0)
    model = ours(small("rnn", n_layer=2))
    reference = theirs(16, 16, num_layers=2, batch_first=True)
    with torch.no_grad():
        for layer, cell in enumerate(model.cells):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(reference, f"{name}_l{layer}").copy_(getattr(cell, name))
    x = torch.randn(3, 11, 16, requires_grad=True)
    ours_out = x
    for cell in model.cells:
        ours_out = cell(ours_out)
    theirs_out, _ = reference(x)
    assert torch.allclose(ours_out, theirs_out, atol=1e-5)
    grad_ours, = torch.autograd.grad(ours_out.square().sum(), x)
    grad_theirs, = torch.autograd.grad(theirs_out.square().sum(), x)
    assert torch.allclose(grad_ours, grad_theirs, atol=1e-5)


@pytest.mark.parametrize("arch", ALL)
def test_every_model_is_causal(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(small(arch)).eval()
    idx = torch.randint(0, 19, (2, 24))
    logits, _ = model(idx)
    assert logits.shape == (2, 24, 19)
    for t in (0, 5, 22):
        changed = idx.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 1) % 19
        other, _ = model(changed)
        assert torch.allclose(logits[:, :t + 1], other[:, :t + 1], atol=1e-6), f"{arch} peeks at t+1 from {t}"
        assert not torch.allclose(logits[:, t + 1:], other[:, t + 1:]), f"{arch} ignores token {t + 1}"


def test_mlp_sees_exactly_context_len_tokens() -> None:
    torch.manual_seed(0)
    model = build_model(small("mlp", context_len=4)).eval()
    idx = torch.randint(0, 19, (1, 24))
    changed = idx.clone()
    changed[0, 10] = (changed[0, 10] + 1) % 19
    diff = (model(idx)[0] - model(changed)[0]).abs().amax(-1)[0]
    assert diff[10:14].min() > 0 and diff[:10].max() == 0 and diff[14:].max() == 0


def test_cnn_receptive_field_doubles_per_layer() -> None:
    torch.manual_seed(0)
    model = build_model(small("cnn", n_layer=3)).eval()
    assert model.receptive_field == 8
    idx = torch.randint(0, 19, (1, 24))
    changed = idx.clone()
    changed[0, 4] = (changed[0, 4] + 1) % 19
    diff = (model(idx)[0] - model(changed)[0]).abs().amax(-1)[0]
    assert diff[4:12].min() > 0 and diff[12:].max() == 0


@pytest.mark.parametrize("arch", list(ZOO))
def test_zoo_models_learn_and_sample(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(small(arch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = (torch.arange(25) % 7).repeat(4, 1)  # a repeating pattern: learnable from 4 tokens back
    first = None
    for _ in range(30):
        _, loss = model(data[:, :-1], data[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        first = first if first is not None else loss.item()
    assert torch.isfinite(loss) and loss.item() < first - 0.5
    out = generate(model, torch.zeros(1, 1, dtype=torch.long), 30, top_k=1)  # longer than block_size
    assert out.shape == (1, 31)


def test_unknown_arch_is_a_config_error() -> None:
    from quillgpt.errors import ConfigError

    with pytest.raises(ConfigError, match="arch"):
        build_model(small("transformer-xl"))
