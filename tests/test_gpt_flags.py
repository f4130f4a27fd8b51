"""The paper features of ModelConfig: RoPE, RMSNorm, GELU/SwiGLU, weight tying, QK-norm, no head bias."""

import json
from pathlib import Path

import pytest
import torch

from quillgpt.checkpoint import load_run, read_config, write_checkpoint, write_run_files
from quillgpt.config import ModelConfig, RunConfig
from quillgpt.errors import ConfigError
from quillgpt.models import build_model
from quillgpt.models.attention import RMSNorm, RotaryEmbedding
from quillgpt.models.gpt import FeedForward, SwiGLUFeedForward, swiglu_hidden
from quillgpt.pretrained import adapt_vocabulary
from quillgpt.sample import generate
from quillgpt.tokenizers import CharTokenizer

FLAGS = {
    "rope": {"position": "rope"},
    "rms": {"norm": "rms"},
    "gelu": {"activation": "gelu"},
    "swiglu": {"activation": "swiglu"},
    "tied": {"tie_weights": True},
    "qknorm": {"qk_norm": True},
    "nohead": {"head_bias": False},
    "all": {"position": "rope", "norm": "rms", "activation": "swiglu", "tie_weights": True, "qk_norm": True},
}
SMALL = dict(vocab_size=23, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0)


def small(**kw) -> ModelConfig:
    return ModelConfig(**{**SMALL, **kw})


@pytest.mark.parametrize("flag", FLAGS)
def test_classic_and_fused_agree_with_each_flag(flag: str) -> None:
    torch.manual_seed(0)
    classic = build_model(small(attention="classic", **FLAGS[flag]))
    fused = build_model(small(attention="fused", **FLAGS[flag]))
    fused.load_state_dict(classic.state_dict())
    idx, targets = torch.randint(0, 23, (3, 16)), torch.randint(0, 23, (3, 16))
    (a, loss_a), (b, loss_b) = classic(idx, targets), fused(idx, targets)
    assert (a - b).abs().max().item() < 1e-5
    loss_a.backward()
    loss_b.backward()
    grads = dict(fused.named_parameters())
    for name, p in classic.named_parameters():
        assert torch.allclose(p.grad, grads[name].grad, atol=1e-6, rtol=1e-4), name


