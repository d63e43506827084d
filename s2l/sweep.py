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
    slurm: {...}                  # s2l.config.SlurmConfig

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

from s2l.config import (ConfigError, Section, SlurmConfig, TrackingConfig, TrainConfig,
                        check_name, non_negative, parse_seeds, positive)
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
    slurm: SlurmConfig
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
    for k in ("compile", "eval_batch_size", "checkpoint_every", "log_every", "threads"):
        d.pop(k)
    return d


def parse_sweep(raw: dict, path: Path) -> SweepConfig:
    """Validate a `kind: lm` sweep mapping; raises ConfigError naming the key path."""
    from s2l.data import DataConfig  # the data layer owns its own blocks

    top = Section(raw)
    top.get("kind", str, "lm")
    name = check_name("name", top.get("name", str, path.stem))
    seeds = parse_seeds(top, [0])
    tpp = top.get("tokens_per_param", float, 20.0, positive)
    mult = top.get("token_multiplier", float, 1.0, positive)
    data = DataConfig.from_sections(top.section("data"), top.section("test_sets"))
    train = TrainConfig.from_section(top.section("train"))
    if train.batch_size and data.seq_len <= 1:
        raise ConfigError("data.seq_len", "must be > 1")
    scales = _parse_scales(top.section("scales", required=True), tpp * mult)
    mixtures = _parse_mixtures(top.section("mixtures", required=True), list(data.domains))
    tracking = TrackingConfig.from_section(top.section("tracking"))
    slurm = SlurmConfig.from_section(top.section("slurm"), [s.name for s in scales])
    top.finish()
    return SweepConfig(name, scales, mixtures, tuple(seeds), data, train, tracking, slurm,
                       yaml_text=path.read_text() if path.is_file() else "")


def _parse_scales(sec: Section, tokens_per_param: float) -> tuple[Scale, ...]:
    out = []
    for name, _ in sec.items():
        check_name(sec.key(name), name)
        s = sec.section(name)
        if s.has("preset"):
            preset = s.get("preset", str)
            if preset not in LADDER:
                raise ConfigError(s.key("preset"), f"unknown preset {preset!r}; one of {list(LADDER)}")
            d, n_layers, n_heads = LADDER[preset]
        else:
            d = s.get("d_model", int, check=positive)
            n_layers = s.get("n_layers", int, check=positive)
            n_heads = s.get("n_heads", int, check=positive)
        if d % n_heads:
            raise ConfigError(s.key("n_heads"), f"d_model={d} must be divisible by n_heads={n_heads}")
        shape = ModelShape(d, n_layers, n_heads, s.get("mlp_ratio", int, 4, positive))
        tokens = s.get("tokens", int, None, positive) or chinchilla_tokens(
            shape.non_embedding_params(), tokens_per_param)
        s.finish()
        out.append(Scale(name, shape, tokens))
    if not out:
        raise ConfigError(sec.path, "must name at least one scale")
    return tuple(out)


def _parse_mixtures(sec: Section, domains: list[str]) -> tuple[Mixture, ...]:
    out = []
    for name, _ in sec.items():
        check_name(sec.key(name), name)
        m = sec.section(name)
        w = m.section("weights", required=True)
        weights = {}
        for dom, _ in w.items():
            if dom not in domains:
                raise ConfigError(w.key(dom), f"no domain named {dom!r}; domains are {domains}")
            weights[dom] = w.get(dom, float, check=non_negative)
        total = sum(weights.values())
        if total <= 0:
            raise ConfigError(w.path, "weights must not all be zero")
        m.finish()
        norm = tuple((d, weights.get(d, 0.0) / total) for d in domains)
        out.append(Mixture(name, norm))
    if not out:
        raise ConfigError(sec.path, "must name at least one mixture")
    return tuple(out)
