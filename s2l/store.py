"""The one module that owns Zarr layouts on disk (see DESIGN: one writer per chunk).

`zarr_array` is the generic helper other stores (attribution features) build on.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr


def zarr_array(path: str | Path, mode: str = "r", shape: tuple[int, ...] | None = None,
               chunks: tuple[int, ...] | None = None, dtype: str | np.dtype | None = None,
               fill_value=None) -> zarr.Array:
    """Open (mode "r"/"r+") or create (mode "w"/"a" with shape, chunks, dtype) a plain Zarr v3
    array at `path`. Writers from different processes must write disjoint whole chunks."""
    if mode in ("r", "r+"):
        return zarr.open_array(str(path), mode=mode)
    return zarr.open_array(str(path), mode=mode, shape=shape, chunks=chunks, dtype=dtype,
                           fill_value=fill_value, zarr_format=3)
