"""quill run -> Hugging Face ``transformers`` folder (``quill export RUN --format hf --out DIR``).

Each model goes to the standard architecture that computes *exactly* the same function:

- the lecture's GPT (learned positions, LayerNorm, ReLU/GELU, untied or tied head) -> GPT-2
  (``GPT2LMHeadModel``; activation_function "relu", "gelu" or "gelu_new"). GPT-2's Conv1D
  stores weights as (in, out), the transpose of ``nn.Linear``. quill's lm_head has a bias
  (unless trained with --no-head-bias) and GPT-2's has none; ``fold_head_bias`` moves it into
  ln_f (see there).
- RoPE + RMSNorm + SwiGLU -> Llama (``LlamaForCausalLM``). quill rotates interleaved pairs
  (2i, 2i+1); Llama rotates half-split pairs (i, i + hs/2), so the rows of every head's query
  and key projection are permuted (q.k is unchanged when q and k get the same permutation).
  RMSNorm: weight * x / sqrt(mean(x^2) + eps) in both, eps 1e-6. quill's attention output
  projection has a bias, so attention_bias is on (q/k/v get zero biases without qkv_bias).
  Llama's head has no bias and RMSNorm no shift to fold one into: such a model is trained
  with --no-head-bias (a head bias is refused unless it is exactly zero).

Anything else (a zoo model, QK-norm, a mix such as RoPE with LayerNorm) is refused with one
line naming the feature, rather than exported approximately. Every export is checked before
it is kept: the folder is loaded back with transformers and its logits compared with quill's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from quillgpt.chat import CHAT_TOKENS, has_chat_format
from quillgpt.checkpoint import LoadedRun
from quillgpt.config import ModelConfig
from quillgpt.errors import ConfigError
from quillgpt.export import require
from quillgpt.models.gpt import GPT, swiglu_hidden
from quillgpt.tokenizers import BPETokenizer, CharTokenizer, Tokenizer

# Max |logit difference| an export may have against quill in fp32 (the bar).
LOGIT_TOLERANCE = 1e-4
GPT2_ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new"}
ROPE_THETA = 10000.0  # attention.RotaryEmbedding's base
RMS_EPS = 1e-6  # attention.RMSNorm's eps
LAYERNORM_EPS = 1e-5  # nn.LayerNorm's and LayerNorm1d's eps

# quill's chat format (chat.py) as a Jinja template for tokenizer.apply_chat_template:
# <|role|>content<|end|> per message, then <|assistant|> to ask for a reply. No BOS token.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('quill chat roles are system, user and assistant') }}"
    "{%- endif -%}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' }}{%- endif -%}"
)


def target_architecture(config: ModelConfig) -> str:
    """"gpt2" or "llama", or a one-line ConfigError naming what no standard architecture has."""
    if config.arch != "gpt":
        raise ConfigError(f"arch {config.arch}: no standard Hugging Face architecture is this model; "
                          "only GPTs export (GPT-2 or Llama layout)")
    if config.qk_norm:
        raise ConfigError("qk_norm: neither GPT-2 nor Llama normalizes queries and keys (and Qwen3's shares "
                          "one gain across heads, quill has one per head); train without --qk-norm to export")
    if config.position == "learned" and config.norm in ("torch", "scratch") and config.activation in GPT2_ACTIVATIONS:
        return "gpt2"
    if config.position == "rope" and config.norm == "rms" and config.activation == "swiglu":
        return "llama"
    raise ConfigError(f"--position {config.position} --norm {config.norm} --activation {config.activation}: no "
                      "standard architecture has this combination (GPT-2: learned + LayerNorm + relu/gelu; "
                      "Llama: rope + rms + swiglu)")


# ---------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------


def _heads(state: dict[str, torch.Tensor], layer: int, n_head: int, part: str, what: str = "weight"
           ) -> torch.Tensor | None:
    """One projection of all heads stacked: head h owns rows h*hs:(h+1)*hs (as the fused path)."""
    names = [f"blocks.{layer}.sa.heads.{h}.{part}.{what}" for h in range(n_head)]
    if names[0] not in state:
        return None
    return torch.cat([state[name] for name in names])


def _qkv_bias(state: dict[str, torch.Tensor], layer: int, n_head: int, part: str, n_embd: int) -> torch.Tensor:
    bias = _heads(state, layer, n_head, part, "bias")
    return torch.zeros(n_embd) if bias is None else bias  # the lecture's heads have none: zero is exact


@dataclass
class HeadFold:
    """lm_head without a bias: new head matrix and final-LayerNorm weight/bias, and how."""

    head: torch.Tensor
    ln_weight: torch.Tensor
    ln_bias: torch.Tensor
    route: str  # "none", "least-squares" or "mean-direction"


def fold_head_bias(head: torch.Tensor, bias: torch.Tensor | None, ln_weight: torch.Tensor,
                   ln_bias: torch.Tensor) -> HeadFold:
    """Rewrite logits = W (g * n + beta) + b as W' (g' * n + beta'), exactly, where n = LayerNorm's
    normalized input (mean 0 over features).

    1. b = W c for some c (least squares, residual ~0; always so when W has full row rank,
       vocab <= n_embd): beta' = beta + c, W and g unchanged.
    2. Otherwise use that n has mean 0: W diag(g) n = (W diag(g) + u 1^T) n for any u. With
       g' = 1 and beta' = 1 (any beta' with 1^T beta' != 0 works), W' = W diag(g) + u 1^T and
       u = (W beta + b - W g) / n_embd make W' beta' = W beta + b. W' is then not the embedding
       matrix any more, so a tied model is exported untied.

    ``bias`` None (a model trained with --no-head-bias) has nothing to fold.
    """
    if bias is None or not bias.abs().max().item():
        return HeadFold(head, ln_weight, ln_bias, "none")
    w, b = head.double(), bias.double()
    c = torch.linalg.lstsq(w, b.unsqueeze(1), driver="gelsd").solution.squeeze(1)
    if (w @ c - b).abs().max().item() <= 1e-6 * max(1.0, b.abs().max().item()):
        return HeadFold(head, ln_weight, (ln_bias.double() + c).float(), "least-squares")
    g, beta = ln_weight.double(), ln_bias.double()
    n_embd = head.shape[1]
    u = (w @ beta + b - w @ g) / n_embd
    new_head = w * g + u.unsqueeze(1)  # W diag(g) + u 1^T
    return HeadFold(new_head.float(), torch.ones_like(ln_weight), torch.ones_like(ln_bias), "mean-direction")


def gpt2_weights(model: GPT) -> tuple[dict[str, torch.Tensor], bool, str]:
    """GPT-2 state dict (``GPT2LMHeadModel`` names), whether it stays tied, and the bias-fold route."""
    c = model.config
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {"transformer.wte.weight": state["token_embedding_table.weight"],
                                    "transformer.wpe.weight": state["position_embedding_table.weight"]}
    for i in range(c.n_layer):
        p, h = f"blocks.{i}.", f"transformer.h.{i}."
        for ours, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
            out[h + theirs + ".weight"] = state[p + ours + ".weight"]
            out[h + theirs + ".bias"] = state[p + ours + ".bias"]
        qkv = torch.cat([_heads(state, i, c.n_head, part) for part in ("query", "key", "value")])  # (3C, C)
        out[h + "attn.c_attn.weight"] = qkv.t()  # Conv1D: (in, out)
        out[h + "attn.c_attn.bias"] = torch.cat([_qkv_bias(state, i, c.n_head, part, c.n_embd)
                                                 for part in ("query", "key", "value")])
        out[h + "attn.c_proj.weight"] = state[p + "sa.proj.weight"].t()
        out[h + "attn.c_proj.bias"] = state[p + "sa.proj.bias"]
        out[h + "mlp.c_fc.weight"] = state[p + "ffwd.net.0.weight"].t()
        out[h + "mlp.c_fc.bias"] = state[p + "ffwd.net.0.bias"]
        out[h + "mlp.c_proj.weight"] = state[p + "ffwd.net.2.weight"].t()
        out[h + "mlp.c_proj.bias"] = state[p + "ffwd.net.2.bias"]
    fold = fold_head_bias(state["lm_head.weight"], state.get("lm_head.bias"), state["ln_f.weight"],
                          state["ln_f.bias"])
    out["transformer.ln_f.weight"], out["transformer.ln_f.bias"] = fold.ln_weight, fold.ln_bias
    tied = c.tie_weights and fold.route != "mean-direction"
    out["lm_head.weight"] = out["transformer.wte.weight"] if tied else fold.head
    return {k: v.contiguous() for k, v in out.items()}, tied, fold.route


def rope_permutation(head_size: int) -> torch.Tensor:
    """Row order that turns interleaved RoPE pairs (2i, 2i+1) into half-split ones (i, i + hs/2)."""
    return torch.cat([torch.arange(0, head_size, 2), torch.arange(1, head_size, 2)])


def _permute_heads(rows: torch.Tensor, n_head: int) -> torch.Tensor:
    """Apply ``rope_permutation`` within each head's block of rows (weights (C, C) or biases (C,))."""
    hs = rows.shape[0] // n_head
    per_head = rows.reshape(n_head, hs, *rows.shape[1:])
    return per_head[:, rope_permutation(hs)].reshape(rows.shape)


