"""The one-token decoding fast path (models/matvec.py) computes what F.linear computes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from quillgpt.config import ModelConfig
from quillgpt.models import build_model, matvec
from quillgpt.sample import generate


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (16, 16), (36, 12)])
def test_split_product_matches_linear(two_threads, shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    weight, bias = torch.randn(*shape), torch.randn(shape[0])
    x = torch.randn(1, 1, shape[1])
    prepared = matvec.PreparedWeights()
    with torch.no_grad():
        assert matvec.applies(x, weight)
        fast = matvec.linear(x, weight, bias, prepared, "w")
    assert fast.shape == (1, 1, shape[0])
    assert torch.allclose(fast, F.linear(x, weight, bias), atol=1e-5)


def test_prepared_copy_follows_in_place_updates(two_threads) -> None:
    weight = torch.randn(32, 8)
    x = torch.randn(1, 8)
    prepared = matvec.PreparedWeights()
    with torch.no_grad():
        matvec.linear(x, weight, None, prepared, "w")
        weight.mul_(-2.0)  # what an optimizer step or load_state_dict does
        assert torch.allclose(matvec.linear(x, weight, None, prepared, "w"), x @ weight.T, atol=1e-5)


@pytest.mark.parametrize("case", ["grad", "two rows", "bf16", "odd rows"])
def test_fast_path_stays_out_of_the_way(two_threads, case: str) -> None:
    weight, x = torch.randn(32, 8), torch.randn(1, 8)
    if case == "two rows":
        x = torch.randn(2, 8)
    if case == "bf16":
        weight, x = weight.bfloat16(), x.bfloat16()
    if case == "odd rows":
        weight = torch.randn(33, 8)
    with torch.set_grad_enabled(case == "grad"):
        assert not matvec.applies(x, weight)


def test_one_token_decoding_uses_the_fast_path_and_matches_the_full_forward(two_threads) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=13, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()
    prompt = torch.randint(0, 13, (1, 4))
    cached = generate(model, prompt, 12, top_k=1, use_cache=True)
    plain = generate(model, prompt, 12, top_k=1, use_cache=False)
    assert torch.equal(cached, plain)
    assert model.blocks[0].ffwd._prepared._copies  # the split copy was built, so the fast path ran
    assert model.blocks[0].sa._prepared._copies
