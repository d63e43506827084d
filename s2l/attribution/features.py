"""On-disk layout of an attribution study's arrays (all Zarr through `s2l.store.zarr_array`).

    <out>/features/<width>/train.zarr   (M, n, k) float32  chunks (1, rows, k)
    <out>/features/<width>/target.zarr  (M, T, k) float32  chunks (1, T, k)
    <out>/features/<width>/q.zarr       (M, n)    float32  chunks (1, n)
    <out>/features/<width>/done/<m>     marker: model m featurized
    <out>/scores/<width>.zarr           (n, T)    float32  chunks (rows, T)
    <out>/subsets/margins.zarr          (m, T)    float32  chunks (1, T), NaN until trained

M = models per width (ensemble members x checkpoints), n train examples, T targets, k the
projection dim. Every featurize task writes the whole chunks of its own model index m, every
subset task its own row of margins: concurrent writers never share a chunk (DESIGN: one writer
per chunk). Arrays are created once, at submit time (`create`), so tasks open them "r+".
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from s2l.store import zarr_array


class FeatureStore:
    def __init__(self, root: str | Path, n_models: int, n_train: int, n_targets: int,
                 proj_dim: int, rows_per_chunk: int = 8192):
        self.root = Path(root)
        self.M, self.n, self.T, self.k = n_models, n_train, n_targets, proj_dim
        self.rows = min(rows_per_chunk, n_train)

    def create(self) -> None:
        """Create the arrays (NaN-filled) unless they exist with this shape."""
        (self.root / "done").mkdir(parents=True, exist_ok=True)
        specs = {"train": ((self.M, self.n, self.k), (1, self.rows, self.k)),
                 "target": ((self.M, self.T, self.k), (1, self.T, self.k)),
                 "q": ((self.M, self.n), (1, self.n))}
        for name, (shape, chunks) in specs.items():
            path = self.root / f"{name}.zarr"
            if path.exists() and tuple(zarr_array(path).shape) == shape:
                continue
            zarr_array(path, "w", shape=shape, chunks=chunks, dtype="float32", fill_value=np.nan)

    def is_done(self, m: int) -> bool:
        return (self.root / "done" / str(m)).exists()

    def all_done(self) -> bool:
        return all(self.is_done(m) for m in range(self.M))

    def write(self, m: int, phi_train: np.ndarray, phi_target: np.ndarray, q: np.ndarray) -> None:
        """Whole chunks of model m; the marker is written last so a crash leaves it not done."""
        zarr_array(self.root / "train.zarr", "r+")[m] = np.asarray(phi_train, dtype=np.float32)
        zarr_array(self.root / "target.zarr", "r+")[m] = np.asarray(phi_target, dtype=np.float32)
        zarr_array(self.root / "q.zarr", "r+")[m] = np.asarray(q, dtype=np.float32)
        (self.root / "done" / str(m)).touch()

    def arrays(self):
        """(train (M, n, k), target (M, T, k), q (M, n)) Zarr arrays, read lazily by slices."""
        return tuple(zarr_array(self.root / f"{name}.zarr") for name in ("train", "target", "q"))


def score_array(path: str | Path, n_train: int, n_targets: int, rows: int = 8192, create=False):
    """The (n, T) score matrix of one width; `create=True` makes it (NaN-filled)."""
    if create:
        return zarr_array(path, "w", shape=(n_train, n_targets),
                          chunks=(min(rows, n_train), n_targets), dtype="float32", fill_value=np.nan)
    return zarr_array(path, "r+")


def margins_array(path: str | Path, m: int | None = None, n_targets: int | None = None):
    """(m, T) margins of subset models; created NaN-filled when m and n_targets are given and
    the array does not exist yet."""
    path = Path(path)
    if m is not None and not path.exists():
        return zarr_array(path, "w", shape=(m, n_targets), chunks=(1, n_targets),
                          dtype="float32", fill_value=np.nan)
    return zarr_array(path, "r+")
