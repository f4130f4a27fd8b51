"""Supervised finetuning: chat data as batches, the assistant-only loss, vocabulary growth, the commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from quillgpt.chat import CHAT_TOKENS, has_chat_format
from quillgpt.checkpoint import load_run
from quillgpt.cli import main
from quillgpt.config import ChatConfig, ModelConfig
from quillgpt.errors import ConfigError, DataError
from quillgpt.models import build_model
from quillgpt.models.base import language_model_loss
from quillgpt.posttrain.sft import ChatDataset
from quillgpt.pretrained import adapt_vocabulary, extends
from quillgpt.tasks.arithmetic import IGNORE, Problem
from quillgpt.tasks.questions import (
    TEMPLATES,
    Question,
    alphabet,
    exact_match,
    final_answer,
    questions,
    shows_work,
    well_formed,
    work_style,
    wrong_answer,
)
from quillgpt.tokenizers import CharTokenizer

TINY = ["--batch-size", "16", "--eval-iters", "2", "--no-progress"]


def test_questions_are_worded_many_ways_and_split_like_the_problems():
    held_out = questions("+-*", 3, 300, 0, "test")
    assert {q.problem.split for q in held_out} == {"test"}
    assert len({q.template for q in held_out}) == len(TEMPLATES["+"])
    assert questions("+-*", 3, 300, 0, "test") == held_out
    assert set("".join(q.text + q.answer for q in held_out)) <= set(alphabet())
    q = Question(held_out[0].problem.__class__(17, "+", 26), 0)
    assert (q.text, q.answer) == ("What is 17 plus 26?", "43")


def test_wrong_answers_are_well_formed_and_wrong():
    import random

    rng = random.Random(0)
    for q in questions("+-", 3, 200, 1, "train"):
        guess = wrong_answer(q, rng)
        assert well_formed(guess) and guess != q.answer


def test_a_worked_answer_shows_the_digits_from_the_units_up_and_is_graded_on_its_number():
    q = Question(Problem(178, "+", 46), 0)
    assert q.worked_answer == "units first 422, so 224" and q.demonstration(False) == "224"
    assert Question(Problem(8, "-", 120), 2).worked_answer == "units first 211, so -112"
    assert well_formed(q.worked_answer) and shows_work(q.worked_answer) and not shows_work("224")
    assert final_answer(q.worked_answer) == "224" and exact_match(q, q.worked_answer) == 1.0
    assert exact_match(q, "units first 522, so 225") == 0.0 and exact_match(q, "units first 999, so 224") == 1.0
    for bad in ("units first 422, so", "units first 422 so 224", "224 units", "so 224"):
        assert not well_formed(bad) and exact_match(q, bad) == 0.0
    assert set(q.worked_answer) <= set(alphabet())


def test_column_addition_is_written_out_units_first_with_its_carries():
    q = Question(Problem(943, "+", 365), 0)
    assert q.demonstration(True, "columns") == "3+5=8 4+6=10 9+3+1=13: 1308"
    assert Question(Problem(47, "+", 404), 0).demonstration(True, "columns") == "7+4=11 4+0+1=5 0+4=4: 451"
    assert Question(Problem(8, "-", 120), 0).demonstration(True, "columns") == "units first 211, so -112"  # + only
    reply = q.demonstration(True, "columns")
    assert well_formed(reply) and shows_work(reply) and final_answer(reply) == "1308" and exact_match(q, reply) == 1.0
    assert (work_style(reply), work_style(q.worked_answer), work_style("1308"), work_style("3+5=8 1308")) == (
        "columns", "units", None, None)
    assert exact_match(q, "3+5=8: 1309") == 0.0 and not well_formed("3+5=8 1308") and not well_formed("3+5=8:1308")
    data = ChatDataset(ChatConfig(chat_data="arithmetic", chat_ops="+", chat_val=50, chat_worked=1.0,
                                  chat_work_style="columns"))
    data.check_block_size(64)  # the longest (999 + 999 in the longest wording) fits the cpu-small context
    with pytest.raises(ConfigError, match="chat_work_style"):
        ChatConfig(chat_data="arithmetic", chat_work_style="long").validate()


@pytest.mark.parametrize("share", [0.0, 0.25, 1.0])
def test_a_share_of_the_demonstrations_shows_its_work(share: float):
    data = ChatDataset(ChatConfig(chat_data="arithmetic", chat_ops="+", chat_val=200, chat_worked=share))
    assistant, end = data.tokenizer.special_ids["<|assistant|>"], data.tokenizer.special_ids["<|end|>"]

    def replies(rows: list[list[int]]) -> list[str]:
        rows = [r[r.index(assistant) + 1:] + [end] for r in rows]  # inputs lack their last token
        return [data.tokenizer.decode(r[: r.index(end)]) for r in rows]

    x, _ = data.batches("train", 400, 64, seed=0).next()
    drawn = replies(x.tolist()) + replies([e.ids for e in data.val_pool])
    worked = sum(map(shows_work, drawn)) / len(drawn)
    assert all(well_formed(r) for r in drawn)
    assert abs(worked - share) < 0.06
    data.check_block_size(data.longest_conversation())
    with pytest.raises(ConfigError, match="chat_worked"):
        ChatConfig(chat_data="arithmetic", chat_worked=1.5).validate()


def test_only_the_assistants_tokens_get_a_gradient():
    data = ChatDataset(ChatConfig(chat_data="arithmetic", chat_val=20, chat_worked=0.5))
    x, y = data.batches("train", 8, 64, seed=0).next()
    end = data.tokenizer.special_ids["<|end|>"]
    assistant = data.tokenizer.special_ids["<|assistant|>"]
    for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):
        start = row_x.index(assistant)
        reply = (row_x[start + 1:] + [end])[: (row_x[start + 1:] + [end]).index(end)]  # up to <|end|> or padding
        assert well_formed(data.tokenizer.decode(reply))
        # Exactly the reply and its <|end|> are targets: not the question, the role tokens or the padding.
        assert row_y == [IGNORE] * start + reply + [end] + [IGNORE] * (len(row_y) - start - len(reply) - 1)
    model = build_model(ModelConfig(vocab_size=data.tokenizer.vocab_size, block_size=64, n_layer=1, n_head=2,
                                    n_embd=32, dropout=0.0))
    logits = model(x)[0]
    logits.retain_grad()
    language_model_loss(logits, y).backward()
    per_position = logits.grad.abs().sum(-1)
    assert (per_position[y == IGNORE] == 0).all()
    assert (per_position[y != IGNORE] > 0).all()


def test_a_conversation_trains_exactly_each_assistant_reply_and_its_end():
    from quillgpt.chat import Message, encode_conversation
    from quillgpt.posttrain.sft import conversation_rows

    tokenizer = ChatDataset(ChatConfig(chat_data="arithmetic")).tokenizer
    special = tokenizer.special_ids
    turns = [("system", "Add."), ("user", "What is 1 plus 2?"), ("assistant", "3"), ("user", "What is 20 plus 2?"),
             ("assistant", "units first 22, so 22")]
    ids, trained = [], []
    for role, text in turns:  # by hand: a role token, the text, <|end|>; the text and <|end|> of a reply trained
        part = [special[f"<|{role}|>"], *tokenizer.encode(text), special["<|end|>"]]
        ids += part
        trained += [None] + part[1:] if role == "assistant" else [None] * len(part)
    short = [Message(role, text) for role, text in turns[:3]]
    x, y = conversation_rows([encode_conversation(tokenizer, [Message(r, t) for r, t in turns]),
                              encode_conversation(tokenizer, short)], 96, special["<|end|>"])
    assert x[0].tolist() == ids[:-1]
    assert y[0].tolist() == [IGNORE if t is None else t for t in trained[1:]]
    n = len(encode_conversation(tokenizer, short).ids) - 1  # the shorter row: padded, the padding ignored
    assert y[1].tolist() == [IGNORE if t is None else t for t in trained[1:n + 1]] + [IGNORE] * (len(ids) - 1 - n)


def test_jsonl_conversations_split_and_block_size_message(tmp_path: Path):
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"say {i}", "response": f"{i}!"}) + "\n" for i in range(30)))
    data = ChatDataset(ChatConfig(chat_data=str(path), chat_val=100))
    assert len(data.val_pool) == 3 and len(data.train_pool) == 27  # at most a tenth held out
    assert has_chat_format(data.tokenizer)
    need = data.longest_conversation()
    data.check_block_size(need)
    with pytest.raises(DataError, match=f"--block-size {need}"):
        data.check_block_size(need - 1)
    with pytest.raises(ConfigError, match="chat_ops"):
        ChatConfig(chat_data="arithmetic", chat_ops="+/").validate()


def test_a_char_model_grows_its_vocabulary_and_keeps_its_rows():
    base = CharTokenizer(list("abc "))
    grown = ChatDataset(ChatConfig(chat_data="arithmetic"), base=base).tokenizer
    assert extends(grown, base) and grown.chars[:4] == base.chars and grown.specials == list(CHAT_TOKENS)
    model = build_model(ModelConfig(vocab_size=4, block_size=8, n_layer=1, n_head=1, n_embd=8))
    state = adapt_vocabulary(model.state_dict(), base, grown)
    assert state["token_embedding_table.weight"].shape[0] == grown.vocab_size
    for old_id, char in enumerate(base.chars):
        new_id = grown.stoi[char]
        assert torch.equal(state["token_embedding_table.weight"][new_id], model.token_embedding_table.weight[old_id])
        assert torch.equal(state["lm_head.bias"][new_id], model.lm_head.bias[old_id])
    assert not extends(CharTokenizer(list("xyz")), base)


@pytest.mark.slow
def test_sft_chat_and_resume_from_the_command_line(tmp_path: Path, shakespeare_path: Path, capsys, monkeypatch):
    base, sft = tmp_path / "base", tmp_path / "sft"
    assert main(["train", "--preset", "tiny", "--block-size", "48", "--max-iters", "4", "--out-dir", str(base),
                 "--data", str(shakespeare_path), "--no-progress"]) == 0
    assert main(["sft", str(base), "--out-dir", str(sft), "--max-iters", "6", "--eval-interval", "3",
                 "--chat-digits", "2", "--chat-val", "20", "--stop-at", "3", *TINY]) == 0
    assert main(["train", "--resume", str(sft), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "held-out replies (20 questions" in out and "quill chat" in out
    run = load_run(sft)
    assert run.step == 6 and has_chat_format(run.tokenizer)
    assert run.tokenizer.chars[:3] == load_run(base).tokenizer.chars[:3]
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO("What is 2 plus 2?\n/reset\n/quit\n"))
    assert main(["chat", str(sft), "--seed", "0", "--max-new-tokens", "5"]) == 0
    assert "(conversation forgotten)" in capsys.readouterr().out
    assert main(["chat", str(base)]) == 2  # no chat tokens: one line, says how to get them
    assert "quill sft" in capsys.readouterr().err
