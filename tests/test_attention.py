import pytest
import torch

from quillgpt.config import ModelConfig
from quillgpt.models import build_model
from quillgpt.models.attention import ByteDropout, FusedMultiHeadAttention, MultiHeadAttention
from quillgpt.models.gpt import LayerNorm1d


def pair(**kw):
    config = dict(vocab_size=65, block_size=32, n_layer=3, n_head=4, n_embd=64, dropout=0.0)
    config.update(kw)
    torch.manual_seed(0)
    classic = build_model(ModelConfig(attention="classic", **config))
    fused = build_model(ModelConfig(attention="fused", **config))
    fused.load_state_dict(classic.state_dict())  # one parameter layout: loads as is
    return classic, fused


def test_same_parameter_layout() -> None:
    classic, fused = pair()
    assert {k: v.shape for k, v in classic.state_dict().items()} == {k: v.shape for k, v in fused.state_dict().items()}


def test_classic_and_fused_give_the_same_logits_in_eval_mode() -> None:
    classic, fused = pair(dropout=0.2)
    classic.eval()
    fused.eval()
    idx = torch.randint(0, 65, (3, 32))
    a, _ = classic(idx)
    b, _ = fused(idx)
    assert (a - b).abs().max().item() < 1e-5


def test_classic_and_fused_give_the_same_gradients() -> None:
    classic, fused = pair()
    idx, targets = torch.randint(0, 65, (3, 32)), torch.randint(0, 65, (3, 32))
    for model in (classic, fused):
        model(idx, targets)[1].backward()
    grads_fused = dict(fused.named_parameters())
    for name, p in classic.named_parameters():
        assert torch.allclose(p.grad, grads_fused[name].grad, atol=1e-6, rtol=1e-4), name


def test_fused_heads_match_classic_heads_on_random_input() -> None:
    torch.manual_seed(1)
    classic = MultiHeadAttention(48, 6, 16, 0.0)
    fused = FusedMultiHeadAttention(48, 6, 16, 0.0)
    fused.load_state_dict(classic.state_dict())
    x = torch.randn(2, 10, 48)
    assert torch.allclose(classic(x), fused(x), atol=1e-6)


@pytest.mark.parametrize("shape", [(4, 16), (2, 7, 32), (1, 3, 5, 8)])
def test_scratch_layernorm_matches_torch(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    ours, theirs = LayerNorm1d(shape[-1]), torch.nn.LayerNorm(shape[-1])
    with torch.no_grad():
        for p in (ours.weight, ours.bias):
            p.normal_()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(shape) * 3 + 1
    assert torch.allclose(ours(x), theirs(x), atol=1e-5)


def test_scratch_norm_model_loads_torch_norm_weights() -> None:
    config = dict(vocab_size=20, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
    torch.manual_seed(0)
    a = build_model(ModelConfig(norm="torch", **config)).eval()
    b = build_model(ModelConfig(norm="scratch", **config)).eval()
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 20, (2, 8))
    assert torch.allclose(a(idx)[0], b(idx)[0], atol=1e-5)


def test_stacked_weights_are_refreshed_after_an_update() -> None:
    """The no-grad path reuses the stacked q/k/v matrix; it must notice in-place changes."""
    torch.manual_seed(0)
    attn = FusedMultiHeadAttention(16, 2, 8, 0.0).eval()
    x = torch.randn(1, 4, 16)
    with torch.no_grad():
        before = attn(x)
        assert torch.equal(attn(x), before)
        attn.heads[1].value.weight.mul_(2.0)  # like an optimizer step
        after = attn(x)
    assert not torch.allclose(before, after)
    classic = MultiHeadAttention(16, 2, 8, 0.0).eval()
    classic.load_state_dict(attn.state_dict())
    assert torch.allclose(classic(x), after, atol=1e-6)
    other = FusedMultiHeadAttention(16, 2, 8, 0.0).eval()
    with torch.no_grad():
        attn.load_state_dict(other.state_dict())
        assert torch.allclose(attn(x), other(x), atol=1e-6)


def test_stacked_weights_follow_a_replaced_or_parametrized_projection() -> None:
    """The stacked matrix reads the heads' weights through the modules' dicts (a decoding fast
    path): a head whose Linear is swapped, or whose weight is parametrized, must still count."""
    torch.manual_seed(0)
    attn = FusedMultiHeadAttention(16, 2, 8, 0.0).eval()
    classic = MultiHeadAttention(16, 2, 8, 0.0).eval()
    x = torch.randn(1, 4, 16)
    with torch.no_grad():
        attn(x)  # stack once, so a stale copy would be reused below
        attn.heads[0].key = torch.nn.Linear(16, 8, bias=False)
        classic.load_state_dict(attn.state_dict())
        assert torch.allclose(attn(x), classic(x), atol=1e-6)

    class Doubled(torch.nn.Module):
        def forward(self, weight: torch.Tensor) -> torch.Tensor:
            return 2 * weight

    torch.nn.utils.parametrize.register_parametrization(attn.heads[1].query, "weight", Doubled())
    with torch.no_grad():
        classic.heads[1].query.weight.mul_(2)
        assert torch.allclose(attn(x), classic(x), atol=1e-6)
        for _ in range(20):  # the computed weight's version and address cannot tell a change
            attn.heads[1].query.parametrizations.weight.original.add_(0.01)
            classic.heads[1].query.weight.add_(0.02)
            assert torch.allclose(attn(x), classic(x), atol=1e-6)


def test_byte_dropout_drops_in_training_and_is_the_identity_in_eval() -> None:
    torch.manual_seed(0)
    dropout, x = ByteDropout(0.5), torch.ones(10_000)
    dropped = (dropout.train()(x) == 0).float().mean().item()
    assert 0.45 < dropped < 0.55
    assert dropout.eval()(x) is x


def test_byte_dropout_keeps_the_expected_fraction_and_mean() -> None:
    from quillgpt.models.attention import byte_dropout

    torch.manual_seed(0)
    x = torch.ones(1000, 1000)
    y = byte_dropout(x, 0.2)
    kept = (y != 0).float().mean().item()
    assert abs(kept - 205 / 256) < 0.003  # p rounded to 51/256
    assert abs(y.mean().item() - 1.0) < 0.005  # kept values scaled by 256/205
    assert torch.unique(y).tolist() == [0.0, torch.tensor(256 / 205).item()]  # float32 of 256/205
    assert torch.equal(byte_dropout(x, 0.0), x)
    odd = torch.ones(3, 5, 7)  # sizes that are not a multiple of 8 bytes
    assert byte_dropout(odd, 0.5).shape == odd.shape


def test_fused_training_path_with_dropout_still_learns_and_is_causal() -> None:
    torch.manual_seed(0)
    attn = FusedMultiHeadAttention(16, 2, 8, 0.5).train()
    x = torch.randn(2, 8, 16, requires_grad=True)
    out = attn(x)
    out[:, 3].sum().backward()
    assert x.grad[:, 4:].abs().max() == 0  # position 3 never looks ahead, with dropout too
    assert x.grad[:, :4].abs().max() > 0
