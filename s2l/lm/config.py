"""The LM sweep file (`kind: lm`): scales x mixtures x seeds, validated, expanded into cells.

    name: grid
    seeds: [0]
    tokens_per_param: 20          # Chinchilla; `token_multiplier` scales every budget
    scales:
      xs: {preset: 20k}           # a named shape from s2l.model.LADDER, or
      m:  {d_model: 96, n_layers: 3, n_heads: 4, tokens: 2000000}
    data: {...}                   # domains, tokenizer, seq_len (s2l.data.DataConfig)
    mixtures:
      code-heavy: {weights: {code: 0.7, prose: 0.3}}
    test_sets: {...}              # s2l.data.DataConfig
    train: {...}                  # s2l.config.TrainConfig
    tracking: {uri: ..., experiment: ...}
    slurm: {...}                  # per-scale resources, read by hpc/resources.py

A cell's id is a hash of everything that determines its result (shape, tokens, normalised
weights, seed, training recipe, data fingerprint, and `RESULT_VERSION`, bumped whenever a code
change alters results), so results are reused exactly when they would be reproduced.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic

from s2l.config import (ConfigError, ConfigModel, Name, NonNegative, PositiveNumber,
                        Seeds, Section, TrackingConfig, TrainConfig, check_name, key_path,
                        parse_model)
from s2l.model import LADDER, ModelShape, chinchilla_tokens, training_flops

#: Bump when a code change alters what a cell computes: it changes every cell id.
RESULT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Scale:
    name: str
    shape: ModelShape
    tokens: int

    @property
    def params(self) -> int:
        return self.shape.non_embedding_params()

    @property
    def flops(self) -> float:
        return training_flops(self.params, self.tokens)


@dataclasses.dataclass(frozen=True)
class Mixture:
    name: str
    weights: tuple[tuple[str, float], ...]  # (domain, weight) normalised to sum 1, all domains

    def as_dict(self) -> dict[str, float]:
        return dict(self.weights)


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    name: str
    scales: tuple[Scale, ...]
    mixtures: tuple[Mixture, ...]
    seeds: tuple[int, ...]
    data: object  # s2l.data.DataConfig
    train: TrainConfig
    tracking: TrackingConfig
    yaml_text: str = ""

    def cells(self) -> list["Cell"]:
        return [Cell(self, sc, mx, seed) for sc in self.scales for mx in self.mixtures
                for seed in self.seeds]


@dataclasses.dataclass(frozen=True)
class Cell:
    sweep: SweepConfig
    scale: Scale
    mixture: Mixture
    seed: int

    @property
    def key(self) -> str:
        return f"{self.scale.name}/{self.mixture.name}/{self.seed}"

    @property
    def steps(self) -> int:
        per_step = self.sweep.train.batch_size * self.sweep.data.seq_len
        return max(1, math.ceil(self.scale.tokens / per_step))

    def identity(self) -> dict:
        """Everything that determines this cell's result (hashed into its id)."""
        return {"version": RESULT_VERSION, "shape": dataclasses.asdict(self.scale.shape),
                "steps": self.steps, "weights": self.mixture.weights, "seed": self.seed,
                "train": _result_fields(self.sweep.train), "data": self.sweep.data.fingerprint()}

    @property
    def id(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _result_fields(train: TrainConfig) -> dict:
    # Fields that only change speed, logging or bookkeeping do not change a cell's id.
    d = dataclasses.asdict(train)
    for k in ("compile", "eval_batch_size", "checkpoint_every", "log_every", "threads",
              "diverge_factor", "max_eval_excess"):
        d.pop(k)
    return d


#: the largest token budget of a scale: 1e15, ~70x the largest published LLM runs; beyond it
#: a budget is a typo (or an overflow: 1e308 tokens_per_param)
MAX_TOKENS = 10 ** 15


class _Top(ConfigModel):
    """The sweep file's top level; the blocks are read one by one with their own paths."""

    kind: Literal["lm"] = "lm"
    name: Name | None = None
    seeds: Seeds = [0]
    tokens_per_param: PositiveNumber = 20.0
    token_multiplier: PositiveNumber = 1.0
    scales: dict[Name, Any]
    mixtures: dict[Name, Any]
    data: Any = None  # s2l.data.DataConfig
    test_sets: Any = None  # s2l.data.DataConfig
    train: Any = None
    tracking: Any = None
    slurm: Any = None  # read by hpc.resources; the library knows no scheduler


class _ScaleBlock(ConfigModel):
    """`{preset: NAME}` or `{d_model, n_layers, n_heads}`; `tokens` overrides the budget."""

    preset: str | None = None
    d_model: Annotated[int, pydantic.Field(gt=0, le=65536)] | None = None
    n_layers: Annotated[int, pydantic.Field(gt=0, le=1024)] | None = None
    n_heads: Annotated[int, pydantic.Field(gt=0, le=1024)] | None = None
    mlp_ratio: Annotated[int, pydantic.Field(gt=0, le=64)] = 4
    tokens: Annotated[int, pydantic.Field(gt=0, le=MAX_TOKENS)] | None = None


class _MixtureBlock(ConfigModel):
    weights: dict[str, NonNegative]


def parse_sweep(raw: dict, path: Path) -> SweepConfig:
    """Validate a `kind: lm` sweep mapping; raises ConfigError naming the key path."""
    from s2l.data import DataConfig  # the data layer owns its own blocks

    top = parse_model(_Top, raw)
    name = top.name if top.name is not None else check_name("name", path.stem)
    data = DataConfig.from_sections(Section(top.data, "data"), Section(top.test_sets, "test_sets"))
    train = parse_model(TrainConfig, top.train, "train")
    if train.batch_size and data.seq_len <= 1:
        raise ConfigError("data.seq_len", "must be > 1")
    scales = _parse_scales(top.scales, top.tokens_per_param, top.token_multiplier)
    mixtures = _parse_mixtures(top.mixtures, list(data.domains))
    tracking = parse_model(TrackingConfig, top.tracking, "tracking")
    return SweepConfig(name, scales, mixtures, tuple(top.seeds), data, train, tracking,
                       yaml_text=path.read_text(encoding="utf-8") if path.is_file() else "")


def _parse_scales(blocks: dict[str, Any], tokens_per_param: float, multiplier: float
                  ) -> tuple[Scale, ...]:
    if not blocks:
        raise ConfigError("scales", "must name at least one scale")
    out = []
    for name, raw in blocks.items():
        where = key_path("scales", name)
        b = parse_model(_ScaleBlock, raw, where)
        if b.preset is not None:
            if b.preset not in LADDER:
                raise ConfigError(f"{where}.preset", f"unknown preset {b.preset[:40]!r}; one of "
                                                     f"{list(LADDER)}")
            for key in ("d_model", "n_layers", "n_heads"):
                if getattr(b, key) is not None:
                    raise ConfigError(f"{where}.{key}", "give either a preset or d_model, "
                                                        "n_layers and n_heads, not both")
            d, n_layers, n_heads = LADDER[b.preset]
        else:
            for key in ("d_model", "n_layers", "n_heads"):
                if getattr(b, key) is None:
                    raise ConfigError(f"{where}.{key}", "is required (or give a preset)")
            d, n_layers, n_heads = b.d_model, b.n_layers, b.n_heads
        if d % n_heads:
            raise ConfigError(f"{where}.n_heads", f"d_model={d} must be divisible by n_heads={n_heads}")
        shape = ModelShape(d, n_layers, n_heads, b.mlp_ratio)
        tokens = b.tokens or _chinchilla_budget(name, shape, tokens_per_param, multiplier)
        out.append(Scale(name, shape, tokens))
    return tuple(out)


def _chinchilla_budget(name: str, shape: ModelShape, tokens_per_param: float,
                       multiplier: float) -> int:
    """tokens_per_param x token_multiplier x params, refused when it overflows or rounds to 0."""
    per_param = tokens_per_param * multiplier
    budget = shape.non_embedding_params() * per_param
    if not 1 <= budget <= MAX_TOKENS:  # also catches inf (overflow); NaN cannot occur
        raise ConfigError("tokens_per_param", f"x token_multiplier x params of scale {name!r} is "
                                              f"{budget:.3g} tokens; must be in [1, {MAX_TOKENS:.0e}]")
    return chinchilla_tokens(shape.non_embedding_params(), per_param)


def _parse_mixtures(blocks: dict[str, Any], domains: list[str]) -> tuple[Mixture, ...]:
    if not blocks:
        raise ConfigError("mixtures", "must name at least one mixture")
    out = []
    for name, raw in blocks.items():
        where = key_path("mixtures", name)
        weights = parse_model(_MixtureBlock, raw, where).weights
        for dom in weights:
            if dom not in domains:
                raise ConfigError(f"{where}.weights.{dom}", f"no domain named {dom[:40]!r}; domains "
                                                           f"are {domains}")
        # summed in file order, as always: the normalised weights enter the cell ids bit for bit
        total = sum(weights.values())
        if total <= 0:
            raise ConfigError(f"{where}.weights", "weights must not all be zero")
        if not math.isfinite(total):
            raise ConfigError(f"{where}.weights", f"weights sum to {total} (overflow); use "
                                                  "smaller numbers: only their ratios matter")
        norm = tuple((d, weights.get(d, 0.0) / total) for d in domains)
        out.append(Mixture(name, norm))
    return tuple(out)
