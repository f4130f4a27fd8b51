"""The flat one-token decoding path (models/decode.py) gives the logits the modules give."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from quillgpt.config import ModelConfig
from quillgpt.models import build_model, decode
from quillgpt.sample import generate
from quillgpt.serve.batching import RaggedKVCache

FLAGS = {
    "lecture": {},
    "scratch norm, gelu": {"norm": "scratch", "activation": "gelu"},
    "rms, rope, swiglu, qk-norm, tied": {"norm": "rms", "position": "rope", "activation": "swiglu",
                                         "qk_norm": True, "tie_weights": True},
    "qkv bias, no head bias, gelu_tanh, even vocab": {"qkv_bias": True, "head_bias": False,
                                                      "activation": "gelu_tanh", "vocab_size": 14},
}


@pytest.fixture(params=[1, 2], ids=["1 thread", "2 threads"])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _model(**flags) -> nn.Module:
    torch.manual_seed(0)
    config = ModelConfig(**{"vocab_size": 13, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 16,
                            "dropout": 0.1, **flags})
    model = build_model(config).eval()
    with torch.no_grad():  # non-zero biases and gains, so a dropped one shows in the logits, and
        for name, param in model.named_parameters():  # weights 10x their init, so any change does too
            if name.endswith("bias") or "ln" in name or "norm" in name:
                param.add_(0.3 * torch.randn_like(param))
            else:
                param.mul_(10.0)
    return model


def _decoded_logits(model: nn.Module, idx: torch.Tensor, prefill: int) -> torch.Tensor:
    """Logits of positions prefill-1 .. T-1: a chunk through the cache, then one token at a time."""
    with torch.no_grad():
        cache = model.new_kv_cache(1)
        first, _ = model(idx[:, :prefill], kv_cache=cache)
        steps = [model(idx[:, t:t + 1], kv_cache=cache)[0] for t in range(prefill, idx.size(1))]
    return torch.cat([first[:, -1:], *steps], dim=1)


def _full_logits(model: nn.Module, idx: torch.Tensor, prefill: int) -> torch.Tensor:
    with torch.no_grad():
        return model(idx)[0][:, prefill - 1:]


@pytest.mark.parametrize("flags", FLAGS.values(), ids=FLAGS.keys())
def test_decoded_tokens_match_the_full_forward(threads, flags: dict) -> None:
    model = _model(**flags)
    idx = torch.randint(0, model.config.vocab_size, (1, 16))
    decoded = _decoded_logits(model, idx, prefill=5)
    assert decode.kept_plan(model) is not None  # the flat path ran
    assert torch.allclose(decoded, _full_logits(model, idx, 5), atol=1e-5)


class ShiftedLinear(nn.Linear):  # a subclass with a forward of its own, which the plan must not skip
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + 1.0


def _change(model: nn.Module, change: str) -> None:
    block = model.blocks[0]
    with torch.no_grad():
        if change == "in place":  # an optimizer step, load_state_dict
            model.blocks[1].sa.heads[0].value.weight.normal_(0.0, 1.0)
        elif change == "bias in place":
            block.sa.proj.bias.normal_(0.0, 1.0)
        elif change == "qkv bias in place":  # the plan's q/k/v bias is a stacked copy
            model.blocks[1].sa.heads[0].value.bias.normal_(0.0, 1.0)
        elif change == "a block training":
            block.train()
        elif change == "norm gain in place":
            block.ln2.weight.normal_(0.0, 2.0)
        elif change == "replaced":
            block.ffwd.net[0].weight = nn.Parameter(torch.randn(64, 16))
        elif change == "moved":  # what .to() does: the same parameter, new storage
            param = block.sa.proj.weight
            param.data = param.data.clone() * 30
        elif change == "head weight":
            model.lm_head.weight.add_(1.0)
        elif change == "new head":
            model.lm_head = nn.Linear(16, 13)
        elif change == "new final norm":
            model.ln_f = nn.LayerNorm(16)
        elif change == "new block norm":
            block.ln1 = nn.LayerNorm(16)
        elif change == "new projection":
            block.sa.proj = nn.Linear(16, 16)
        elif change == "fewer blocks":
            model.blocks = model.blocks[:1]
        elif change == "head subclass":
            head = ShiftedLinear(16, 13)
            head.load_state_dict(model.lm_head.state_dict())
            model.lm_head = head


CHANGES = ["in place", "bias in place", "qkv bias in place", "norm gain in place", "a block training",
           "replaced", "moved", "head weight", "new head", "new final norm", "new block norm", "new projection",
           "fewer blocks", "head subclass"]


@pytest.mark.parametrize("change", CHANGES)
def test_a_changed_model_is_seen(threads, change: str) -> None:
    model = _model(qkv_bias=True, dropout=0.0 if change == "a block training" else 0.1)
    idx = torch.randint(0, 13, (1, 12))
    before = _decoded_logits(model, idx, prefill=3)  # builds the plan
    _change(model, change)
    if change != "a block training":
        model.eval()  # (a new module starts in training mode, which would keep the plan out)
    after = _decoded_logits(model, idx, 3)
    if change != "a block training":  # (a dropout of 0 changes nothing: the point is that the plan steps aside)
        assert (after - before).abs().max() > 0.05  # the change matters, so a stale plan would show
    assert torch.allclose(after, _full_logits(model, idx, 3), atol=1e-5)
    assert (decode.kept_plan(model) is None) == (change in ("head subclass", "a block training"))


def test_a_swiglu_gate_replaced_is_seen() -> None:
    model = _model(activation="swiglu")
    idx = torch.randint(0, 13, (1, 10))
    _decoded_logits(model, idx, prefill=3)
    model.blocks[1].ffwd.gate = nn.Linear(16, model.blocks[1].ffwd.gate.out_features, bias=False)
    assert torch.allclose(_decoded_logits(model, idx, 3), _full_logits(model, idx, 3), atol=1e-5)


@pytest.mark.parametrize("token", [-1, 13])
def test_a_token_outside_the_vocabulary_is_refused(token: int) -> None:
    model = _model()
    with torch.no_grad():
        cache = model.new_kv_cache(1)
        model(torch.zeros(1, 3, dtype=torch.long), kv_cache=cache)
        with pytest.raises(IndexError):
            model(torch.tensor([[token]]), kv_cache=cache)


def test_targets_and_packed_positions_still_take_the_modules() -> None:
    model = _model()
    with torch.no_grad():
        cache = model.new_kv_cache(1)
        model(torch.zeros(1, 3, dtype=torch.long), kv_cache=cache)
        _, loss = model(torch.ones(1, 1, dtype=torch.long), targets=torch.ones(1, 1, dtype=torch.long),
                        kv_cache=cache)
        assert loss is not None
        with pytest.raises(ValueError, match="packed rows"):
            model(torch.ones(1, 1, dtype=torch.long), kv_cache=cache, positions=torch.zeros(1, 1, dtype=torch.long))


@pytest.mark.parametrize("rows", [1, 2])
def test_a_ragged_cache_of_one_row_takes_the_plan_and_of_two_the_modules(rows: int) -> None:
    model = _model()
    c = model.config
    idx = torch.randint(0, 13, (rows, 9))
    with torch.no_grad():  # the server's cache: one length per row
        cache = RaggedKVCache(c.n_layer, rows, c.n_head, c.block_size, c.head_size, "cpu", torch.float32)
        first, _ = model(idx[:, :4], kv_cache=cache)
        steps = [model(idx[:, t:t + 1], kv_cache=cache)[0] for t in range(4, 9)]
    assert torch.allclose(torch.cat([first[:, -1:], *steps], dim=1), _full_logits(model, idx, 4), atol=1e-5)
    assert (decode.kept_plan(model) is not None) == (rows == 1)


def test_moving_the_model_drops_the_plan_and_a_copy_does_not_carry_it() -> None:
    import copy

    model = _model()
    _decoded_logits(model, torch.randint(0, 13, (1, 6)), prefill=3)
    assert decode.kept_plan(model) is not None
    assert decode.kept_plan(copy.deepcopy(model)) is None
    model.double()
    assert decode.kept_plan(model) is None
    assert not model.blocks[0].sa._prepared._copies  # the modules' prepared copies went too


CASES = ["grad", "train mode", "one block training", "two rows", "bf16", "parametrized", "full cache", "hooked",
         "global hook", "own feed-forward"]


class DoubledFeedForward(nn.Module):  # a block part the plan does not know: it must not guess
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * self.inner(x)


@pytest.mark.parametrize("case", CASES)
def test_the_flat_path_stays_out_of_the_way(case: str) -> None:
    model = _model()
    calls = []
    if case == "hooked":
        model.blocks[1].ffwd.register_forward_hook(lambda *args: calls.append(1))
    if case == "own feed-forward":
        model.blocks[1].ffwd = DoubledFeedForward(model.blocks[1].ffwd)
    handle = nn.modules.module.register_module_forward_hook(lambda *args: calls.append(1)) \
        if case == "global hook" else None
    rows = 2 if case == "two rows" else 1
    idx = torch.randint(0, 13, (rows, 16))
    if case == "bf16":
        model = model.bfloat16()
    if case == "parametrized":
        parametrize.register_parametrization(model.blocks[0].sa.proj, "weight", nn.Identity())
    if case == "train mode":
        model.train()
    if case == "one block training":
        model.blocks[0].train()
    with torch.set_grad_enabled(case == "grad"):
        cache = model.new_kv_cache(rows)
        model(idx[:, :15] if case != "full cache" else idx, kv_cache=cache)
        if case == "full cache":  # past block_size: the modules' one-line error, not a cache overflow
            with pytest.raises(Exception, match="longer than block_size"):
                model(idx[:, :1], kv_cache=cache)
        else:
            step, _ = model(idx[:, 15:], kv_cache=cache)
            if "train" not in case:  # (dropout draws differ from call to call)
                assert torch.allclose(step, model(idx)[0][:, -1:], atol=1e-5)
    if handle is not None:
        handle.remove()
    assert decode.kept_plan(model) is None
    if case in ("hooked", "global hook"):
        assert calls  # the hook ran for the decoded token too


def test_a_hook_added_after_the_plan_is_honoured() -> None:
    model = _model()
    idx = torch.randint(0, 13, (1, 10))
    _decoded_logits(model, idx, prefill=3)
    calls = []
    model.blocks[0].ln1.register_forward_pre_hook(lambda *args: calls.append(1))
    _decoded_logits(model, idx, prefill=9)  # the prefill chunk, then one decoded token
    assert len(calls) == 2 and decode.kept_plan(model) is None


def test_sampling_with_the_cache_goes_through_the_flat_path_and_agrees() -> None:
    model = _model(block_size=8)
    prompt = torch.randint(0, 13, (1, 3))
    cached = generate(model, prompt, 20, top_k=1, use_cache=True)  # past block_size: refills too
    assert decode.kept_plan(model) is not None
    decode.forget(model)
    with torch.no_grad():  # the same run through the modules only: the plan never applies with B=2
        both = generate(model, prompt.expand(2, -1), 20, top_k=1, use_cache=True)
    assert decode.kept_plan(model) is None
    assert torch.equal(cached[0], both[0])


def test_inference_mode_decodes_and_its_plan_serves_no_grad_later(threads) -> None:
    model = _model()
    idx = torch.randint(0, 13, (1, 12))
    with torch.inference_mode():
        inside = _decoded_logits(model, idx, prefill=4)
    assert torch.allclose(inside, _full_logits(model, idx, 4), atol=1e-5)
    assert torch.allclose(_decoded_logits(model, idx, 4), inside, atol=1e-6)  # the same plan, outside
    with torch.inference_mode():  # weights made under inference_mode have no version: modules only
        frozen = _model()
        assert torch.allclose(_decoded_logits(frozen, idx, 4), _full_logits(frozen, idx, 4), atol=1e-5)
    assert decode.kept_plan(frozen) is None
