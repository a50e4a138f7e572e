"""Selection rules and the best-of-n curve against values worked out by hand."""

from __future__ import annotations

import pytest

from workbench.losses import (
    above_threshold,
    best_of_n,
    best_of_n_curve,
    best_worst_pair,
    expected_best_of_n,
    powers_of_two_upto,
    top_k,
)


def test_best_of_n_takes_the_first_of_ties():
    assert best_of_n([0.2, 0.9, 0.1, 0.9]) == 1


def test_top_k_and_threshold():
    scores = [0.5, 0.9, 0.1, 0.7]
    assert top_k(scores, 2) == [1, 3]
    assert top_k(scores, 10) == [1, 3, 0, 2]
    assert above_threshold(scores, 0.5) == [1, 3, 0]
    assert above_threshold(scores, 0.95) == []


def test_best_worst_pair_skips_ties_and_small_gaps():
    assert best_worst_pair([0.3, 0.8, 0.1]) == (1, 2)
    assert best_worst_pair([0.4, 0.4]) is None
    assert best_worst_pair([0.5, 0.55], min_gap=0.1) is None


def test_expected_best_of_n_by_hand():
    """Scores {1, 2, 3}. n=1: mean = 2. n=2: the 3 pairs {1,2},{1,3},{2,3} have maxima 2, 3, 3 -> 8/3.
    n=3: the one subset has maximum 3."""
    assert expected_best_of_n([3.0, 1.0, 2.0], 1) == pytest.approx(2.0)
    assert expected_best_of_n([3.0, 1.0, 2.0], 2) == pytest.approx(8 / 3)
    assert expected_best_of_n([3.0, 1.0, 2.0], 3) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        expected_best_of_n([1.0], 2)


def test_best_of_n_curve_averages_prompts():
    """Prompt A {0, 1}: n=1 -> 0.5, n=2 -> 1. Prompt B {2, 2}: 2 and 2. Means: 1.25 and 1.5."""
    assert best_of_n_curve([[0.0, 1.0], [2.0, 2.0]], [1, 2]) == {1: pytest.approx(1.25), 2: pytest.approx(1.5)}
    assert powers_of_two_upto(8) == [1, 2, 4, 8]
    assert powers_of_two_upto(6) == [1, 2, 4, 6]


# ----------------------------------------------------------------------------------------------
# PPO math

import math  # noqa: E402

import torch  # noqa: E402

from workbench.losses import (  # noqa: E402
    AdaptiveKLController,
    RunningMoments,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    explained_variance,
    gae,
    kl_per_token,
    leave_one_out_baseline,
    masked_mean,
    masked_var,
    masked_whiten,
    shaped_rewards,
    token_mean,
)


def approx_rows(rows, **kw):
    """pytest.approx for a list of rows, compared flattened."""
    return pytest.approx([v for row in rows for v in row], **kw)


X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
M = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def test_masked_mean_and_var():
    """Masked values 1, 2, 4: mean 7/3; squared deviations 16/9 + 1/9 + 25/9 = 14/3;
    biased variance 14/9, unbiased (x 3/2) 7/3."""
    assert masked_mean(X, M).item() == pytest.approx(7 / 3)
    assert masked_var(X, M).item() == pytest.approx(7 / 3)
    assert masked_var(X, M, unbiased=False).item() == pytest.approx(14 / 9)
    assert masked_mean(X, M, dim=1).tolist() == pytest.approx([1.5, 4.0])


def test_masked_whiten():
    white = masked_whiten(X, M)
    assert masked_mean(white, M).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_var(white, M).item() == pytest.approx(1.0, abs=1e-5)
    assert white[0, 2].item() == 0.0 and white[1, 1].item() == 0.0  # outside the mask
    assert masked_mean(masked_whiten(X, M, shift_mean=False), M).item() == pytest.approx(7 / 3, abs=1e-5)