def check_no_head_bias(state: dict[str, torch.Tensor], target: str) -> None:
    """Refuse an lm_head bias for a Llama-style target: RMSNorm has no additive term and the head no
    bias, so there is no exact place for it. A bias that is exactly zero is dropped (it adds nothing)."""
    bias = state.get("lm_head.bias")
    if bias is not None and bias.abs().max().item():
        raise ConfigError(f"lm_head bias: {target} has no output bias and RMSNorm no shift to fold it into (max |b| "
                          f"{bias.abs().max().item():.3g}); train with --no-head-bias to export this architecture")


def llama_weights(model: GPT) -> tuple[dict[str, torch.Tensor], bool]:
    """Llama state dict (``LlamaForCausalLM`` names) and whether it stays tied."""
    c = model.config
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    check_no_head_bias(state, "Llama")
    out: dict[str, torch.Tensor] = {"model.embed_tokens.weight": state["token_embedding_table.weight"],
                                    "model.norm.weight": state["ln_f.weight"]}
    for i in range(c.n_layer):
        p, h = f"blocks.{i}.", f"model.layers.{i}."
        out[h + "input_layernorm.weight"] = state[p + "ln1.weight"]
        out[h + "post_attention_layernorm.weight"] = state[p + "ln2.weight"]
        for part, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
            weight, bias = _heads(state, i, c.n_head, part), _qkv_bias(state, i, c.n_head, part, c.n_embd)
            if part != "value":  # only q and k are rotated
                weight, bias = _permute_heads(weight, c.n_head), _permute_heads(bias, c.n_head)
            out[h + f"self_attn.{theirs}.weight"], out[h + f"self_attn.{theirs}.bias"] = weight, bias
        out[h + "self_attn.o_proj.weight"] = state[p + "sa.proj.weight"]
        out[h + "self_attn.o_proj.bias"] = state[p + "sa.proj.bias"]
        out[h + "mlp.gate_proj.weight"] = state[p + "ffwd.gate.weight"]
        out[h + "mlp.up_proj.weight"] = state[p + "ffwd.up.weight"]
        out[h + "mlp.down_proj.weight"] = state[p + "ffwd.proj.weight"]
    out["lm_head.weight"] = out["model.embed_tokens.weight"] if c.tie_weights else state["lm_head.weight"]
    return {k: v.contiguous() for k, v in out.items()}, c.tie_weights


