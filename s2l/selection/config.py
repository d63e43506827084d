"""The selection sweep file (`kind: selection`), declared as typed blocks.

    kind: selection
    name: selection-cloze
    seeds: [0, 1, 2]                 # seeds of the final (reference-size) trainings: CIs
    data: {seq_len: 64, ...}         # s2l.data.DataConfig: its domains feed the pool
    test_sets: {...}                 # s2l.data.DataConfig test sets; the target is one of them
    target: {test_set: cloze, target_frac: 0.5, seed: 0}
    pool: {per_domain: 400, seed: 0}
    proxies: {sizes: [20k, 50k], models: 3, subset_frac: 0.5, steps: 200}
    reference: {size: 200k, steps: 400, as_proxy: true}
    select: {n: 700, methods: [dsdm, random, dsir], seed: 0}
    trak: {proj_dim: 512, ridge: 0.0, batch_size: 16, seed: 0, log_odds: false,
           target_tokens: full}     # answer: only the answer tokens of a target example
    dsir: {buckets: 10000, ngrams: 2}
    train: {...}                     # s2l.config.TrainConfig, shared by proxies and reference
    slurm: {...}                     # read by hpc/resources.py, keyed by size name

Sizes are names of `s2l.model.LADDER`. `reference.as_proxy: true` adds the reference size to
the proxies (the "selection by the reference-size model itself" baseline). Every value is
checked at parse time with its key path; what depends on the data (the pool's real size when
a domain is short) is checked by the study's `prepare` before the out dir exists.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, InstanceOf

from s2l.config import (ConfigError, ConfigModel, Count, Name, NonNegative, Seed, Seeds, Section,
                        TrainConfig, parse_model)
from s2l.data.config import DataConfig
from s2l.model import LADDER, ModelShape

METHODS = ("dsdm", "random", "dsir")
#: which tokens of a target example make its datamodel output: the answer tokens the task
#: scores, or the whole text (prompt + answer), a less noisy signal for tiny proxies
TARGET_TOKENS = ("full", "answer")
#: bump when a code change alters what any task computes: it invalidates every done marker
RESULT_VERSION = 2  # 2: TRAK projection signs drawn 32 bits at a time (another P per seed)
#: training fields that change speed or bookkeeping only, not results
_SPEED_ONLY = ("compile", "eval_batch_size", "checkpoint_every", "log_every", "threads")

Size = Literal[tuple(LADDER)]
# The projection seed enters torch generator seeds as seed * 100_003 * 2^20 (s2l.trak.project),
# which must stay below 2^64.
TrakSeed = Annotated[int, Field(ge=0, le=10 ** 8)]


class TargetBlock(ConfigModel):
    test_set: Name = "cloze"  # a test set of the suite; its samples split into target/holdout
    target_frac: Annotated[float, Field(gt=0, lt=1)] = 0.5
    seed: Seed = 0


class PoolBlock(ConfigModel):
    per_domain: Count = 400  # candidate sequences of seq_len + 1 tokens per domain
    seed: Seed = 0


class ProxiesBlock(ConfigModel):
    sizes: Annotated[list[Size], Field(min_length=1)] = ["20k", "50k"]
    models: Annotated[int, Field(gt=0, le=1000)] = 3
    subset_frac: Annotated[float, Field(gt=0, le=1)] = 0.5
    steps: Count = 200


class ReferenceBlock(ConfigModel):
    size: Size = "200k"
    steps: Count = 400
    as_proxy: bool = True


class SelectBlock(ConfigModel):
    n: Count = 700
    methods: list[Literal[METHODS]] = list(METHODS)
    seed: Seed = 0


class TrakBlock(ConfigModel):
    proj_dim: Annotated[int, Field(gt=0, le=1 << 16)] = 512
    ridge: NonNegative = 0.0
    batch_size: Count = 16
    seed: TrakSeed = 0
    log_odds: bool = False
    target_tokens: Literal[TARGET_TOKENS] = "full"


class DsirBlock(ConfigModel):
    buckets: Annotated[int, Field(gt=0, le=10 ** 8)] = 10000
    ngrams: Annotated[int, Field(ge=1, le=3)] = 2


class SelectionConfig(ConfigModel):
    kind: Literal["selection"] = Field("selection", exclude=True)
    name: Name
    seeds: Annotated[Seeds, Field(max_length=1000)] = [0, 1, 2]
    data: InstanceOf[DataConfig] = Field(exclude=True)  # s2l.data.DataConfig (of `data` + `test_sets`)
    test_sets: Any = Field(None, exclude=True)  # read into `data`
    train: InstanceOf[TrainConfig] = Field(exclude=True)
    target: TargetBlock = TargetBlock()
    pool: PoolBlock = PoolBlock()
    proxies: ProxiesBlock = ProxiesBlock()
    reference: ReferenceBlock = ReferenceBlock()
    select: SelectBlock = SelectBlock()
    trak: TrakBlock = TrakBlock()
    dsir: DsirBlock = DsirBlock()
    slurm: Any = Field(None, exclude=True)  # read by hpc/resources.py, never here

    @property
    def all_proxies(self) -> tuple[str, ...]:
        """Proxy sizes whose scores select data, smallest first (the reference last if asked)."""
        sizes = list(self.proxies.sizes)
        if self.reference.as_proxy and self.reference.size not in sizes:
            sizes.append(self.reference.size)
        return tuple(sorted(sizes, key=lambda s: shape_of(s).non_embedding_params()))

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.select.methods))

    def selections(self) -> list[str]:
        """Names of the selected datasets (the store's `mixture` coordinate)."""
        out = [f"dsdm-{p}" for p in self.all_proxies] if "dsdm" in self.methods else []
        return out + [m for m in self.methods if m != "dsdm"]

    def fingerprint(self) -> str:
        """16-hex hash of everything that determines results (name, slurm and the training
        fields that change only speed or bookkeeping excluded)."""
        d = self.model_dump(exclude={"name", "seeds"})  # seeds: a tuple the serializer warns on
        d["seeds"] = list(self.seeds)
        d["data"] = self.data.fingerprint()
        d["train"] = {k: v for k, v in dataclasses.asdict(self.train).items() if k not in _SPEED_ONLY}
        d["select"]["methods"] = list(self.methods)
        d["version"] = RESULT_VERSION
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def shape_of(size: str) -> ModelShape:
    d, n_layers, n_heads = LADDER[size]
    return ModelShape(d, n_layers, n_heads)


def parse(raw: dict, path: Path) -> SelectionConfig:
    """Validate a `kind: selection` mapping (the `slurm` block is left to hpc); raises
    ConfigError naming the key path."""
    if not isinstance(raw, dict):
        raise ConfigError("", "the sweep file must hold a mapping")
    # the data layer owns the `data` and `test_sets` blocks
    data = DataConfig.from_sections(Section(raw.get("data"), "data"),
                                    Section(raw.get("test_sets"), "test_sets"))
    train = TrainConfig.from_section(Section(raw.get("train"), "train"))
    cfg = parse_model(SelectionConfig, {"name": path.stem, **raw, "data": data, "train": train})

    names = data.test_set_names()
    if cfg.target.test_set not in names:
        raise ConfigError("target.test_set",
                          f"no test set named {cfg.target.test_set!r}; test sets are {names}")
    if cfg.target.test_set.startswith("heldout-"):
        raise ConfigError("target.test_set", "pick a cloze, qa, choice or real benchmark set")
    if len(set(cfg.proxies.sizes)) != len(cfg.proxies.sizes):
        raise ConfigError("proxies.sizes", f"has duplicates: {cfg.proxies.sizes}")
    pool_size = cfg.pool.per_domain * len(data.domains)
    if not cfg.select.n < pool_size:
        raise ConfigError("select.n", f"must be < the pool size {pool_size} (pool.per_domain x "
                                      f"{len(data.domains)} domains), got {cfg.select.n}")
    if "random" not in cfg.select.methods:
        raise ConfigError("select.methods", "must include 'random': gains are measured against it")
    return cfg
