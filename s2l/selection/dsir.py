"""DSIR (Xie et al. 2023): importance resampling toward a target in a hashed n-gram space.

Each text is a bag of hashed n-grams: its token ids' unigrams up to `ngrams`-grams, each
hashed into one of B buckets. Two bag-of-buckets distributions are estimated with add-one
smoothing,

    p_T (B,)  from the target text           p_R (B,)  from the whole candidate pool,

and the importance weight of candidate i with bucket counts c_i (B,) is

    log w_i = sum_b c_ib (log p_T(b) - log p_R(b)).

n candidates are drawn without replacement with probability proportional to w_i by the Gumbel
top-k trick: the n largest log w_i + Gumbel noise. (The original hashes words of the raw text;
here n-grams of token ids, which needs no decoding and behaves the same for selection.)
"""
from __future__ import annotations

import numpy as np

# Multipliers of the n-gram hash (odd 31-bit constants): h = sum_j tok_j * A_j  mod 2^61 - 1
_A = np.array([0x5bd1e995, 0x1b873593, 0x2f3e6f8d], dtype=np.uint64)
_PRIME = np.uint64((1 << 61) - 1)


def ngram_buckets(tokens: np.ndarray, ngrams: int, buckets: int) -> np.ndarray:
    """Bucket ids (int64) of every 1..ngrams-gram of one token sequence (1-D)."""
    t = np.asarray(tokens, dtype=np.uint64)
    out = []
    for n in range(1, ngrams + 1):
        if len(t) < n:
            break
        h = np.zeros(len(t) - n + 1, dtype=np.uint64)
        for j in range(n):
            # products stay < 2^64: token ids < 2^32 and multipliers < 2^31
            h = (h + (t[j:len(t) - n + 1 + j] * _A[j]) % _PRIME) % _PRIME
        out.append((h + np.uint64(n)) % np.uint64(buckets))  # +n: a unigram and a bigram differ
    return np.concatenate(out).astype(np.int64) if out else np.zeros(0, np.int64)


def bucket_counts(texts, ngrams: int, buckets: int) -> np.ndarray:
    """C (len(texts), B) float64: hashed n-gram counts of each token sequence."""
    C = np.zeros((len(texts), buckets), dtype=np.float64)
    for i, t in enumerate(texts):
        np.add.at(C[i], ngram_buckets(t, ngrams, buckets), 1.0)
    return C


def log_importance(pool_texts, target_texts, ngrams: int = 2, buckets: int = 10000) -> np.ndarray:
    """log w (n_pool,) float64 of every candidate toward the target (see the module doc)."""
    C = bucket_counts(pool_texts, ngrams, buckets)
    target = bucket_counts(target_texts, ngrams, buckets).sum(0)
    log_pt = np.log(target + 1) - np.log(target.sum() + buckets)
    raw = C.sum(0)
    log_pr = np.log(raw + 1) - np.log(raw.sum() + buckets)
    return C @ (log_pt - log_pr)


def select(log_w: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n distinct indices (n,) int64 drawn with probability proportional to exp(log_w),
    without replacement (Gumbel top-k), highest perturbed weight first."""
    g = np.random.default_rng(seed).gumbel(size=len(log_w))
    return np.argsort(-(np.asarray(log_w) + g), kind="stable")[:n].astype(np.int64)