def special_token_roles(tokenizer: Tokenizer, chat: bool) -> dict[str, str]:
    """eos/pad names for the tokenizer config: a chat model stops at <|end|>, a BPE at <|endoftext|>."""
    specials = tokenizer.special_ids
    roles: dict[str, str] = {}
    if chat and has_chat_format(tokenizer):
        roles["eos_token"] = CHAT_TOKENS[-1]
    elif "<|endoftext|>" in specials:
        roles["eos_token"] = "<|endoftext|>"
    if "<|pad|>" in specials:
        roles["pad_token"] = "<|pad|>"
    return roles


def hf_config(model: GPT, arch: str, tied: bool, tokenizer: Tokenizer, chat: bool) -> Any:
    transformers = require("transformers")
    c = model.config
    ids = {role: tokenizer.special_ids[name] for role, name in special_token_roles(tokenizer, chat).items()}
    common = {"vocab_size": c.vocab_size, "tie_word_embeddings": tied, "bos_token_id": None,
              "eos_token_id": ids.get("eos_token"), "pad_token_id": ids.get("pad_token")}
    if arch == "gpt2":
        return transformers.GPT2Config(
            n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head, n_inner=4 * c.n_embd,
            activation_function=GPT2_ACTIVATIONS[c.activation], layer_norm_epsilon=LAYERNORM_EPS,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, architectures=["GPT2LMHeadModel"], **common)
    return transformers.LlamaConfig(
        hidden_size=c.n_embd, intermediate_size=swiglu_hidden(c.n_embd), num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head, num_key_value_heads=c.n_head, head_dim=c.head_size, hidden_act="silu",
        max_position_embeddings=c.block_size, rms_norm_eps=RMS_EPS, attention_bias=True, mlp_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA}, architectures=["LlamaForCausalLM"],
        **common)