@pytest.mark.parametrize("flag", FLAGS)
def test_each_flag_trains_a_few_steps_with_finite_falling_loss(flag: str) -> None:
    torch.manual_seed(0)
    model = build_model(small(**FLAGS[flag]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = torch.arange(17).repeat(4, 1) % 23  # a fixed sequence: easy to learn
    losses = []
    for _ in range(15):
        _, loss = model(data[:, :-1], data[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.5


def test_defaults_keep_the_lecture_model() -> None:
    model = build_model(ModelConfig())
    assert model.num_parameters() == 10_788_929  # as in models/gpt.py's docstring


def test_rope_scores_depend_only_on_the_offset() -> None:
    torch.manual_seed(0)
    rope = RotaryEmbedding(head_size=8, block_size=32)
    q, k = torch.randn(8), torch.randn(8)

    def score(m: int, n: int) -> float:
        return (rope(q.expand(1, 8), m) @ rope(k.expand(1, 8), n).T).item()

    for offset in (0, 1, 5):
        scores = [score(m + offset, m) for m in range(0, 20, 3)]
        assert max(scores) - min(scores) < 1e-4, offset
    assert abs(score(3, 0) - score(4, 0)) > 1e-3  # and it does depend on the offset


def test_rope_keeps_norms_and_position_zero_is_identity() -> None:
    rope = RotaryEmbedding(16, 10)
    x = torch.randn(2, 10, 16)
    y = rope(x)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.allclose(y[:, 0], x[:, 0])
    assert torch.allclose(rope(x[:, 4:], start=4), y[:, 4:], atol=1e-6)


def test_rope_model_has_no_position_table_and_odd_head_size_is_refused() -> None:
    model = build_model(small(position="rope"))
    assert model.position_embedding_table is None
    assert not any("position" in name for name in model.state_dict())
    with pytest.raises(ConfigError, match="odd"):
        build_model(small(position="rope", n_embd=18, n_head=2))


def test_rope_kv_cache_sampling_equals_no_cache_sampling() -> None:
    torch.manual_seed(0)
    model = build_model(small(position="rope", qk_norm=True, dropout=0.1))
    prompt = torch.randint(0, 23, (2, 4))
    cached = generate(model, prompt, 12, top_k=1, use_cache=True)
    plain = generate(model, prompt, 12, top_k=1, use_cache=False)
    assert torch.equal(cached, plain)
    model.eval()
    idx = torch.randint(0, 23, (2, 16))
    cache = model.new_kv_cache(2)
    parts = [model(idx[:, :5], kv_cache=cache)[0]] + [model(idx[:, t:t + 1], kv_cache=cache)[0] for t in range(5, 16)]
    assert torch.allclose(torch.cat(parts, dim=1), model(idx)[0], atol=1e-5)


def test_rmsnorm_matches_the_formula() -> None:
    torch.manual_seed(0)
    norm = RMSNorm(8)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 5, 8) * 4 + 2
    expected = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + norm.eps) * norm.weight
    assert torch.allclose(norm(x), expected, atol=1e-6)
    assert not hasattr(norm, "bias")
    unit = RMSNorm(8)(x)
    assert torch.allclose(unit.pow(2).mean(-1), torch.ones(3, 5), atol=1e-4)  # unit RMS, mean not removed


def test_swiglu_shape_and_parameter_count() -> None:
    n_embd = 48
    ffn = SwiGLUFeedForward(n_embd, 0.0)
    hidden = swiglu_hidden(n_embd)
    assert hidden == 128 and hidden % 8 == 0 and abs(hidden - 2 * 4 * n_embd / 3) < 8
    assert ffn(torch.randn(2, 5, n_embd)).shape == (2, 5, n_embd)
    n_params = sum(p.numel() for p in ffn.parameters())
    assert n_params == 3 * n_embd * hidden
    relu_params = sum(p.numel() for p in FeedForward(n_embd, 0.0).parameters())
    assert abs(n_params - relu_params) / relu_params < 0.03  # the 2/3 keeps the size


def test_gelu_replaces_relu() -> None:
    model = build_model(small(activation="gelu"))
    assert isinstance(model.blocks[0].ffwd.net[1], torch.nn.GELU)


def test_tied_weights_share_one_tensor_through_a_checkpoint(tmp_path: Path) -> None:
    config = RunConfig(model=small(tie_weights=True))
    torch.manual_seed(0)
    model = build_model(config.model)
    assert model.lm_head.weight is model.token_embedding_table.weight
    untied = build_model(small())
    assert untied.num_parameters() - model.num_parameters() == 23 * 16
    tokenizer = CharTokenizer([chr(ord("a") + i) for i in range(23)])
    write_run_files(tmp_path, config, tokenizer, {"dataset": "none"})
    write_checkpoint(tmp_path, 1, model.state_dict())
    loaded = load_run(tmp_path).model
    assert loaded.lm_head.weight is loaded.token_embedding_table.weight
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)
    idx = torch.randint(0, 23, (1, 8))
    assert torch.equal(loaded(idx)[0], model.eval()(idx)[0])


def test_no_head_bias_has_no_bias_parameter_and_samples_the_same_with_and_without_cache(tmp_path: Path) -> None:
    config = RunConfig(model=small(position="rope", norm="rms", activation="swiglu", head_bias=False))
    torch.manual_seed(0)
    model = build_model(config.model)
    assert model.lm_head.bias is None and "lm_head.bias" not in model.state_dict()
    assert build_model(small()).num_parameters() - build_model(small(head_bias=False)).num_parameters() == 23
    prompt = torch.randint(0, 23, (2, 4))
    assert torch.equal(generate(model, prompt, 12, top_k=1, use_cache=True),
                       generate(model, prompt, 12, top_k=1, use_cache=False))
    # through a checkpoint: config.json says head_bias false, the weights have no lm_head.bias
    tokenizer = CharTokenizer([chr(ord("a") + i) for i in range(23)])
    write_run_files(tmp_path, config, tokenizer, {"dataset": "none"})
    write_checkpoint(tmp_path, 1, model.state_dict())
    loaded = load_run(tmp_path).model
    assert loaded.lm_head.bias is None
    idx = torch.randint(0, 23, (1, 8))
    assert torch.equal(loaded(idx)[0], model.eval()(idx)[0])
    # finetuning with new tokens (quill sft) grows the head without a bias to grow
    grown = adapt_vocabulary(model.state_dict(), tokenizer, CharTokenizer(tokenizer.chars, ["<|user|>"]))
    assert grown["lm_head.weight"].shape == (24, 16) and "lm_head.bias" not in grown


def test_a_checkpoint_from_before_head_bias_loads_with_its_bias(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(small())
    with torch.no_grad():
        model.lm_head.bias.normal_()
    write_run_files(tmp_path, RunConfig(model=small()), CharTokenizer([chr(ord("a") + i) for i in range(23)]), {})
    write_checkpoint(tmp_path, 1, model.state_dict())
    data = json.loads((tmp_path / "config.json").read_text())
    del data["model"]["head_bias"]  # config.json as written before the field existed
    (tmp_path / "config.json").write_text(json.dumps(data))
    loaded = load_run(tmp_path)
    assert loaded.config.model.head_bias and torch.equal(loaded.model.lm_head.bias, model.lm_head.bias)


def test_qk_norm_normalizes_queries_and_keys() -> None:
    torch.manual_seed(0)
    model = build_model(small(qk_norm=True, attention="classic"))
    head = model.blocks[0].sa.heads[0]
    seen = {}
    head.q_norm.register_forward_hook(lambda m, i, o: seen.setdefault("q", o))
    head.k_norm.register_forward_hook(lambda m, i, o: seen.setdefault("k", o))
    model(torch.randint(0, 23, (2, 16)))
    for out in seen.values():  # gains start at 1: each query/key vector has unit RMS
        assert torch.allclose(out.pow(2).mean(-1), torch.ones(out.shape[:-1]), atol=1e-3)


def test_config_json_round_trip_and_old_files_load(tmp_path: Path) -> None:
    config = RunConfig(model=small(**FLAGS["all"]))
    tokenizer = CharTokenizer([chr(ord("a") + i) for i in range(23)])
    write_run_files(tmp_path, config, tokenizer, {})
    assert read_config(tmp_path).model == config.model
    data = json.loads((tmp_path / "config.json").read_text())
    for name in ("position", "activation", "tie_weights", "qk_norm", "context_len"):
        del data["model"][name]  # a config.json written before these fields existed
    data["model"]["norm"] = "torch"
    (tmp_path / "config.json").write_text(json.dumps(data))
    old = read_config(tmp_path).model
    assert (old.position, old.activation, old.tie_weights, old.qk_norm) == ("learned", "relu", False, False)


@pytest.mark.parametrize("field, value", [("position", "alibi"), ("activation", "tanh"), ("norm", "batch")])
def test_unknown_choices_are_one_line_errors(field: str, value: str) -> None:
    with pytest.raises(ConfigError, match=field):
        small(**{field: value}).validate()
