"""The selection sweep file (`kind: selection`), validated into a frozen config.

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
    slurm: {...}                     # s2l.config.SlurmConfig, keyed by size name

Sizes are names of `s2l.model.LADDER`. `reference.as_proxy: true` adds the reference size to
the proxies (the "selection by the reference-size model itself" baseline).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from s2l.config import (ConfigError, Section, SlurmConfig, TrainConfig, check_name, parse_seeds,
                        positive)
from s2l.model import LADDER, ModelShape

METHODS = ("dsdm", "random", "dsir")
#: which tokens of a target example make its datamodel output: the answer tokens the task
#: scores, or the whole text (prompt + answer), a less noisy signal for tiny proxies
TARGET_TOKENS = ("full", "answer")
#: bump when a code change alters what any task computes: it invalidates every done marker
RESULT_VERSION = 1


def _fraction_open(v):
    return None if 0 < v < 1 else "must be in (0, 1)"


@dataclasses.dataclass(frozen=True)
class SelectionConfig:
    name: str
    data: object  # s2l.data.DataConfig
    train: TrainConfig
    slurm: SlurmConfig
    seeds: tuple[int, ...] = (0, 1, 2)
    target_set: str = "cloze"
    target_frac: float = 0.5
    target_seed: int = 0
    per_domain: int = 400
    pool_seed: int = 0
    proxy_sizes: tuple[str, ...] = ("20k", "50k")
    proxy_models: int = 3
    subset_frac: float = 0.5
    proxy_steps: int = 200
    reference: str = "200k"
    reference_steps: int = 400
    reference_as_proxy: bool = True
    n_select: int = 700
    methods: tuple[str, ...] = METHODS
    select_seed: int = 0
    proj_dim: int = 512
    ridge: float = 0.0
    trak_batch_size: int = 16
    trak_seed: int = 0
    log_odds: bool = False
    target_tokens: str = "full"
    dsir_buckets: int = 10000
    dsir_ngrams: int = 2
    yaml_text: str = ""

    @property
    def all_proxies(self) -> tuple[str, ...]:
        """Proxy sizes whose scores select data, smallest first (the reference last if asked)."""
        sizes = list(self.proxy_sizes)
        if self.reference_as_proxy and self.reference not in sizes:
            sizes.append(self.reference)
        return tuple(sorted(sizes, key=lambda s: shape_of(s).non_embedding_params()))

    def selections(self) -> list[str]:
        """Names of the selected datasets (the store's `mixture` coordinate)."""
        out = [f"dsdm-{p}" for p in self.all_proxies] if "dsdm" in self.methods else []
        return out + [m for m in self.methods if m != "dsdm"]

    def fingerprint(self) -> str:
        """16-hex hash of everything that determines results (slurm and yaml text excluded)."""
        d = dataclasses.asdict(self)
        for k in ("slurm", "yaml_text", "name"):
            d.pop(k)
        d["data"] = self.data.fingerprint()
        for k in ("compile", "eval_batch_size", "checkpoint_every", "log_every", "threads"):
            d["train"].pop(k)
        d["version"] = RESULT_VERSION
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def shape_of(size: str) -> ModelShape:
    d, n_layers, n_heads = LADDER[size]
    return ModelShape(d, n_layers, n_heads)


def _size(where: str, v) -> str:
    if v not in LADDER:
        raise ConfigError(where, f"unknown model size {v!r}; one of {list(LADDER)}")
    return v


def parse(raw: dict, path: Path) -> SelectionConfig:
    """Validate a `kind: selection` mapping; raises ConfigError naming the key path."""
    from s2l.data import DataConfig

    d = SelectionConfig
    top = Section(raw)
    top.get("kind", str)
    name = check_name("name", top.get("name", str, path.stem))
    seeds = parse_seeds(top, list(d.seeds))
    data = DataConfig.from_sections(top.section("data"), top.section("test_sets"))
    train = TrainConfig.from_section(top.section("train"))

    t = top.section("target")
    names = data.test_set_names()
    target_set = t.get("test_set", str, d.target_set,
                       lambda v: None if v in names else f"no test set named {v!r}; test sets are {names}")
    if target_set.startswith("heldout-"):
        raise ConfigError(t.key("test_set"), "pick a cloze, qa, choice or real benchmark set")
    target = dict(target_set=target_set,
                  target_frac=t.get("target_frac", float, d.target_frac, _fraction_open),
                  target_seed=t.get("seed", int, d.target_seed))
    t.finish()

    p = top.section("pool")
    pool = dict(per_domain=p.get("per_domain", int, d.per_domain, positive),
                pool_seed=p.get("seed", int, d.pool_seed))
    p.finish()

    pr = top.section("proxies")
    sizes = pr.get("sizes", list, list(d.proxy_sizes))
    if not sizes:
        raise ConfigError(pr.key("sizes"), "must list at least one proxy size")
    sizes = [_size(f"{pr.key('sizes')}[{i}]", s) for i, s in enumerate(sizes)]
    proxies = dict(proxy_sizes=tuple(sizes),
                   proxy_models=pr.get("models", int, d.proxy_models, positive),
                   subset_frac=pr.get("subset_frac", float, d.subset_frac,
                                      lambda v: None if 0 < v <= 1 else "must be in (0, 1]"),
                   proxy_steps=pr.get("steps", int, d.proxy_steps, positive))
    pr.finish()

    r = top.section("reference")
    ref = dict(reference=_size(r.key("size"), r.get("size", str, d.reference)),
               reference_steps=r.get("steps", int, d.reference_steps, positive),
               reference_as_proxy=r.get("as_proxy", bool, d.reference_as_proxy))
    r.finish()

    s = top.section("select")
    pool_size = pool["per_domain"] * len(data.domains)
    n = s.get("n", int, d.n_select, lambda v: None if 0 < v < pool_size else
              f"must be in (0, pool size {pool_size}) (pool.per_domain x {len(data.domains)} domains)")
    methods = s.get("methods", list, list(d.methods))
    for i, m in enumerate(methods):
        if m not in METHODS:
            raise ConfigError(f"{s.key('methods')}[{i}]", f"unknown method {m!r}; one of {list(METHODS)}")
    if "random" not in methods:
        raise ConfigError(s.key("methods"), "must include 'random': gains are measured against it")
    sel = dict(n_select=n, methods=tuple(dict.fromkeys(methods)), select_seed=s.get("seed", int, d.select_seed))
    s.finish()

    tr = top.section("trak")
    trak = dict(proj_dim=tr.get("proj_dim", int, d.proj_dim, positive),
                ridge=tr.get("ridge", float, d.ridge, lambda v: None if v >= 0 else "must be >= 0"),
                trak_batch_size=tr.get("batch_size", int, d.trak_batch_size, positive),
                trak_seed=tr.get("seed", int, d.trak_seed),
                log_odds=tr.get("log_odds", bool, d.log_odds),
                target_tokens=tr.get("target_tokens", str, d.target_tokens,
                                     lambda v: None if v in TARGET_TOKENS else
                                     f"must be one of {list(TARGET_TOKENS)}"))
    tr.finish()

    ds = top.section("dsir")
    dsir = dict(dsir_buckets=ds.get("buckets", int, d.dsir_buckets, positive),
                dsir_ngrams=ds.get("ngrams", int, d.dsir_ngrams,
                                   lambda v: None if 1 <= v <= 3 else "must be 1, 2 or 3"))
    ds.finish()

    all_sizes = sorted(set(sizes) | {ref["reference"]})
    slurm = SlurmConfig.from_section(top.section("slurm"), all_sizes)
    top.finish()
    return SelectionConfig(name=name, data=data, train=train, slurm=slurm, seeds=tuple(seeds),
                           **target, **pool, **proxies, **ref, **sel, **trak, **dsir,
                           yaml_text=path.read_text() if path.is_file() else "")