# ---------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------


def char_tokenizer_json(tokenizer: CharTokenizer) -> dict[str, Any]:
    """A ``tokenizers`` JSON that splits text into single characters with quill's ids.

    A BPE model with the characters as its vocabulary and no merges does exactly that; the
    Fuse decoder joins tokens without spaces. Special tokens come after the characters.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models

    hf = HFTokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(tokenizer.chars)}, merges=[]))
    hf.decoder = decoders.Fuse()
    hf.add_special_tokens(list(tokenizer.specials))
    data = json.loads(hf.to_str())
    for name, token_id in tokenizer.special_ids.items():  # check: the library numbers them after the chars
        if hf.token_to_id(name) != token_id:
            raise ConfigError(f"special token {name} would get id {hf.token_to_id(name)}, quill has {token_id}")
    return data


def tokenizer_files(tokenizer: Tokenizer, block_size: int, chat: bool) -> dict[str, Any]:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json for PreTrainedTokenizerFast."""
    if isinstance(tokenizer, BPETokenizer):
        tokenizer_json = tokenizer.to_dict()["hf_tokenizer"]
    else:
        tokenizer_json = char_tokenizer_json(tokenizer)
    roles = special_token_roles(tokenizer, chat)
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": block_size,
        "clean_up_tokenization_spaces": False, "add_bos_token": False, "add_eos_token": False, **roles,
    }
    if chat:
        config["chat_template"] = CHAT_TEMPLATE
    return {"tokenizer.json": tokenizer_json, "tokenizer_config.json": config, "special_tokens_map.json": roles}


# ---------------------------------------------------------------------------------------
# The folder
# ---------------------------------------------------------------------------------------


@dataclass
class HFExport:
    arch: str  # "gpt2" or "llama"
    tied: bool
    fold: str  # how the lm_head bias was handled
    max_logit_diff: float


