"""Continuous batching: a ragged batch gives each sequence the logits it would get alone."""

from __future__ import annotations

import threading

import pytest
import torch

from quillgpt.config import ModelConfig
from quillgpt.models.gpt import GPT
from quillgpt.sample import generate
from quillgpt.serve.batching import RaggedKVCache, RowParams, sample_rows
from quillgpt.serve.scheduler import QueueFullError, Scheduler, Sequence


def tiny_gpt(block_size: int = 16, vocab: int = 23) -> GPT:
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=vocab, block_size=block_size, n_layer=2, n_head=2, n_embd=32, dropout=0.0))
    with torch.no_grad():  # larger weights than the init, so wrong positions or masks change the logits a lot
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


@torch.no_grad()
def test_ragged_batch_decode_equals_each_sequence_alone() -> None:
    model = tiny_gpt()
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 23, (n,), generator=g) for n in (3, 9, 5, 12)]
    prompt_len = [2, 6, 1, 4]
    batch = RaggedKVCache.for_model(model, 0)
    for seq, n in zip(seqs, prompt_len, strict=True):  # prefill each prompt alone, then join the batch
        one = RaggedKVCache.for_model(model, 1)
        logits, _ = model(seq[None, :n], kv_cache=one)
        alone, _ = model(seq[None, :n])
        torch.testing.assert_close(logits, alone, atol=1e-5, rtol=1e-4)
        batch.extend(one)
    assert batch.lengths.tolist() == prompt_len
    # Teacher-forced decode: row b feeds its own next token; rows that have run out leave the batch.
    rows, pos = list(range(4)), list(prompt_len)
    while rows:
        idx = torch.stack([seqs[r][pos[r]] for r in rows])[:, None]
        logits, _ = model(idx, kv_cache=batch)
        for i, r in enumerate(rows):
            alone, _ = model(seqs[r][None, : pos[r] + 1])
            torch.testing.assert_close(logits[i, -1], alone[0, -1], atol=1e-5, rtol=1e-4)
            pos[r] += 1
        keep = [i for i, r in enumerate(rows) if pos[r] < len(seqs[r])]
        batch.keep(keep)
        rows = [rows[i] for i in keep]


def test_row_mask_is_causal_per_row() -> None:
    cache = RaggedKVCache(1, 2, 1, 8, 4, "cpu", torch.float32)
    cache.lengths = torch.tensor([1, 3])
    mask = cache.row_mask(2)  # (B, 1, T, L) with L = 3 + 2
    assert mask.shape == (2, 1, 2, 5)
    assert mask[0, 0].tolist() == [[True, True, False, False, False], [True, True, True, False, False]]
    assert mask[1, 0].tolist() == [[True] * 4 + [False], [True] * 5]
    assert cache.positions(2).tolist() == [[1, 2], [3, 4]]


def test_plain_kv_cache_is_unchanged() -> None:
    model = tiny_gpt()
    idx = torch.randint(0, 23, (2, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cache = model.new_kv_cache(2)
        model(idx[:, :6], kv_cache=cache)
        step, _ = model(idx[:, 6:7], kv_cache=cache)
        full, _ = model(idx[:, :7])
    assert cache.length == 7
    torch.testing.assert_close(step[:, -1], full[:, -1], atol=1e-5, rtol=1e-4)


def test_sample_rows_greedy_seeded_and_filtered() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]] * 3)
    g = [torch.Generator().manual_seed(s) for s in (0, 1, 2)]
    assert sample_rows(logits, [RowParams(0.0)] * 3, g) == [1, 1, 1]
    assert sample_rows(logits, [RowParams(1.0, top_k=1)] * 3, g) == [1, 1, 1]
    picks = sample_rows(logits.repeat(100, 1), [RowParams(1.0, top_k=2)] * 300,
                        [torch.Generator().manual_seed(s) for s in range(300)])
    assert set(picks) == {1, 3}
    again = sample_rows(logits.repeat(100, 1), [RowParams(1.0, top_k=2)] * 300,
                        [torch.Generator().manual_seed(s) for s in range(300)])
    assert picks == again


def run_scheduler(model: GPT, prompts: list[list[int]], max_tokens: int, **kw) -> list[list[int]]:
    scheduler = Scheduler(model, **kw)
    done = threading.Semaphore(0)
    seqs = [Sequence(p, max_tokens, RowParams(0.0), torch.Generator(), lambda t: t is None and done.release())
            for p in prompts]
    scheduler.start()
    try:
        scheduler.submit(seqs)
        for _ in seqs:
            assert done.acquire(timeout=30)
    finally:
        scheduler.stop()
    return [s.tokens for s in seqs]


def test_scheduler_greedy_equals_sample_generate_past_the_context() -> None:
    """Different prompt lengths, joined mid-flight, run past block_size: same tokens as quill sample."""
    model = tiny_gpt(block_size=8)
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10, 11, 12], [13, 14]]
    got = run_scheduler(model, prompts, 20, max_batch=3)  # 3 slots for 4 sequences: one joins later
    for prompt, tokens in zip(prompts, got, strict=True):
        want = generate(model, torch.tensor([prompt]), 20, top_k=1)[0, len(prompt):].tolist()
        assert tokens == want


def test_queue_bound_is_enforced() -> None:
    scheduler = Scheduler(tiny_gpt(), max_batch=1, max_queue=2)  # not started: nothing leaves the queue
    seq = lambda: Sequence([1], 1, RowParams(), torch.Generator(), lambda t: None)  # noqa: E731
    scheduler.submit([seq(), seq()])
    with pytest.raises(QueueFullError):
        scheduler.submit([seq()])
