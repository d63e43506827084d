"""DSIR against a brute-force computation with Python dicts and integers."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np

from s2l.selection import dsir

MULT = [0x5bd1e995, 0x1b873593, 0x2f3e6f8d]
PRIME = (1 << 61) - 1


def brute_buckets(tokens, ngrams, buckets):
    out = []
    for n in range(1, ngrams + 1):
        for i in range(len(tokens) - n + 1):
            h = 0
            for j in range(n):
                h = (h + (int(tokens[i + j]) * MULT[j]) % PRIME) % PRIME
            out.append((h + n) % buckets)
    return out


def brute_log_w(pool, target, ngrams, buckets):
    tc = Counter(b for t in target for b in brute_buckets(t, ngrams, buckets))
    rc = Counter(b for t in pool for b in brute_buckets(t, ngrams, buckets))
    nt, nr = sum(tc.values()), sum(rc.values())
    out = []
    for t in pool:
        lw = 0.0
        for b in brute_buckets(t, ngrams, buckets):  # one term per occurrence = count-weighted
            lw += math.log((tc[b] + 1) / (nt + buckets)) - math.log((rc[b] + 1) / (nr + buckets))
        out.append(lw)
    return np.array(out)


def test_importance_weights_match_brute_force():
    rng = np.random.default_rng(0)
    pool = [rng.integers(0, 50, size=rng.integers(3, 20)) for _ in range(30)]
    target = [rng.integers(0, 20, size=rng.integers(1, 9)) for _ in range(7)]  # skewed vocabulary
    for ngrams, buckets in ((1, 37), (2, 101), (3, 1000)):
        np.testing.assert_allclose(dsir.log_importance(pool, target, ngrams, buckets),
                                   brute_log_w(pool, target, ngrams, buckets), rtol=1e-10, atol=1e-9)


def test_large_token_ids_hash_like_python_integers():
    t = np.array([65535, 70000, 4_000_000_000, 1])
    assert list(dsir.ngram_buckets(t, 3, 10007)) == brute_buckets(t, 3, 10007)


def test_selection_prefers_target_like_candidates_and_is_deterministic():
    rng = np.random.default_rng(1)
    pool = [rng.integers(0, 20, 30) for _ in range(50)] + [rng.integers(20, 40, 30) for _ in range(50)]
    target = [rng.integers(0, 20, 30) for _ in range(10)]
    lw = dsir.log_importance(pool, target, 2, 5000)
    picked = dsir.select(lw, 40, seed=0)
    assert (picked < 50).mean() > 0.95
    assert np.array_equal(picked, dsir.select(lw, 40, seed=0))
    assert len(set(picked.tolist())) == 40
    # Gumbel top-k samples in proportion to the weights: equal weights give a seed-dependent draw
    flat = np.zeros(100)
    assert not np.array_equal(dsir.select(flat, 10, 0), dsir.select(flat, 10, 1))