def build_hf_model(model: GPT, chat: bool, tokenizer: Tokenizer) -> tuple[Any, str, bool, str]:
    """The transformers model with quill's weights (strict load: every weight must map)."""
    transformers = require("transformers")
    arch = target_architecture(model.config)
    if arch == "gpt2":
        weights, tied, fold = gpt2_weights(model)
        cls = transformers.GPT2LMHeadModel
    else:
        (weights, tied), fold = llama_weights(model), "none"
        cls = transformers.LlamaForCausalLM
    config = hf_config(model, arch, tied, tokenizer, chat)
    hf_model = cls(config).float().eval()
    if not tied:
        weights = {k: v.clone() if k == "lm_head.weight" else v for k, v in weights.items()}
    missing, unexpected = hf_model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:  # a bug in the mapping, not bad input
        raise RuntimeError(f"weight mapping incomplete: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if tied:
        hf_model.tie_weights()
    return hf_model, arch, tied, fold


def logit_difference(model: GPT, hf_model: Any, seed: int = 0, windows: int = 2) -> float:
    """Max |quill logits - transformers logits| on random token windows of full context length.

    In bounded memory: one window at a time, and the logits (context x vocabulary per window:
    400 MB for GPT-2's 1024 x 50257 in fp32, twice) compared a slice at a time from the final
    hidden states (context x n_embd), ``LOGIT_SLICE`` numbers at most per slice.
    """
    c = model.config
    generator = torch.Generator().manual_seed(seed)
    model = model.float().eval()
    body, head = hf_model.base_model, hf_model.get_output_embeddings()  # logits = head(body(ids)), both layouts
    worst = 0.0
    for _ in range(windows):
        idx = torch.randint(0, c.vocab_size, (1, c.block_size), generator=generator)
        with torch.no_grad():
            ours_h, theirs_h = model.features(idx)[0], body(input_ids=idx).last_hidden_state[0]  # (T, n_embd)
            for rows, vocab in _logit_slices(c.block_size, c.vocab_size):
                ours = F.linear(ours_h[rows], model.lm_head.weight[vocab], _part(model.lm_head.bias, vocab))
                theirs = F.linear(theirs_h[rows], head.weight[vocab], _part(head.bias, vocab))
                diff = (ours - theirs).abs().max().item()
                if not math.isfinite(diff):
                    return diff
                worst = max(worst, diff)
    return worst


LOGIT_SLICE = 1 << 22  # logits compared at once: 16 MiB of fp32 per side


def _logit_slices(positions: int, vocab: int) -> Iterator[tuple[slice, slice]]:
    """(positions, vocabulary) slices covering every logit, at most LOGIT_SLICE logits each."""
    width = min(vocab, LOGIT_SLICE)
    height = max(1, LOGIT_SLICE // width)
    for v in range(0, vocab, width):
        for t in range(0, positions, height):
            yield slice(t, t + height), slice(v, v + width)


def _part(bias: torch.Tensor | None, vocab: slice) -> torch.Tensor | None:
    return None if bias is None else bias[vocab]


def export_hf(run: LoadedRun, folder: Path) -> HFExport:
    """Write the transformers folder into ``folder`` (an empty staging dir) and verify it."""
    transformers = require("transformers")
    chat = run.config.chat.enabled
    model = run.model.float().eval()
    if not isinstance(model, GPT):
        target_architecture(run.config.model)  # raises, naming the arch
    hf_model, arch, tied, fold = build_hf_model(model, chat, run.tokenizer)
    hf_model.save_pretrained(folder, safe_serialization=True)
    for name, data in tokenizer_files(run.tokenizer, run.config.model.block_size, chat).items():
        (folder / name).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    # Load what is on disk (not the in-memory model): that is what a user gets.
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    diff = logit_difference(model, reloaded)
    if not math.isfinite(diff) or diff > LOGIT_TOLERANCE:
        raise ConfigError(f"the exported {arch} model's logits differ from quill's by {diff:.3g} (> "
                          f"{LOGIT_TOLERANCE}); nothing was written: the weights may be too large for fp32 folding")
    return HFExport(arch, tied, fold, diff)
