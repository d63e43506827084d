"""The attribution sweep file (`kind: attribution`), declared as typed blocks.

    kind: attribution
    name: attribution-digits
    data:  {source: mnist5k, data_files: null, image_size: 16, n_train: 1000, n_targets: 100, seed: 0}
    model: {widths: [0.03125, 0.0625, 0.125, 0.25]}      # ResNet-9 width multipliers k
    train: {epochs: 8, batch_size: 128, lr: 0.2, momentum: 0.9, weight_decay: 5e-4,
            label_smoothing: 0.0, threads: 1}
    trak:  {ensemble: 4, checkpoints: [8], proj_dim: 512, proj_type: rademacher,
            proj_dtype: fp32, ridge: 0.0, use_q: true, seed: 0, batch_size: 128, cache_gb: 2}
    lds:   {alpha: 0.5, m: 64, seed: 0, bootstrap: 1000}
    slurm: {...}                                           # read by hpc/resources.py

The reference (ground-truth) width is the largest one. Width names are "k" + the multiplier
(e.g. "k0.25"); they are the resource groups `slurm.resources` may be keyed by.

Every value is checked at parse time (`parse`), with the key path in the error: types,
ranges (finite numbers only; seeds in [0, 2^63)), checkpoint epochs within `train.epochs`,
and, for the built-in image sources, `data.n_train + data.n_targets` within the source's size
(hub and parquet sources are checked when `prepare` loads them, before the out dir exists).
"""
from __future__ import annotations

import glob
import hashlib
import json
import re
from typing import Annotated, Any, Literal

from pydantic import Field

from s2l.config import ConfigError, ConfigModel, Count, Name, NonNegative, Seed, Text, parse_model

#: bump when a code change alters what any task computes: it invalidates every done marker
RESULT_VERSION = 2  # 2: Rademacher signs drawn 32 bits at a time (another P per seed)
#: built-in sources and their number of examples (checked against n_train + n_targets)
BUILTIN_SIZES = {"mnist5k": 5000, "digits": 1797}
#: a `datasets` hub id: "name" or "owner/name" (never a path: no leading '.', '/', no '..')
HUB_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.\-]{0,95})?")

# The projection seed enters torch generator seeds as seed * 100_003 * 2^20 (s2l.trak.project),
# which must stay below 2^64.
TrakSeed = Annotated[int, Field(ge=0, le=10 ** 8)]


class DataBlock(ConfigModel):
    source: Text = "mnist5k"  # mnist5k | digits | a datasets hub id (cifar10) | parquet via data_files
    data_files: Text | list[Text] | None = None  # local parquet files (globs) in the hub's format
    image_size: Annotated[int, Field(ge=8, le=1024)] | None = 16  # None: native size
    n_train: Count = 1000
    n_targets: Count = 100
    seed: Seed = 0

    @property
    def files(self) -> tuple[str, ...] | None:
        if not self.data_files:
            return None
        return (self.data_files,) if isinstance(self.data_files, str) else tuple(self.data_files)


class ModelBlock(ConfigModel):
    # ResNet-9 channel multipliers; 64 already means ~25B parameters
    widths: list[Annotated[float, Field(gt=0, le=64)]] = [0.03125, 0.0625, 0.125, 0.25]


class TrainBlock(ConfigModel):
    """One recipe for all widths (`s2l.attribution.train.Recipe`)."""

    epochs: Annotated[int, Field(gt=0, le=10_000)] = 8
    batch_size: Count = 128
    lr: Annotated[float, Field(gt=0)] = 0.2
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    weight_decay: NonNegative = 5e-4
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0
    threads: Annotated[int, Field(gt=0, le=1024)] = 1  # torch threads per task process


class TrakBlock(ConfigModel):
    ensemble: Annotated[int, Field(gt=0, le=1000)] = 4
    checkpoints: list[int] = []  # epochs whose checkpoints are ensembled; [] = last only
    proj_dim: Annotated[int, Field(gt=0, le=1 << 16)] = 512
    proj_type: Literal["rademacher", "normal"] = "rademacher"
    # auto: bf16 where bf16 matmuls are fast (AMX; GPUs); its scores vs fp32: Spearman 0.986-0.999
    proj_dtype: Literal["fp32", "bf16", "auto"] = "fp32"
    ridge: NonNegative = 0.0
    use_q: bool = True
    seed: TrakSeed = 0
    batch_size: Count = 128
    cache_gb: NonNegative = 2.0


