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
    random_mixtures: {count: 24, seed: 0}   # optional, s2l.lm.mixgen: rnd-000, rnd-001, ...
    reference: {scale: m}         # optional: stages proxies -> predict -> reference;
                                  # {scale: m, seeds: [0, 1]}: more seeds for the reference
    test_sets: {...}              # s2l.data.DataConfig
    train: {...}                  # s2l.config.TrainConfig
    tracking: {uri: ..., experiment: ...}
    slurm: {...}                  # per-scale resources, read by hpc/resources.py

Named mixtures come first, then the random ones (`s2l.lm.mixgen`); `mixtures:` may be left
out when `random_mixtures:` is given. Without `reference:` the sweep is one stage of cells;
with it (`ReferenceConfig`, see `s2l.lm.staged`) the reference scale's cells wait for a
prediction made from the other (proxy) scales. Neither block changes any cell's id.

A cell's id is a hash of everything that determines its result (shape, tokens, normalised
weights, seed, training recipe, data fingerprint, and `RESULT_VERSION`, bumped whenever a code
change alters results), so results are reused exactly when they would be reproduced.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic

from s2l.config import (ConfigError, ConfigModel, Count, Name, NonNegative, PositiveNumber,
                        Seed, Seeds, Section, TrackingConfig, TrainConfig, check_name, key_path,
                        parse_model)
from s2l.lm import mixgen
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
    reference: "ReferenceConfig | None" = None  # None: one stage of cells
    random_mixtures: mixgen.RandomMixtures | None = None  # as written (already expanded)
    #: the top-level `seeds:`, which every proxy scale trains; `seeds` above is every seed of
    #: the store: these plus the reference's own extra seeds (`reference.seeds`). Empty: same.
    proxy_seeds: tuple[int, ...] = ()

    def seeds_for(self, scale: str) -> tuple[int, ...]:
        """The seeds scale `scale` trains: `reference.seeds` for the reference (when given),
        the top-level `seeds:` for every other scale."""
        if self.reference is not None and scale == self.reference.scale:
            return self.seeds
        return self.proxy_seeds or self.seeds

    def cells(self) -> list["Cell"]:
        return [Cell(self, sc, mx, seed) for sc in self.scales for mx in self.mixtures
                for seed in self.seeds_for(sc.name)]

    def scale(self, name: str) -> Scale:
        return next(s for s in self.scales if s.name == name)

    @property
    def proxy_scales(self) -> tuple[Scale, ...]:
        """Every scale but the reference (all of them without a `reference:` block)."""
        ref = self.reference.scale if self.reference else None
        return tuple(s for s in self.scales if s.name != ref)


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

    @functools.cached_property
    def id(self) -> str:
        """16 hex of the sha256 of `identity()`. Computed once per Cell: a driver asks every
        task whether it is done at each poll, and the data fingerprint inside the identity
        walks the whole data config (it was 2,600 walks, ~1/4 of the driver's CPU, per grid).
        A cell's identity is fixed when its sweep is planned."""
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


class ReferenceConfig(ConfigModel):
    """The optional `reference:` block: predict the reference scale from the proxies first.

    objective: the test set the proxies' ranking (and `top_k`) is taken on, or "mean" (the
    mean over test sets of each test set's mean loss). top_k: train only the k mixtures the
    proxies rank best at the reference scale, plus `controls` others drawn with `seed`.
    level: the coverage of the predicted loss intervals; n_boot: bootstrap resamples.
    force_prediction: predict even when reference results exist (marked not preregistered).
    """

    scale: Name
    objective: Name = "mean"
    top_k: Count | None = None
    controls: Annotated[int, pydantic.Field(ge=0, le=mixgen.MAX_COUNT)] = 0
    seed: Seed = 0
    level: Annotated[float, pydantic.Field(ge=0.5, le=0.99)] = 0.9
    n_boot: Annotated[int, pydantic.Field(ge=20, le=10_000)] = 200
    force_prediction: bool = False
    #: the reference scale's own seeds (more than the proxies', for its noise ceiling and
    #: CIs); None: the top-level `seeds:`. Must include every top-level seed.
    seeds: Seeds | None = None


