"""Seeded random projections P (p, k) applied in row chunks, so P never has to be in memory.

TRAK sketches per-example gradients g (p,) to phi = g @ P (k,). With p in the millions and k in
the thousands, P itself is too large to hold; here P is defined row-chunk by row-chunk: rows
[c*R, (c+1)*R) are drawn from a generator seeded by (seed, c), so any range of rows can be
regenerated on demand, on any machine, identically. `project(G)` accumulates
G[:, rows] @ P[rows] over chunks, optionally caching the chunks while they fit in
`cache_bytes` (then each chunk is generated once per model instead of once per batch).

Entries: Rademacher (+-1) or standard normal, *not* scaled by 1/sqrt(k) (as in `traker`; TRAK
scores without ridge are invariant to a common scale of the features). Rademacher signs are
drawn as 32 random bits per generator call and expanded through a 256-entry sign table (5x
faster than one `randint` per entry, which took as long as the projection itself).

Precision (`dtype`): float32, bfloat16 (+-1 is exact in bf16: only the gradients are rounded,
and the product is rounded to bf16 before the fp32 sum over chunks, ~2^-9 relative per
feature), or "auto" = bf16 where bf16 matmuls are fast (`fast_bf16`: the capability that
training uses, `s2l.train.fast_cpu_bf16`: CPUs with AMX, 4x fp32 here; GPUs), else fp32. On a
CPU without AMX (an AMD EPYC with avx512_bf16, measured) a bf16 matmul ran 100x *slower*.
Scores from bf16 features matched fp32 ones to Spearman 0.992-0.999 on MLPs with k <= 0.7 n
(tests/test_trak_fast.py checks >= 0.99), but 0.986 on a CNN with k = 2,048, n = 2,500: the
kernel's conditioning amplifies the rounding, so bf16/auto are opt-in and fp32 the default.

`MatrixProjector` wraps an explicit P (tests, and comparisons with `traker` on the same P).
"""
from __future__ import annotations

import torch
from torch import nn

from s2l.train import fast_cpu_bf16
from s2l.trak.grads import grad_dim

# _SIGNS[b] = the 8 signs (+-1, int8) of the bits of byte b, least significant first, viewed
# as one int64 so that a lookup copies 8 signs at once
_SIGNS = (((torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1) * 2 - 1).to(torch.int8).view(torch.int64).view(-1)


def rademacher(rows: int, k: int, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """(rows, k) matrix of independent +-1 (probability 1/2 each) in `dtype`, from `generator`."""
    n = rows * k
    words = torch.randint(0, 1 << 32, (-(-n // 32),), generator=generator, dtype=torch.int64)
    # the low 4 bytes of each int64 carry the 32 random bits (little-endian)
    byte = words.view(torch.uint8).view(-1, 8)[:, :4].reshape(-1).int()
    signs = torch.index_select(_SIGNS, 0, byte).view(torch.int8)[:n]
    return signs.to(dtype).view(rows, k)


def fast_bf16(device: str = "cpu") -> bool:
    """True where bf16 matmuls run much faster than fp32: the capability training and
    evaluation decide by (`s2l.train.fast_cpu_bf16`: AMX tiles with bf16; a CUDA GPU with bf16)."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return fast_cpu_bf16()


def resolve_dtype(dtype, device: str = "cpu") -> torch.dtype:
    """torch dtype of a projection from a torch dtype or 'fp32' | 'bf16' | 'auto'."""
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16}
    if dtype == "auto":
        return torch.bfloat16 if fast_bf16(device) else torch.float32
    if dtype not in table:
        raise ValueError(f"projection dtype must be fp32, bf16 or auto, got {dtype!r}")
    return table[dtype]


def model_seed(seed: int, m: int) -> int:
    """Projection seed of ensemble member m: every member gets its own P, as in traker."""
    return seed * 100_003 + m


class ChunkedProjector:
    """P (p, k) generated in chunks of `chunk_rows` rows from `seed`.

    project: G (B, p) float -> Phi (B, k) float32.
    """

    def __init__(self, grad_dim: int, proj_dim: int, seed: int, kind: str = "rademacher",
                 dtype: torch.dtype | str = torch.float32, chunk_rows: int = 16384,
                 cache_bytes: float = 1 << 30):
        if kind not in ("rademacher", "normal"):
            raise ValueError(f"projection kind must be 'rademacher' or 'normal', got {kind!r}")
        dtype = resolve_dtype(dtype)
        self.p, self.k, self.seed, self.kind = grad_dim, proj_dim, seed, kind
        self.dtype, self.chunk_rows = dtype, chunk_rows
        self.n_chunks = -(-grad_dim // chunk_rows)
        self._cache_ok = grad_dim * proj_dim * torch.finfo(dtype).bits / 8 <= cache_bytes
        self._cache: dict[int, torch.Tensor] = {}
        self._full: torch.Tensor | None = None  # all of P once generated, when it fits

    def chunk(self, c: int) -> torch.Tensor:
        """Rows [c*R, min((c+1)*R, p)) of P, shape (rows, k), in `self.dtype`."""
        if self._full is not None:
            return self._full[c * self.chunk_rows:(c + 1) * self.chunk_rows]
        if c in self._cache:
            return self._cache[c]
        m = self._generate(c)
        if self._cache_ok:
            self._cache[c] = m
        return m

    def _generate(self, c: int) -> torch.Tensor:
        rows = min(self.chunk_rows, self.p - c * self.chunk_rows)
        # a distinct, reproducible stream per (seed, chunk): 2**20 chunks per seed is plenty
        g = torch.Generator().manual_seed(self.seed * (1 << 20) + c)
        if self.kind == "rademacher":
            m = rademacher(rows, self.k, g, self.dtype)
        else:
            m = torch.randn(rows, self.k, generator=g).to(self.dtype)
        return m

    def matrix(self) -> torch.Tensor:
        """The whole P (p, k) in float32: for tests on tiny models only."""
        return torch.cat([self.chunk(c).float() for c in range(self.n_chunks)])

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        """G (B, p) float (any strides: a row block of a buffer) -> G P (B, k) float32."""
        if grads.shape[1] != self.p:
            raise ValueError(f"gradients have {grads.shape[1]} entries, projector expects {self.p}")
        if self._cache_ok:
            # P fits: one product over all p rows (one output rounding in bf16, bigger GEMM)
            if self._full is None:  # filled chunk by chunk: peak memory P + one chunk
                full = torch.empty(self.p, self.k, dtype=self.dtype)
                for c in range(self.n_chunks):
                    m = self._cache.pop(c) if c in self._cache else self._generate(c)
                    full[c * self.chunk_rows:c * self.chunk_rows + m.shape[0]] = m
                self._full = full
            return (grads.to(self.dtype) @ self._full).float()
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
                  kind: str = "rademacher", dtype: torch.dtype | str = torch.float32,
                  cache_bytes: float | None = None) -> ChunkedProjector:
    """The projector of ensemble `member` for `model`'s gradients (seed `model_seed(seed,
    member)`); dtype a torch dtype or 'fp32' | 'bf16' | 'auto' (`resolve_dtype`).
    `cache_bytes` None: keep P in memory whatever its size."""
    p = grad_dim(model)
    dtype = resolve_dtype(dtype)
    if cache_bytes is None:
        cache_bytes = p * proj_dim * torch.finfo(dtype).bits / 8
    return ChunkedProjector(p, proj_dim, model_seed(seed, member), kind, dtype,
                            cache_bytes=cache_bytes)