def test_kl_estimators():
    """log pi = -1.0, log pi_ref = -1.5, so log ratio = 0.5. k1 = 0.5; k2 = 0.5 * 0.5^2 = 0.125;
    k3 = (e^-0.5 - 1) + 0.5 = 0.606531 - 1 + 0.5 = 0.106531; all 0 where the policies agree."""
    lp, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -2.0]])
    assert kl_per_token(lp, ref, "k1").flatten().tolist() == approx_rows([[0.5, 0.0]])
    assert kl_per_token(lp, ref, "k2").flatten().tolist() == approx_rows([[0.125, 0.0]])
    assert kl_per_token(lp, ref, "k3").flatten().tolist() == approx_rows([[0.106531, 0.0]], abs=1e-6)
    with pytest.raises(ValueError):
        kl_per_token(lp, ref, "k4")


PI = [0.5, 0.3, 0.2]  # the policy: a categorical over three tokens, from logits log(PI)
REF_A, REF_B = [0.25, 0.25, 0.5], [0.6, 0.2, 0.2]  # two references


def expected_loss_gradient(estimator: str, ref: list[float]) -> list[float]:
    """sum_y pi(y) * d term(y) / d logits, exactly (every token weighted by its probability, no sampling): the
    gradient a loss term `kl_per_token(log pi(y), log ref(y))` gives in expectation over y ~ pi."""
    logits = torch.log(torch.tensor(PI, dtype=torch.float64)).requires_grad_(True)
    logp = torch.log_softmax(logits, -1)
    ref_logp = torch.log(torch.tensor(ref, dtype=torch.float64))
    total = torch.zeros((), dtype=torch.float64)
    for y, prob in enumerate(PI):
        total = total + prob * kl_per_token(logp[y], ref_logp[y], estimator)  # prob: a constant weight, not differentiated
    (grad,) = torch.autograd.grad(total, logits)
    return grad.tolist()


def test_k2_in_the_loss_has_the_gradient_of_kl_to_the_reference():
    """d KL(pi || ref) / d z_j = pi_j * (log(pi_j / ref_j) - KL) for softmax logits z.
    REF_A: log(pi/ref) = [ln 2, ln 1.2, ln 0.4] = [0.693147, 0.182322, -0.916291];
    KL = 0.5 * 0.693147 + 0.3 * 0.182322 + 0.2 * -0.916291 = 0.218012;
    gradient = [0.5 * 0.475135, 0.3 * -0.035690, 0.2 * -1.134303] = [0.237568, -0.010707, -0.226861].
    REF_B: log(pi/ref) = [ln(5/6), ln 1.5, 0] = [-0.182322, 0.405465, 0]; KL = -0.091161 + 0.121640 = 0.030479;
    gradient = [0.5 * -0.212801, 0.3 * 0.374986, 0.2 * -0.030479] = [-0.106400, 0.112496, -0.006096]."""
    assert expected_loss_gradient("k2", REF_A) == pytest.approx([0.237568, -0.010707, -0.226861], abs=1e-6)
    assert expected_loss_gradient("k2", REF_B) == pytest.approx([-0.106400, 0.112496, -0.006096], abs=1e-6)


def test_k1_in_the_loss_has_no_expected_gradient_whatever_the_reference():
    """k1 = log pi - log ref: the reference is a constant and sum_y pi(y) d log pi(y) = d sum_y pi(y) = 0, so a
    k1 loss term regularizes nothing, for any reference (why `kl_in: loss` refuses k1)."""
    assert expected_loss_gradient("k1", REF_A) == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)
    assert expected_loss_gradient("k1", REF_B) == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)


def test_k3_in_the_loss_has_the_gradient_of_the_reverse_kl():
    """d k3 = (1 - ref/pi) d log pi, so its expectation is -sum_y ref(y) d log pi(y) = d KL(ref || pi) = pi - ref:
    REF_A: [0.5 - 0.25, 0.3 - 0.25, 0.2 - 0.5] = [0.25, 0.05, -0.3] (not KL(pi || ref)'s [0.237568, -0.010707, -0.226861])."""
    assert expected_loss_gradient("k3", REF_A) == pytest.approx([0.25, 0.05, -0.3], abs=1e-9)


def test_shaped_rewards_put_the_score_on_the_last_response_token():
    """kl_coef 0.5. Row 0: kl 0.1, 0.2 on two tokens, score 2 -> [-0.05, -0.1 + 2, 0] = [-0.05, 1.9, 0].
    Row 1: one token, kl 0.5, score 1 -> [-0.25 + 1, 0, 0] = [0.75, 0, 0]."""
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]])
    out = shaped_rewards(torch.tensor([2.0, 1.0]), kl, M, kl_coef=0.5)
    assert out.flatten().tolist() == approx_rows([[-0.05, 1.9, 0.0], [0.75, 0.0, 0.0]])


