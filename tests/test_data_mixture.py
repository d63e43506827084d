"""MixtureSampler: draws domains by weight, windows are real slices, pure in (seed, step)."""
import numpy as np
import pytest

from s2l.data import MixtureSampler

# each domain's tokens live in their own id range, so a row tells which domain it came from
TRAIN = {"a": np.arange(0, 5000, dtype=np.uint16), "b": np.arange(10000, 13000, dtype=np.uint16),
         "c": np.arange(20000, 20500, dtype=np.uint16)}


def domains_of(batch):
    return np.array(["abc"[int(r[0]) // 10000] for r in batch])


def test_proportions_follow_weights():
    s = MixtureSampler(TRAIN, {"a": 1, "b": 3, "c": 0}, seq_len=16, seed=0)
    rows = np.concatenate([s.batch(step, 64) for step in range(100)])  # 6400 rows
    counts = np.array([(domains_of(rows) == d).sum() for d in "ab"])
    expected = len(rows) * np.array([0.25, 0.75])
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 10.8  # p = 0.001 for 1 degree of freedom
    assert (domains_of(rows) != "c").all()  # zero weight: never drawn


def test_rows_are_contiguous_windows():
    s = MixtureSampler(TRAIN, {"a": 1, "b": 1, "c": 1}, seq_len=32, seed=1)
    b = s.batch(3, 50)
    assert b.shape == (50, 33) and b.dtype == np.int64
    assert (np.diff(b, axis=1) == 1).all()  # consecutive tokens of one stream
    assert list(domains_of(b)) == s.domain_of_rows(3, 50)


def test_pure_function_of_seed_and_step():
    s1 = MixtureSampler(TRAIN, {"a": 1, "b": 1}, seq_len=8, seed=7)
    s2 = MixtureSampler(TRAIN, {"a": 1, "b": 1}, seq_len=8, seed=7)
    later = [s1.batch(k, 8) for k in range(10)]
    assert np.array_equal(s2.batch(9, 8), later[9])  # "resumed" at step 9
    assert not np.array_equal(s1.batch(1, 8), s1.batch(2, 8))
    assert not np.array_equal(MixtureSampler(TRAIN, {"a": 1, "b": 1}, 8, seed=8).batch(9, 8),
                              later[9])


def test_bad_weights():
    with pytest.raises(ValueError, match="unknown domain 'z'"):
        MixtureSampler(TRAIN, {"z": 1}, 8, 0)
    with pytest.raises(ValueError, match="all mixture weights are zero"):
        MixtureSampler(TRAIN, {"a": 0}, 8, 0)
