import math

import pytest
import torch

from quillgpt.config import ModelConfig, preset
from quillgpt.errors import ConfigError
from quillgpt.models import GPT, BigramLanguageModel, build_model


def tiny_config(**kw) -> ModelConfig:
    base = dict(vocab_size=11, block_size=12, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
    base.update(kw)
    return ModelConfig(**base)


def test_lecture_gpt_has_exactly_10_788_929_parameters() -> None:
    config = preset("seed-gpt").model
    config.vocab_size = 65
    assert (config.n_layer, config.n_head, config.n_embd, config.block_size) == (6, 6, 384, 256)
    for attention in ("classic", "fused"):
        config.attention = attention
        assert build_model(config).num_parameters() == 10_788_929


def test_initial_loss_is_near_uniform() -> None:
    torch.manual_seed(0)
    config = preset("seed-gpt").model
    config.vocab_size = 65
    model = build_model(config).eval()
    idx = torch.randint(0, 65, (4, 256))
    _, loss = model(idx, torch.randint(0, 65, (4, 256)))
    assert abs(loss.item() - math.log(65)) < 0.15


@pytest.mark.parametrize("attention", ["classic", "fused"])
def test_causality(attention: str) -> None:
    """Changing tokens after position t never changes the logits at positions <= t."""
    torch.manual_seed(0)
    model = build_model(tiny_config(attention=attention)).eval()
    idx = torch.randint(0, 11, (2, 12))
    base, _ = model(idx)
    for t in range(11):
        changed = idx.clone()
        changed[:, t + 1:] = torch.randint(0, 11, (2, 11 - t))
        logits, _ = model(changed)
        assert torch.allclose(logits[:, : t + 1], base[:, : t + 1], atol=1e-6)
        if not torch.equal(changed, idx):
            assert not torch.allclose(logits, base)


@pytest.mark.parametrize("attention", ["classic", "fused"])
def test_tiny_gpt_overfits_one_batch(attention: str) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config(attention=attention))
    x = torch.randint(0, 11, (4, 12))
    y = torch.randint(0, 11, (4, 12))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(300):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_bigram_logits_depend_only_on_the_current_token() -> None:
    model = BigramLanguageModel(tiny_config(arch="bigram"))
    idx = torch.tensor([[1, 2, 3], [4, 2, 5]])
    logits, loss = model(idx)
    assert logits.shape == (2, 3, 11) and loss is None
    assert torch.equal(logits[0, 1], logits[1, 1])


def test_loss_mask_counts_only_masked_positions() -> None:
    torch.manual_seed(0)
    model = build_model(tiny_config()).eval()
    x, y = torch.randint(0, 11, (2, 12)), torch.randint(0, 11, (2, 12))
    mask = torch.zeros(2, 12)
    mask[:, 6:] = 1
    _, masked = model(x, y, loss_mask=mask)
    logits, _ = model(x)
    expected = torch.nn.functional.cross_entropy(logits[:, 6:].reshape(-1, 11), y[:, 6:].reshape(-1))
    assert torch.allclose(masked, expected, atol=1e-6)


def test_context_longer_than_block_size_is_a_clear_error() -> None:
    model = GPT(tiny_config())
    with pytest.raises(ConfigError, match="longer than block_size 12"):
        model(torch.zeros(1, 13, dtype=torch.long))


def test_n_embd_not_divisible_by_n_head() -> None:
    with pytest.raises(ConfigError, match=r"n_embd \(100\) must be divisible by n_head \(6\)"):
        build_model(tiny_config(n_embd=100, n_head=6))


def test_fast_feed_forward_matches_the_lecture_one_and_drops_at_rate_p() -> None:
    from quillgpt.models.gpt import FastFeedForward, FeedForward

    torch.manual_seed(0)
    fast, plain = FastFeedForward(16, dropout=0.25), FeedForward(16, dropout=0.25)
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(64, 32, 16)
    fast.eval(), plain.eval()
    assert torch.allclose(fast(x), plain(x), atol=1e-6)
    fast.train()
    dense = fast.net[2](fast.net[1](fast.net[0](x)))
    out = fast(x)
    dropped = (out == 0) & (dense != 0)
    assert abs(dropped.float().mean().item() - 0.25) < 0.02  # byte masks: p rounded to 1/256
    kept = ~dropped
    assert torch.allclose(out[kept], dense[kept] * 256 / 192, atol=1e-5)