def test_gae_by_hand():
    """rewards [0, 0, 1], values [0.5, 0.6, 0.7].
    gamma = lam = 1: deltas 0.1, 0.1, 0.3 -> A = [0.5, 0.4, 0.3], returns = A + V = [1, 1, 1].
    gamma 0.9, lam 0.5: delta2 = 1 - 0.7 = 0.3, A2 = 0.3; delta1 = 0.9*0.7 - 0.6 = 0.03, A1 = 0.03 + 0.45*0.3 = 0.165;
    delta0 = 0.9*0.6 - 0.5 = 0.04, A0 = 0.04 + 0.45*0.165 = 0.11425."""
    r, v, m = torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.6, 0.7]]), torch.ones(1, 3)
    adv, ret = gae(r, v, m, gamma=1.0, lam=1.0)
    assert adv.flatten().tolist() == approx_rows([[0.5, 0.4, 0.3]]) and ret.flatten().tolist() == approx_rows([[1.0, 1.0, 1.0]])
    adv, _ = gae(r, v, m, gamma=0.9, lam=0.5)
    assert adv.flatten().tolist() == approx_rows([[0.11425, 0.165, 0.3]])


def test_gae_stops_at_the_end_of_the_response():
    """mask [1, 1, 0], rewards [0, 1, 0], values [0.5, 0.6, 0.7 (padding)], gamma 0.9, lam 0.5:
    A2 = 0 (masked); delta1 = 1 + 0 - 0.6 = 0.4, A1 = 0.4; delta0 = 0.9*0.6 - 0.5 = 0.04, A0 = 0.04 + 0.45*0.4 = 0.22.
    returns = [0.72, 1.0, 0]."""
    adv, ret = gae(torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([[0.5, 0.6, 0.7]]), torch.tensor([[1.0, 1.0, 0.0]]), 0.9, 0.5)
    assert adv.flatten().tolist() == approx_rows([[0.22, 0.4, 0.0]]) and ret.flatten().tolist() == approx_rows([[0.72, 1.0, 0.0]])


def test_clipped_policy_loss_by_hand():
    """ratios 1.5 and 0.5, advantages 1, cliprange 0.2: unclipped -1.5, -0.5; clipped -1.2, -0.8;
    max -> -1.2, -0.5; loss -0.85. Clipped in 1 of 2 tokens. approx KL = 0.5 * mean(ln1.5^2, ln0.5^2)
    = 0.5 * (0.164402 + 0.480453) / 2 = 0.161214."""
    new = torch.tensor([[math.log(1.5), math.log(0.5)]])
    loss, clipfrac, approxkl = clipped_policy_loss(new, torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2), 0.2)
    assert loss.item() == pytest.approx(-0.85) and clipfrac.item() == pytest.approx(0.5)
    assert approxkl.item() == pytest.approx(0.161214, abs=1e-6)


def test_clipped_value_loss_by_hand():
    """values 1.0, 0.0; old 0.5, 0.5; returns 1; clip 0.2 -> clipped values 0.7, 0.3.
    Squared errors unclipped 0, 1; clipped 0.09, 0.49; max 0.09, 1; loss 0.5 * mean = 0.2725; clipped in 1 of 2."""
    loss, clipfrac = clipped_value_loss(
        torch.tensor([[1.0, 0.0]]), torch.tensor([[0.5, 0.5]]), torch.ones(1, 2), torch.ones(1, 2), 0.2
    )
    assert loss.item() == pytest.approx(0.2725) and clipfrac.item() == pytest.approx(0.5)


def test_entropy_from_logits():
    """Uniform over 4: ln 4 = 1.386294. Probabilities 0.25, 0.75 (logits 0, ln 3):
    -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.346574 + 0.215762 = 0.562335."""
    assert entropy_from_logits(torch.zeros(4)).item() == pytest.approx(1.386294, abs=1e-6)
    assert entropy_from_logits(torch.tensor([0.0, math.log(3.0)])).item() == pytest.approx(0.562335, abs=1e-6)


