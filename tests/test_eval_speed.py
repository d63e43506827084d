"""Correctness of evaluation's batching (s2l/evaluate.py): token-budget batches against an
independent computation (one row at a time through the transformers model), in fp32 and bf16.
No timing asserts: speed is benchmarks/bench_train.py's job."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import brute_force_row_losses

from s2l.config import TrainConfig
from s2l.evaluate import BF16_EVAL_TOLERANCE, _batches, last_target, row_losses
from s2l.model import ModelShape, build_model
from s2l.train import train

VOCAB, SEQ = 256, 48
CFG = TrainConfig(batch_size=8, precision="fp32", lr=3e-3, log_every=10,
                  checkpoint_every=10 ** 6)


def trained(shape: ModelShape, steps: int = 30):
    """A model trained a little on a learnable successor language (peaked predictions)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    succ = rng.permutation(VOCAB)

    def batch(step):
        r = np.random.default_rng(step)
        rows = np.empty((8, SEQ + 1), dtype=np.int64)
        rows[:, 0] = r.integers(0, VOCAB, 8)
        for j in range(1, SEQ + 1):
            rows[:, j] = np.where(r.random(8) < 0.9, succ[rows[:, j - 1]],
                                  r.integers(0, VOCAB, 8))
        return rows

    model = build_model(shape, VOCAB, SEQ, 0)
    train(model, batch, steps, CFG)
    return model


def suite(rows: int, seed: int = 0):
    """tokens int32 (R, SEQ + 1) and loss_mask (R, SEQ + 1) of varied lengths: full rows,
    short rows, sparse targets, a row without targets, a row whose only target is 1."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, VOCAB, size=(rows, SEQ + 1)).astype(np.int32)
    lengths = np.where(rng.random(rows) < 0.4, SEQ + 1, rng.integers(2, SEQ, rows))
    mask = np.zeros_like(tokens, dtype=bool)
    for r, n in enumerate(lengths):
        tokens[r, n:] = 0
        mask[r, 1:n] = rng.random(n - 1) < 0.7
        mask[r, n - 1] = True
    mask[3] = False                 # no targets: loss 0
    mask[4] = False
    mask[4, 1] = True               # one target, predicted from one token
    return tokens, mask


def test_batches_respect_the_token_budget_and_keep_the_order():
    rng = np.random.default_rng(0)
    last = rng.integers(0, 100, 300)
    last[:5] = 120
    rows = np.flatnonzero(last > 0)
    order = rows[np.argsort(-last[rows], kind="stable")]
    batches = _batches(order, last, 8)
    np.testing.assert_array_equal(np.concatenate(batches), order)   # a partition, in order
    budget = 8 * 120
    for i, b in enumerate(batches):
        assert len(b) * last[b[0]] <= budget or len(b) == 1          # within the budget
        assert last[b[0]] == last[b].max()                           # cut to its first row
        if i + 1 < len(batches):                                     # and as full as it fits
            assert (len(b) + 1) * last[b[0]] > budget
    assert max(len(b) for b in batches) > 8                          # short rows: more rows
    assert _batches(order[:0], last, 8) == []


def test_row_losses_equal_a_brute_force_per_row_evaluation():
    torch.set_num_threads(1)
    model = trained(ModelShape(32, 2, 2))
    tokens, mask = suite(41)
    last = last_target(mask)
    rows = np.flatnonzero(last > 0)
    order = rows[np.argsort(-last[rows], kind="stable")]
    sizes = [len(b) for b in _batches(order, last, 4)]
    assert max(sizes) > 4 and min(sizes) <= 4      # the budget batching is exercised
    want = brute_force_row_losses(model, tokens, mask)
    assert want[3] == 0.0 and want.min() >= 0
    for bs in (4, 64, 1):
        got = row_losses(model, tokens, mask, batch_size=bs, precision="fp32")
        assert got[3] == 0.0
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_bf16_row_losses_in_token_budget_batches_stay_within_the_stated_tolerance():
    torch.set_num_threads(1)
    model = trained(ModelShape(128, 2, 4), steps=20)
    tokens, mask = suite(24, seed=2)
    f32 = row_losses(model, tokens, mask, 8, "fp32")
    np.testing.assert_allclose(f32, brute_force_row_losses(model, tokens, mask), rtol=1e-5, atol=1e-7)
    b16 = row_losses(model, tokens, mask, 8, "bf16")
    err = np.abs(b16 - f32)
    assert 0 < err.max() <= BF16_EVAL_TOLERANCE * np.maximum(1.0, f32).max()
    assert b16[3] == 0.0


def test_row_losses_without_targets_anywhere():
    model = build_model(ModelShape(32, 2, 2), VOCAB, SEQ, 0)
    tokens, mask = suite(5)
    mask[:] = False
    np.testing.assert_array_equal(row_losses(model, tokens, mask, 4, "fp32"), np.zeros(5))


def test_training_is_untouched_by_evaluation():
    """Evaluation leaves the model as it found it (inference mode, no parameter writes):
    training after an evaluation continues bit-identically."""
    torch.set_num_threads(1)
    a = build_model(ModelShape(32, 2, 2), VOCAB, SEQ, 0)
    b = build_model(ModelShape(32, 2, 2), VOCAB, SEQ, 0)
    tokens, mask = suite(9)
    row_losses(a, tokens, mask, 4, "bf16")
    rng = np.random.default_rng(0)
    data = rng.integers(0, VOCAB, (6, 8, SEQ + 1))
    cfg = dataclasses.replace(CFG, log_every=3)
    ha = train(a, lambda i: data[i], 6, cfg)
    hb = train(b, lambda i: data[i], 6, cfg)
    assert ha == hb
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
