"""Post-training math against values computed by hand."""

import math

import pytest
import torch

from quillgpt.posttrain.objectives import (
    AdaptiveKL,
    bradley_terry_loss,
    clipped_policy_loss,
    clipped_value_loss,
    dpo_loss,
    gae,
    group_advantages,
    kl_estimate,
    pairwise_accuracy,
    whiten,
)


def test_gae_on_a_four_step_episode():
    # One reply of 4 tokens after a prompt position (mask 0), and a padded second row.
    # gamma 0.9, lambda 0.8; by hand: deltas 0.04, 0.03, 0.02, 0.2 and
    # A3 = 0.2, A2 = 0.02 + 0.72 * 0.2 = 0.164, A1 = 0.03 + 0.72 * 0.164 = 0.14808,
    # A0 = 0.04 + 0.72 * 0.14808 = 0.1466176.
    rewards = torch.tensor([[9.0, 0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 5.0, 0.0, 0.0]])
    values = torch.tensor([[7.0, 0.5, 0.6, 0.7, 0.8], [0.0, 0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[0, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    expected = torch.tensor([0.0, 0.1466176, 0.14808, 0.164, 0.2])
    assert torch.allclose(advantages[0], expected, atol=1e-6)
    assert torch.allclose(returns[0], expected + torch.tensor([0.0, 0.5, 0.6, 0.7, 0.8]), atol=1e-6)
    assert advantages[1].abs().sum() == 0 and returns[1].abs().sum() == 0


def test_gae_with_lambda_one_is_return_minus_value():
    rewards = torch.tensor([[0.0, -0.1, 0.0, 1.0]])
    values = torch.tensor([[0.3, 0.2, 0.1, 0.4]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(returns, torch.tensor([[0.9, 0.9, 1.0, 1.0]]))
    assert torch.allclose(advantages, returns - values)


def test_clipped_policy_objective():
    # ratio 1.5 and 0.5 with clip 0.2; loss = -min(r * A, clip(r) * A)
    old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.5, 1.5, 0.5, 0.5]))
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    loss = clipped_policy_loss(logp, old, adv, clip=0.2)
    assert torch.allclose(loss, torch.tensor([-1.2, 1.5, -0.5, 0.8]))
    # gradient: zero where the clip is active and binding (ratio 1.5 with A > 0; ratio 0.5 with A < 0)
    logp.requires_grad_(True)
    clipped_policy_loss(logp, old, adv, clip=0.2).sum().backward()
    assert logp.grad[0] == 0 and logp.grad[3] == 0 and logp.grad[1] != 0 and logp.grad[2] != 0


def test_clipped_value_loss_takes_the_worse_of_clipped_and_unclipped():
    old = torch.tensor([0.0, 0.0])
    values = torch.tensor([1.0, 0.1])
    returns = torch.tensor([1.0, 1.0])
    # row 0: unclipped error 0, clipped value 0.2 -> error 0.8: loss 0.5 * 0.64; row 1: both 0.9 -> 0.405
    assert torch.allclose(clipped_value_loss(values, old, returns, clip=0.2), torch.tensor([0.32, 0.405]))


def test_kl_estimate_k3():
    logp = torch.log(torch.tensor([0.5, 0.3]))
    ref = torch.log(torch.tensor([0.25, 0.3]))
    # log r = log(0.25 / 0.5); k3 = r - 1 - log r = 0.5 - 1 + ln 2
    assert torch.allclose(kl_estimate(logp, ref), torch.tensor([math.log(2) - 0.5, 0.0]))
    assert (kl_estimate(torch.randn(100), torch.randn(100)) >= 0).all()


def test_kl_estimate_is_unbiased_for_a_categorical():
    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.2, 0.5, 0.3])
    samples = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    estimate = kl_estimate(p.log()[samples], q.log()[samples]).mean()
    exact = (p * (p / q).log()).sum()
    assert abs(float(estimate - exact)) < 0.01


def test_group_normalization():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv = group_advantages(rewards, group_size=4)
    std = math.sqrt(0.1875)  # population std of [1, 0, 0, 0]
    expected = torch.tensor([0.75, -0.25, -0.25, -0.25]) / std
    assert torch.allclose(adv[:4], expected, atol=1e-4)
    assert adv[4:].abs().max() == 0  # all alike: no signal
    assert torch.allclose(group_advantages(rewards, 4, scale=False)[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]))


def test_bradley_terry_loss_and_accuracy():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0])
    expected = (math.log1p(math.exp(-2.0)) + math.log(2.0)) / 2  # -log sigmoid(2), -log sigmoid(0)
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected)
    assert pairwise_accuracy(torch.tensor([1.0, 0.0, 3.0]), torch.tensor([0.0, 1.0, 2.0])) == pytest.approx(2 / 3)


def test_dpo_loss():
    # beta 0.1, chosen log-ratio +1, rejected -1: -log sigmoid(0.2)
    loss = dpo_loss(torch.tensor([-1.0]), torch.tensor([-4.0]), torch.tensor([-2.0]), torch.tensor([-3.0]), beta=0.1)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-0.2)))


def test_whiten_and_adaptive_kl():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    out = whiten(values, mask)
    assert out[0, 3] == 0 and abs(float(out[0, :3].mean())) < 1e-6
    assert float((out[0, :3] ** 2).mean()) == pytest.approx(1.0, abs=1e-4)
    kl = AdaptiveKL(coef=0.1, target=1.0, horizon=1000)
    assert kl.update(measured_kl=2.0, batch_size=100) == pytest.approx(0.1 * (1 + 0.2 * 0.1))  # error clipped to 0.2
    assert kl.update(measured_kl=0.9, batch_size=100) == pytest.approx(0.102 * (1 - 0.1 * 0.1))
    fixed = AdaptiveKL(coef=0.1, target=0.0)
    assert fixed.update(5.0, 100) == 0.1
