"""Seeded random projections P (p, k) applied in row chunks, so P never has to be in memory.

TRAK sketches per-example gradients g (p,) to phi = g @ P (k,). With p in the millions and k in
the thousands, P itself is too large to hold; here P is defined row-chunk by row-chunk: rows
[c*R, (c+1)*R) are drawn from a generator seeded by (seed, c), so any range of rows can be
regenerated on demand, on any machine, identically. `project(G)` accumulates
G[:, rows] @ P[rows] over chunks, optionally caching the chunks while they fit in
`cache_bytes` (then each chunk is generated once per model instead of once per batch).

Entries: Rademacher (+-1) or standard normal, *not* scaled by 1/sqrt(k) (as in `traker`; TRAK
scores without ridge are invariant to a common scale of the features). Materialised in float32
by default. `dtype=torch.bfloat16` (+-1 is exact in bf16) pays off only where bf16 matmuls are
fast (GPUs, CPUs with AMX); on a CPU without AMX/avx512_bf16 (an AMD EPYC, measured) a bf16
matmul ran 100x *slower* than fp32. The sum over chunks is fp32.

`MatrixProjector` wraps an explicit P (tests, and comparisons with `traker` on the same P).
"""
from __future__ import annotations

import torch
from torch import nn

from s2l.trak.grads import grad_dim


def model_seed(seed: int, m: int) -> int:
    """Projection seed of ensemble member m: every member gets its own P, as in traker."""
    return seed * 100_003 + m


class ChunkedProjector:
    """P (p, k) generated in chunks of `chunk_rows` rows from `seed`.

    project: G (B, p) float -> Phi (B, k) float32.
    """

    def __init__(self, grad_dim: int, proj_dim: int, seed: int, kind: str = "rademacher",
                 dtype: torch.dtype = torch.float32, chunk_rows: int = 16384,
                 cache_bytes: float = 1 << 30):
        if kind not in ("rademacher", "normal"):
            raise ValueError(f"projection kind must be 'rademacher' or 'normal', got {kind!r}")
        self.p, self.k, self.seed, self.kind = grad_dim, proj_dim, seed, kind
        self.dtype, self.chunk_rows = dtype, chunk_rows
        self.n_chunks = -(-grad_dim // chunk_rows)
        self._cache_ok = grad_dim * proj_dim * torch.finfo(dtype).bits / 8 <= cache_bytes
        self._cache: dict[int, torch.Tensor] = {}

    def chunk(self, c: int) -> torch.Tensor:
        """Rows [c*R, min((c+1)*R, p)) of P, shape (rows, k), in `self.dtype`."""
        if c in self._cache:
            return self._cache[c]
        rows = min(self.chunk_rows, self.p - c * self.chunk_rows)
        # a distinct, reproducible stream per (seed, chunk): 2**20 chunks per seed is plenty
        g = torch.Generator().manual_seed(self.seed * (1 << 20) + c)
        if self.kind == "rademacher":
            m = torch.randint(0, 2, (rows, self.k), generator=g, dtype=torch.int8)
            m = (m * 2 - 1).to(self.dtype)
        else:
            m = torch.randn(rows, self.k, generator=g).to(self.dtype)
        if self._cache_ok:
            self._cache[c] = m
        return m

    def matrix(self) -> torch.Tensor:
        """The whole P (p, k) in float32: for tests on tiny models only."""
        return torch.cat([self.chunk(c).float() for c in range(self.n_chunks)])

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        if grads.shape[1] != self.p:
            raise ValueError(f"gradients have {grads.shape[1]} entries, projector expects {self.p}")
        out = torch.zeros(grads.shape[0], self.k, dtype=torch.float32)
        for c in range(self.n_chunks):
            lo = c * self.chunk_rows
            block = grads[:, lo:lo + self.chunk_rows].to(self.dtype)
            out += (block @ self.chunk(c)).float()
        return out


class MatrixProjector:
    """An explicit P (p, k); project: G (B, p) -> G @ P (B, k) float32."""

    def __init__(self, matrix: torch.Tensor):
        self.P = matrix
        self.p, self.k = matrix.shape

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        return (grads.to(self.P.dtype) @ self.P).float()


def projector_for(model: nn.Module, proj_dim: int, seed: int, member: int,
                  kind: str = "rademacher", dtype: torch.dtype = torch.float32,
                  cache_bytes: float | None = None) -> ChunkedProjector:
    """The projector of ensemble `member` for `model`'s gradients (seed `model_seed(seed,
    member)`). `cache_bytes` None: keep P in memory whatever its size."""
    p = grad_dim(model)
    if cache_bytes is None:
        cache_bytes = p * proj_dim * torch.finfo(dtype).bits / 8
    return ChunkedProjector(p, proj_dim, model_seed(seed, member), kind, dtype,
                            cache_bytes=cache_bytes)