class LdsBlock(ConfigModel):
    alpha: Annotated[float, Field(gt=0, lt=1)] = 0.5
    # >= 3: a rank correlation over subsets
    m: Annotated[int, Field(ge=3, le=100_000)] = 64
    seed: Seed = 0
    bootstrap: Annotated[int, Field(gt=0, le=1_000_000)] = 1000


class AttributionConfig(ConfigModel):
    kind: Literal["attribution"] = Field("attribution", exclude=True)
    name: Name
    data: DataBlock = DataBlock()
    model: ModelBlock = ModelBlock()
    train: TrainBlock = TrainBlock()
    trak: TrakBlock = TrakBlock()
    lds: LdsBlock = LdsBlock()
    slurm: Any = Field(None, exclude=True)  # read by hpc/resources.py, never here

    @property
    def widths(self) -> tuple[float, ...]:
        """Width multipliers, smallest first."""
        return tuple(sorted(self.model.widths))

    @property
    def width_names(self) -> list[str]:
        return [width_name(w) for w in self.widths]

    @property
    def reference(self) -> str:
        return width_name(max(self.widths))

    @property
    def ckpt_epochs(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.trak.checkpoints))) or (self.train.epochs,)

    @property
    def n_models(self) -> int:
        """Ensemble size per width: members x checkpoints."""
        return self.trak.ensemble * len(self.ckpt_epochs)

    def width_of(self, name: str) -> float:
        return dict(zip(self.width_names, self.widths))[name]

    def fingerprint(self) -> str:
        """16-hex hash of everything that determines results (the name, threads and the
        projection cache size excluded)."""
        d = self.model_dump(exclude={"name": True, "train": {"threads"}, "trak": {"cache_gb"}})
        d["model"]["widths"] = list(self.widths)
        d["trak"]["checkpoints"] = list(self.ckpt_epochs)
        d["version"] = RESULT_VERSION
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def width_name(w: float) -> str:
    return f"k{w:g}"


def parse(raw: dict) -> AttributionConfig:
    """Validate a `kind: attribution` mapping (the `slurm` block is left to hpc). Raises
    ConfigError naming the key path."""
    cfg = parse_model(AttributionConfig, raw)
    widths = cfg.model.widths
    if not widths or len(set(widths)) != len(widths):
        raise ConfigError("model.widths", f"must be a non-empty list of distinct numbers, got {widths!r}")
    for i, e in enumerate(cfg.trak.checkpoints):
        if not 1 <= e <= cfg.train.epochs:
            raise ConfigError(f"trak.checkpoints[{i}]",
                              f"must be an epoch in 1..{cfg.train.epochs}, got {e!r}")
    d = cfg.data
    if d.n_train * cfg.lds.alpha < 2:
        raise ConfigError("lds.alpha", f"alpha * data.n_train must be >= 2, got "
                                       f"{cfg.lds.alpha} * {d.n_train}")
    if d.files:
        for i, pattern in enumerate(d.files):
            if not glob.glob(pattern):
                where = "data.data_files" + (f"[{i}]" if isinstance(d.data_files, list) else "")
                raise ConfigError(where, f"{pattern!r} matches no file")
    elif d.source in BUILTIN_SIZES:
        check_split_size(d.source, BUILTIN_SIZES[d.source], d.n_train, d.n_targets)
    elif not HUB_RE.fullmatch(d.source):
        raise ConfigError("data.source", f"must be mnist5k, digits or a datasets hub id like "
                                         f"'cifar10' or 'owner/name', got {d.source[:100]!r}")
    return cfg


def check_split_size(source: str, size: int, n_train: int, n_targets: int) -> None:
    """Refuse (at `data.n_train`) a train + target split larger than the source."""
    if n_train + n_targets > size:
        raise ConfigError("data.n_train", f"n_train + n_targets = {n_train + n_targets} exceeds "
                                          f"the {size} examples of {source[:100]!r}")
