"""Training batches drawn from a weighted mixture of tokenized domains.

`MixtureSampler.batch(step, B)` is a pure function of (seed, step): each step seeds its own
numpy Generator from (seed, step), so a run resumed at step k sees exactly the batches an
uninterrupted run would, with no sampler state in checkpoints.
"""
from __future__ import annotations

import numpy as np


class MixtureSampler:
    """Random windows of `seq_len + 1` tokens (inputs + shifted targets) from domains drawn
    with probability proportional to `weights`.

    train: domain -> 1-D token array (memmap), documents separated by EOS.
    weights: domain -> weight >= 0 (normalized here; zero-weight domains are never drawn;
             domains missing from `weights` count as 0).
    """

    def __init__(self, train: dict[str, np.ndarray], weights: dict[str, float], seq_len: int,
                 seed: int):
        unknown = sorted(set(weights) - set(train))
        if unknown:
            raise ValueError(f"weights name unknown domain {unknown[0]!r}; domains are {sorted(train)}")
        if any(w < 0 for w in weights.values()):
            raise ValueError(f"weights must be >= 0, got {weights}")
        self.domains = [d for d in train if weights.get(d, 0) > 0]  # train's order: stable
        if not self.domains:
            raise ValueError("all mixture weights are zero")
        for d in self.domains:
            if len(train[d]) < seq_len + 2:
                raise ValueError(f"domain {d!r} has {len(train[d])} tokens, fewer than one "
                                 f"window of {seq_len + 1}")
        w = np.array([weights[d] for d in self.domains], dtype=np.float64)
        self.probs = w / w.sum()
        # plain ndarray views of memmaps: slicing a np.memmap builds a memmap object per row
        # (its __array_finalize__), a third of batch()'s time; same pages, same values
        self.arrays = [a.view(np.ndarray) if isinstance(a, np.memmap) else a
                       for a in (train[d] for d in self.domains)]
        self.seq_len = seq_len
        self.seed = seed

    def batch(self, step: int, batch_size: int) -> np.ndarray:
        """int64 (batch_size, seq_len + 1): row b is a window of one domain's token stream."""
        rng = np.random.Generator(np.random.PCG64([self.seed, step]))
        which = rng.choice(len(self.domains), size=batch_size, p=self.probs)
        u = rng.random(batch_size)  # one uniform per row: start = u * (n - L), domain-independent
        out = np.empty((batch_size, self.seq_len + 1), dtype=np.int64)
        L = self.seq_len + 1
        for b in range(batch_size):
            arr = self.arrays[which[b]]
            start = int(u[b] * (len(arr) - L + 1))
            out[b] = arr[start:start + L]
        return out

    def domain_of_rows(self, step: int, batch_size: int) -> list[str]:
        """Which domain each row of `batch(step, batch_size)` came from (for logging/tests)."""
        rng = np.random.Generator(np.random.PCG64([self.seed, step]))
        return [self.domains[i] for i in rng.choice(len(self.domains), size=batch_size, p=self.probs)]
