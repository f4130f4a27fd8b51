import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from quillgpt.config import ModelConfig
from quillgpt.errors import SamplingError
from quillgpt.models import build_model
from quillgpt.sample import filter_logits, generate, sample_next


def test_top_k_keeps_exactly_k() -> None:
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = filter_logits(logits, top_k=2)
    assert torch.isfinite(kept).tolist() == [[False, True, False, True, False]]


def test_top_p_keeps_the_smallest_nucleus() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = torch.isfinite(filter_logits(probs.log(), top_p=0.8))
    assert kept.tolist() == [[True, True, False, False]]
    kept = torch.isfinite(filter_logits(probs.log(), top_p=0.81))
    assert kept.tolist() == [[True, True, True, False]]
    assert torch.isfinite(filter_logits(probs.log(), top_p=0.01)).tolist() == [[True, False, False, False]]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-10, 10), min_size=2, max_size=30), st.floats(0.05, 1.0))
@example(values=[-7.3031607804740036e-31, 0.0], top_p=0.5)  # found by CI: tie in float probabilities
def test_top_p_mass_and_order(values: list[float], top_p: float) -> None:
    logits = torch.tensor([values])
    kept = torch.isfinite(filter_logits(logits, top_p=top_p))[0]
    probs = torch.softmax(logits, -1)[0]
    # The token with the largest logit stays. (Not probs.argmax(): logits that differ by 1e-30
    # give equal float probabilities, and argmax of a tie need not be the larger logit.)
    assert kept[logits[0].argmax()]
    assert probs[kept].sum() >= top_p - 1e-5  # the kept set reaches the mass
    if kept.any() and (~kept).any():
        assert probs[kept].min() >= probs[~kept].max() - 1e-7  # and holds the most likely tokens


def test_temperature_sharpens() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    cold = torch.softmax(filter_logits(logits, temperature=0.5), -1)
    hot = torch.softmax(filter_logits(logits, temperature=2.0), -1)
    assert cold[0, 2] > torch.softmax(logits, -1)[0, 2] > hot[0, 2]


def test_seeded_sampling_is_reproducible_and_crops_context() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=7, block_size=4, n_layer=1, n_head=1, n_embd=8, dropout=0.0))
    start = torch.zeros(1, 6, dtype=torch.long)  # longer than block_size: cropped, not an error
    a = generate(model, start, 20, generator=torch.Generator().manual_seed(3))
    b = generate(model, start, 20, generator=torch.Generator().manual_seed(3))
    assert a.shape == (1, 26) and torch.equal(a, b)
    assert model.training  # generate restores the mode it found


def test_top_k_1_is_greedy() -> None:
    logits = torch.randn(5, 9)
    assert torch.equal(sample_next(logits, top_k=1).squeeze(1), logits.argmax(-1))


@pytest.mark.parametrize("kw,match", [
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(temperature=0.0), "temperature"),
    (dict(temperature=math.nan), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
])
def test_bad_sampling_parameters(kw: dict, match: str) -> None:
    model = build_model(ModelConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4))
    args = dict(max_new_tokens=3)
    args.update(kw)
    with pytest.raises(SamplingError, match=match):
        generate(model, torch.zeros(1, 1, dtype=torch.long), **args)


def _cached_model(block_size: int = 8, attention: str = "fused"):
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=13, block_size=block_size, n_layer=2, n_head=2, n_embd=16, dropout=0.1,
                         attention=attention)
    return build_model(config)


def test_greedy_with_and_without_cache_is_identical_within_the_context() -> None:
    model = _cached_model(block_size=32)
    prompt = torch.randint(0, 13, (2, 5))
    cached = generate(model, prompt, 27, top_k=1, use_cache=True)
    plain = generate(model, prompt, 27, top_k=1, use_cache=False)
    assert torch.equal(cached, plain)


def test_cached_logits_match_a_full_forward() -> None:
    model = _cached_model(block_size=16).eval()
    idx = torch.randint(0, 13, (3, 16))
    full, _ = model(idx)
    cache = model.new_kv_cache(3)
    prefill, _ = model(idx[:, :6], kv_cache=cache)  # a multi-token chunk first, then one at a time
    chunk, _ = model(idx[:, 6:9], kv_cache=cache)  # a multi-token chunk after cached tokens
    steps = [model(idx[:, t:t + 1], kv_cache=cache)[0] for t in range(9, 16)]
    assert torch.allclose(torch.cat([prefill, chunk, *steps], dim=1), full, atol=1e-5)


def test_cache_rolls_past_block_size_as_documented() -> None:
    """Past block_size the cache refills from the newest block_size // 2 tokens; check the
    cached run against a no-cache run that uses exactly those context windows."""
    from quillgpt.sample import cache_window

    model = _cached_model(block_size=8).eval()
    prompt = torch.randint(0, 13, (1, 3))
    cached = generate(model, prompt, 30, top_k=1, use_cache=True)
    tokens, cached_count, start = prompt, 0, 0
    for _ in range(30):
        window = cache_window(cached_count, 8)
        if cached_count in (0, 8):  # refill: the context now starts `window` tokens back
            start, cached_count = max(0, tokens.size(1) - window), 0
        cached_count += min(window, tokens.size(1) - start) if window > 1 else 1
        logits, _ = model(tokens[:, start:])
        tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, tokens)


def test_classic_attention_samples_without_a_cache() -> None:
    model = _cached_model(attention="classic")
    assert not model.supports_kv_cache
    out = generate(model, torch.zeros(1, 1, dtype=torch.long), 20, top_k=1)
    assert out.shape == (1, 21)


def test_printed_sample_ends_at_end_of_text_unless_told_otherwise(capsys) -> None:
    from quillgpt.commands.common import print_sample
    from quillgpt.tokenizers import CharTokenizer

    tokenizer = CharTokenizer(list("ab\n"), specials=["<|endoftext|>"])  # "<|endoftext|>" is id 3
    model = build_model(ModelConfig(vocab_size=4, block_size=16, n_layer=1, n_head=1, n_embd=8))
    with torch.no_grad():  # whatever the context: "a" or the end, about 2:1
        model.lm_head.weight.zero_()
        model.lm_head.bias.copy_(torch.tensor([5.0, -20.0, -20.0, 4.3]))
    print_sample(model, tokenizer, "b", 40, 1.0, None, None, seed=0, device=torch.device("cpu"))
    out, err = capsys.readouterr()
    drawn = len(out) - 2  # the prompt "b" and the final newline
    assert out == "b" + "a" * drawn + "\n" and drawn < 40
    assert f"stopped at <|endoftext|> after {drawn} tokens" in err
    print_sample(model, tokenizer, "b", 40, 1.0, None, None, seed=0, device=torch.device("cpu"), stop_at_end=False)
    out, err = capsys.readouterr()
    assert out.startswith("b" + "a" * drawn + "<|endoftext|>") and err == ""
    assert out.count("a") + out.count("<|endoftext|>") == 40
