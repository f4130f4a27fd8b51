"""models/seq2seq.py and lessons/seq2seq.py: who sees what, and a tiny task that trains."""

from pathlib import Path

import pytest
import torch

from quillgpt.cli import main
from quillgpt.errors import ConfigError
from quillgpt.lessons.seq2seq import BOS, EOS, PAD, TASKS, Seq2SeqTask, exact_match, held_out, train
from quillgpt.models.seq2seq import CrossAttention, Seq2SeqConfig, Seq2SeqTransformer


def model() -> Seq2SeqTransformer:
    torch.manual_seed(0)
    return Seq2SeqTransformer(Seq2SeqConfig(vocab_size=10, block_size=8, n_layer=2, n_head=2, n_embd=16)).eval()


def test_encoder_position_sees_later_tokens() -> None:
    m = model()
    src = torch.tensor([[3, 4, 5, 6, 7, 8]])
    later = src.clone()
    later[0, 5] = 9
    with torch.no_grad():
        a, _ = m.encode(src)
        b, _ = m.encode(later)
    assert (a[0, 0] - b[0, 0]).abs().max() > 1e-4  # position 0 changed when position 5 did: no causal mask


def test_decoder_position_does_not_see_later_targets_but_sees_the_whole_source() -> None:
    m = model()
    src = torch.tensor([[3, 4, 5, 6]])
    tgt = torch.tensor([[BOS, 5, 6, 7, 8]])
    later = tgt.clone()
    later[0, 4] = 3
    with torch.no_grad():
        memory, mask = m.encode(src)
        a = m.decode(tgt, memory, mask)
        b = m.decode(later, memory, mask)
        assert torch.allclose(a[0, :4], b[0, :4], atol=1e-6)  # causal: positions 0..3 are unchanged
        assert (a[0, 4] - b[0, 4]).abs().max() > 1e-4
        # ... and the decoder's self-attention alone is causal too
        block = m.decoder[0]
        x = torch.randn(1, 5, 16)
        y = x.clone()
        y[0, 4] += 1.0
        assert torch.allclose(block.sa(x)[0, :4], block.sa(y)[0, :4], atol=1e-6)
        # the first target position already depends on the last source token, through cross-attention
        other = src.clone()
        other[0, 3] = 9
        memory2, mask2 = m.encode(other)
        assert (m.decode(tgt, memory2, mask2)[0, 0] - a[0, 0]).abs().max() > 1e-4


def test_cross_attention_shape_memory_dependence_and_key_mask() -> None:
    torch.manual_seed(0)
    ca = CrossAttention(16, 4, 0.0)
    x, memory = torch.randn(2, 3, 16), torch.randn(2, 7, 16)
    out = ca(x, memory)
    assert out.shape == (2, 3, 16)  # one output per query, whatever the source length
    changed = memory.clone()
    changed[:, 6] += 1.0
    assert (ca(x, changed) - out).abs().max() > 1e-4
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[:, 6] = False  # a padded key is invisible
    assert torch.allclose(ca(x, memory, mask), ca(x, changed, mask), atol=1e-6)
    with pytest.raises(ValueError):
        ca(x)


def test_padding_does_not_change_the_encoding_of_real_tokens() -> None:
    m = model()
    with torch.no_grad():
        short, _ = m.encode(torch.tensor([[3, 4, 5]]))
        padded, mask = m.encode(torch.tensor([[3, 4, 5, PAD, PAD]]))
    assert mask.tolist() == [[True, True, True, False, False]]
    assert torch.allclose(short[0], padded[0, :3], atol=1e-5)


def test_greedy_decode_fills_the_whole_target_context() -> None:
    """A target of block_size - 1 letters plus EOS needs block_size decoding steps (BOS is the first input)."""
    m = model()  # block_size 8
    out = m.greedy_decode(torch.tensor([[3, 4, 5]]), BOS, eos_id=-1, max_len=20)  # -1: never finishes
    assert out.shape == (1, 8)
    assert m.greedy_decode(torch.tensor([[3, 4, 5]]), BOS, eos_id=-1, max_len=5).shape == (1, 5)


def test_task_batches() -> None:
    task = Seq2SeqTask("reverse", 1, 4, letters=5)
    src, tgt_in, targets = task.batch(["abc", "e"])
    assert src[0].tolist() == [*task.encode("abc"), PAD]
    assert tgt_in[0].tolist()[:4] == [BOS, *task.encode("cba")]
    assert targets[0].tolist() == [*task.encode("cba"), EOS, -100]
    assert targets[1].tolist() == [*task.encode("e"), EOS, -100, -100, -100]
    assert Seq2SeqTask("sort").batch(["cab"])[2][0].tolist()[:3] == Seq2SeqTask("sort").encode("abc")


def test_bad_task_options() -> None:
    with pytest.raises(ConfigError, match="unknown task"):
        train(Seq2SeqTask("rotate"), verbose=False)
    with pytest.raises(ConfigError, match="min-len"):
        Seq2SeqTask(min_len=5, max_len=3).validate()
    with pytest.raises(ConfigError, match="nothing to train on"):
        held_out(Seq2SeqTask(min_len=1, max_len=1, letters=3), 3, seed=0)


def test_tiny_training_learns_to_reverse_held_out_strings() -> None:
    task = Seq2SeqTask("reverse", 1, 3, letters=4)
    result = train(task, steps=80, batch_size=32, n_embd=32, n_layer=1, n_test=20, verbose=False)
    assert result.final_loss < 0.6 * result.first_loss
    # 20 of the 84 strings are held out; an untrained model gets ~none (measured: 19/20 after 80 steps).
    assert result.accuracy >= 0.8 and result.n_test == 20


class Answers(torch.nn.Module):
    """A 'model' whose greedy answers are given: the truth, or the truth with its last letter changed."""

    def __init__(self, task: Seq2SeqTask, wrong: bool) -> None:
        super().__init__()
        self.task, self.wrong = task, wrong

    def greedy_decode(self, src: torch.Tensor, bos: int, eos: int, max_len: int) -> torch.Tensor:
        out = torch.full((src.size(0), max_len), PAD, dtype=torch.long)
        for row, ids in enumerate(src.tolist()):
            answer = TASKS[self.task.task](self.task.decode([i for i in ids if i != PAD]))
            if self.wrong:
                letters = self.task.alphabet
                answer = answer[:-1] + letters[(letters.index(answer[-1]) + 1) % len(letters)]
            out[row, : len(answer) + 1] = torch.tensor([*self.task.encode(answer), eos])
        return out


def test_exact_match_scores_known_answers() -> None:
    task = Seq2SeqTask("reverse", 1, 4, letters=5)
    strings = held_out(task, 30, seed=0)
    assert exact_match(Answers(task, wrong=False), task, strings, batch_size=7)[0] == 1.0
    accuracy, rows = exact_match(Answers(task, wrong=True), task, strings, batch_size=7)
    assert accuracy == 0.0 and [s for s, _, _ in rows] == strings


def test_seq2seq_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["seq2seq", "--task", "sort", "--steps", "10", "--max-len", "4", "--n-test", "20", "--n-embd",
                 "16"]) == 0
    out = capsys.readouterr().out
    assert "exact match on 20 held-out strings" in out
    assert main(["seq2seq", "--min-len", "0"]) == 2
    assert "min-len" in capsys.readouterr().err