class _Top(ConfigModel):
    """The sweep file's top level; the blocks are read one by one with their own paths."""

    kind: Literal["lm"] = "lm"
    name: Name | None = None
    seeds: Seeds = [0]
    tokens_per_param: PositiveNumber = 20.0
    token_multiplier: PositiveNumber = 1.0
    scales: dict[Name, Any]
    mixtures: dict[Name, Any] = {}
    random_mixtures: Any = None  # s2l.lm.mixgen
    reference: Any = None  # ReferenceConfig
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
    rand = (mixgen.parse(top.random_mixtures, list(data.domains))
            if top.random_mixtures is not None else None)
    mixtures = _parse_mixtures(top.mixtures, list(data.domains), rand)
    tracking = parse_model(TrackingConfig, top.tracking, "tracking")
    reference = (_parse_reference(top.reference, scales, len(mixtures), data.test_set_names())
                 if top.reference is not None else None)
    seeds = tuple(top.seeds)
    if reference is not None and reference.seeds is not None:
        lacking = [k for k in seeds if k not in reference.seeds]
        if lacking:
            raise ConfigError("reference.seeds", f"must include every seed of `seeds:` "
                                                 f"{list(seeds)}; lacks {lacking}")
        # store order: the top-level seeds first, then the reference's extra ones
        seeds, proxy_seeds = seeds + tuple(k for k in reference.seeds if k not in seeds), seeds
    else:
        proxy_seeds = seeds
    return SweepConfig(name, scales, mixtures, seeds, data, train, tracking,
                       yaml_text=path.read_text(encoding="utf-8") if path.is_file() else "",
                       reference=reference, random_mixtures=rand, proxy_seeds=proxy_seeds)


def _parse_reference(raw: Any, scales: tuple[Scale, ...], n_mixtures: int,
                     test_sets: list[str]) -> ReferenceConfig:
    ref = parse_model(ReferenceConfig, raw, "reference")
    names = [s.name for s in scales]
    if ref.scale not in names:
        raise ConfigError("reference.scale", f"no scale named {ref.scale!r}; scales are {names}")
    if len(scales) < 2:
        raise ConfigError("reference.scale", "needs at least one other (proxy) scale to "
                                             "predict it from")
    flops = {s.name: s.flops for s in scales}
    bigger = [n for n in names if n != ref.scale and flops[n] >= flops[ref.scale]]
    if bigger:
        raise ConfigError("reference.scale", f"must cost more training FLOPs than every proxy "
                                             f"scale; {bigger} cost as much or more")
    if ref.objective != "mean" and ref.objective not in test_sets:
        raise ConfigError("reference.objective", f"no test set named {ref.objective!r}; "
                                                 f"one of {['mean', *test_sets]}")
    if ref.controls and ref.top_k is None:
        raise ConfigError("reference.controls", "controls calibrate a top_k selection; "
                                                "give top_k too")
    if ref.top_k is not None and ref.top_k + ref.controls > n_mixtures:
        raise ConfigError("reference.top_k", f"top_k + controls = {ref.top_k + ref.controls} "
                                             f"but the sweep has {n_mixtures} mixtures")
    return ref


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


def _parse_mixtures(blocks: dict[str, Any], domains: list[str],
                    rand: mixgen.RandomMixtures | None = None) -> tuple[Mixture, ...]:
    if not blocks and rand is None:
        raise ConfigError("mixtures", "must name at least one mixture (or give random_mixtures)")
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
    if rand is not None:
        taken = {m.name for m in out}
        for name, weights in mixgen.expand(rand, domains):
            if name in taken:
                raise ConfigError("random_mixtures.prefix", f"makes the name {name!r}, which "
                                                            "mixtures: already has")
            out.append(Mixture(name, tuple(zip(domains, weights))))
    return tuple(out)
