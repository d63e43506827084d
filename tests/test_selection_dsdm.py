"""DsDm selection: direction on a planted pool (the target's domain must be picked), the sign
convention on a hand-made score matrix, determinism for a fixed seed, and the per-example
gradient loop against vmap."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from s2l.config import TrainConfig
from s2l.gpt2 import set_attention
from s2l.model import ModelShape, build_model
from s2l.selection import dsdm
from s2l.train import train
from s2l.trak import (LMOddsOutput, flat_grads, per_example_grads_loop, projector_for,
                      score_blockwise)

L, VOCAB = 17, 64


def planted_pool(n_per: int = 40, seed: int = 0):
    """Two 'domains' with disjoint vocabularies and their own repeating patterns:
    A: tokens 2..31 counting up by 1, B: tokens 33..63 counting up by 3 (mod range)."""
    rng = np.random.default_rng(seed)
    a = [(rng.integers(30) + np.arange(L)) % 30 + 2 for _ in range(n_per)]
    b = [(rng.integers(31) + 3 * np.arange(L)) % 31 + 33 for _ in range(n_per)]
    tokens = np.array(a + b, dtype=np.int64)
    domain = np.array([0] * n_per + [1] * n_per)
    return tokens, domain


def trained_proxy(tokens, seed):
    torch.manual_seed(seed)
    model = build_model(ModelShape(16, 1, 2), VOCAB, L, seed)
    rng = np.random.default_rng(seed)
    subset = rng.choice(len(tokens), size=len(tokens) // 2, replace=False)
    cfg = TrainConfig(batch_size=16, lr=1e-2, log_every=10, warmup_frac=0.1)
    train(model, lambda s: tokens[subset[np.random.default_rng([seed, s]).integers(len(subset), size=16)]],
          40, cfg)
    return model


def run_dsdm(tokens, targets, target_mask, n, models=2, proj_dim=256):
    phis, phts = [], []
    for m in range(models):
        model = trained_proxy(tokens, m)
        proj = projector_for(model, proj_dim, seed=0, member=m)
        phis.append(dsdm.featurize_lm(model, tokens, None, proj, batch_size=16))
        phts.append(dsdm.featurize_lm(model, targets, target_mask, proj, batch_size=16))
    S = score_blockwise(np.stack(phis), np.stack(phts))  # no Q term for the LM output
    return S, dsdm.select(S, n)


@pytest.fixture(scope="module")
def planted():
    torch.set_num_threads(1)
    tokens, domain = planted_pool()
    # targets: fresh domain-A sequences; only the second half of each is the "answer"
    rng = np.random.default_rng(99)
    targets = np.array([(rng.integers(30) + np.arange(L)) % 30 + 2 for _ in range(12)], dtype=np.int64)
    mask = np.zeros_like(targets, dtype=bool)
    mask[:, L // 2:] = True
    S, picked = run_dsdm(tokens, targets, mask, n=20)
    return tokens, domain, targets, mask, S, picked


def test_dsdm_picks_the_target_domain(planted):
    tokens, domain, *_, S, picked = planted
    assert S.shape == (len(tokens), 12)
    w = dsdm.datamodel(S)
    # the target's domain is predicted to lower the target loss, the other domain not
    assert w[domain == 0].mean() > 0 and w[domain == 0].mean() > 10 * abs(w[domain == 1].mean())
    # top-n picks are mostly the target's domain (TRAK scores of 2 tiny models have heavy
    # tails, so a few outliers of the other domain get in: measured 75% at k=256, 55% at k=64)
    share = (domain[picked] == 0).mean()
    assert share >= 0.7, f"only {share:.0%} of the DsDm selection is from the target's domain"


def test_selection_lowers_the_targets_loss(planted):
    """The direction end to end: a model trained on the DsDm pick has a lower target loss than
    one trained on the candidates DsDm ranks last."""
    from s2l.evaluate import row_losses

    tokens, domain, targets, mask, S, picked = planted
    worst = np.argsort(dsdm.datamodel(S), kind="stable")[:20]
    losses = []
    for rows in (picked, worst):
        model = build_model(ModelShape(16, 1, 2), VOCAB, L, 0)
        cfg = TrainConfig(batch_size=16, lr=1e-2, log_every=10, warmup_frac=0.1)
        train(model, lambda s: tokens[rows[np.random.default_rng([0, s]).integers(len(rows), size=16)]],
              40, cfg)
        losses.append(row_losses(model, targets.astype(np.int32), mask).mean())
    assert losses[0] < losses[1]


def test_sign_convention_on_a_hand_made_score_matrix():
    # S[i, j] > 0: candidate i raises target j's output (odds of its answer) = lowers its loss
    S = np.array([[-1.0, -2.0], [3.0, 1.0], [0.5, 0.5], [2.0, 2.0]])
    assert list(dsdm.select(S, 2)) == [1, 3]  # highest mean score = lowest predicted loss
    assert list(dsdm.select(S, 4)) == [1, 3, 2, 0]


def test_ties_and_determinism():
    S = np.zeros((5, 3))
    assert list(dsdm.select(S, 3)) == [0, 1, 2]  # stable: pool order breaks ties
    a = dsdm.random_select(100, 10, seed=3)
    assert np.array_equal(a, dsdm.random_select(100, 10, seed=3))
    assert not np.array_equal(a, dsdm.random_select(100, 10, seed=4))
    assert len(set(a.tolist())) == 10


def test_featurize_and_select_are_deterministic_for_a_fixed_seed(planted):
    tokens, domain, targets, mask, S, picked = planted
    S2, picked2 = run_dsdm(tokens, targets, mask, n=20)
    np.testing.assert_allclose(S2, S, rtol=1e-5, atol=1e-6 * np.abs(S).max())
    assert np.array_equal(picked2, picked)


def test_loop_gradients_match_the_vmap_gradients():
    """The per-example gradient loop (used for GPT-2 on CPU) equals `s2l.trak.flat_grads`
    (vmap), with and without a loss mask."""
    model = build_model(ModelShape(16, 1, 2), VOCAB, L, 0).eval()
    set_attention(model, "eager")  # as featurize_lm runs it
    x = torch.from_numpy(planted_pool(3)[0][:4])
    mask = torch.zeros_like(x, dtype=torch.bool)
    mask[:, L // 2:] = True
    for out in (LMOddsOutput(), LMOddsOutput(log_odds=True)):
        for batch in ((x,), (x, mask)):
            np.testing.assert_allclose(per_example_grads_loop(model, out, batch).numpy(),
                                       flat_grads(model, out, batch).numpy(), rtol=1e-4, atol=1e-9)