def test_explained_variance():
    ret, m = torch.tensor([[1.0, 2.0, 4.0]]), torch.ones(1, 3)
    assert explained_variance(ret, ret, m).item() == pytest.approx(1.0)
    assert explained_variance(torch.zeros(1, 3), ret, m).item() == pytest.approx(0.0)


def test_adaptive_kl_controller():
    """target 6, horizon 10000, 100 samples. KL 9: error 0.5 clipped to 0.2 -> x (1 + 0.2 * 100 / 10000) = x 1.002:
    0.2 -> 0.2004. KL 3: error -0.5 clipped to -0.2 -> x 0.998: 0.2004 -> 0.1999992."""
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=10000)
    assert ctl.update(9.0, 100) == pytest.approx(0.2004)
    assert ctl.update(3.0, 100) == pytest.approx(0.1999992)
    again = AdaptiveKLController(1.0, 1.0, 1)
    again.load_state_dict(ctl.state_dict())
    assert again.state_dict() == ctl.state_dict()


def test_masked_whiten_uses_the_statistics_of_every_process():
    """Rows split over two 'processes' whose sums are added: masked values 1, 2 | 4 -> mean 7/3, unbiased var 7/3,
    so 1 -> (1 - 7/3) / sqrt(7/3) = -0.8729 in the first shard, the same as whitening the whole batch."""
    shards = [(X[:1], M[:1]), (X[1:], M[1:])]

    def reduce_sum(t):  # what an all-reduce(sum) returns on each process: the sum over both shards
        other = [s for s in shards if s[0] is not current[0]][0]
        x, m = other
        if t.dim() == 1:  # (sum, count)
            return t + torch.stack([(x * m).sum(), m.sum()]).double()
        return t + ((x.double() - mean_seen[0]) ** 2 * m).sum()

    whole = masked_whiten(X, M)
    for current in shards:
        mean_seen = [torch.tensor(7 / 3, dtype=torch.float64)]
        part = masked_whiten(current[0], current[1], reduce_sum=reduce_sum)
        rows = slice(0, 1) if current is shards[0] else slice(1, 2)
        assert torch.allclose(part, whole[rows], atol=1e-6)
    assert whole[0, 0].item() == pytest.approx((1 - 7 / 3) / math.sqrt(7 / 3), abs=1e-5)


def test_token_mean_divides_by_the_global_token_count():
    """Masked values 1, 2, 4 sum to 7: over their own 3 tokens 7/3, as a share of 10 global tokens 0.7."""
    assert token_mean(X, M).item() == pytest.approx(7 / 3)
    assert token_mean(X, M, torch.tensor(10.0)).item() == pytest.approx(0.7)


def test_leave_one_out_baseline_by_hand():
    """Groups (1, 2, 6) and (4, 4, 1): 1 - (2 + 6) / 2 = -3, 2 - 3.5 = -1.5, 6 - 1.5 = 4.5; 4 - 2.5 = 1.5, 1.5, 1 - 4 = -3."""
    scores = torch.tensor([1.0, 2.0, 6.0, 4.0, 4.0, 1.0])
    assert leave_one_out_baseline(scores, 3).tolist() == pytest.approx([-3.0, -1.5, 4.5, 1.5, 1.5, -3.0])
    assert leave_one_out_baseline(scores, 1).tolist() == scores.tolist()


def test_running_moments_merge_batches_exactly():
    """1, 2, 3 then 4, 10: mean 4, population variance (9 + 4 + 1 + 0 + 36) / 5 = 10."""
    m = RunningMoments()
    m.update([1.0, 2.0, 3.0])
    assert (m.mean, m.var, m.count) == pytest.approx((2.0, 2 / 3, 3))
    m.update([4.0, 10.0])
    assert (m.mean, m.var, m.count) == pytest.approx((4.0, 10.0, 5))
    assert m.normalize([4.0 + math.sqrt(10.0)]) == pytest.approx([1.0])
    again = RunningMoments()
    again.load_state_dict(m.state_dict())
    assert again.std == pytest.approx(math.sqrt(10.0))
