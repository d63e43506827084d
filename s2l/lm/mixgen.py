"""Random mixtures for a sweep file: `random_mixtures:` drawn from a Dirichlet, with bounds.

    random_mixtures:
      count: 24                 # 1..10000 mixtures
      concentration: 1.0        # Dirichlet alpha: a number, or {domain: number} for every domain
      seed: 0
      min_weight: {code: 0.05}  # per-domain bounds on the normalised weight (default 0 / 1)
      max_weight: {quotes: 0.5}
      prefix: rnd               # names rnd-000, rnd-001, ... (4 digits from 1001 mixtures on)

Stable by construction: mixture i is drawn from its own generator, numpy's PCG64 seeded with
(seed, i), so its name and weights depend only on the seed, the bounds, the concentration and
i. Changing `count` keeps the first mixtures; adding named mixtures changes none of them.

Bounds are enforced by rejection: each mixture takes the first draw of its own stream that
lies inside the box [min_weight, max_weight] (batches of `BATCH` draws, at most
`MAX_DRAWS` in all), so the mixtures follow the Dirichlet truncated to the box exactly (a
projection onto the box would pile mass on its faces). Bounds so tight that a mixture finds no
draw in `MAX_DRAWS` are a `ConfigError`: widen them or raise the concentration.

Weights are rounded to `DECIMALS` places before they are normalised like any named mixture's,
so the cell ids (which hash the weights bit for bit) do not depend on the last bits of the
gamma sampler. numpy does not promise the same Dirichlet stream across versions; a stream
that changed would show as changed cell ids (so no result is ever reused for other weights).
"""
from __future__ import annotations

from typing import Annotated, Any

import numpy as np
import pydantic

from s2l.config import ConfigError, ConfigModel, Name, Seed, key_path, parse_model, shown

MAX_COUNT = 10_000
BATCH = 64  # draws per batch of the rejection sampler
MAX_DRAWS = 64 * BATCH  # per mixture, before the bounds are declared too tight
DECIMALS = 6
#: concentration outside [1e-3, 1e6] makes the sampler degenerate (all mass on one domain
#: or all weights equal to 7 digits), which no user means
Concentration = Annotated[float, pydantic.Field(ge=1e-3, le=1e6)]
Fraction = Annotated[float, pydantic.Field(ge=0, le=1)]


class RandomMixtures(ConfigModel):
    """The `random_mixtures:` block as written (domains are checked by `expand`)."""

    count: Annotated[int, pydantic.Field(gt=0, le=MAX_COUNT)]
    # a number or a mapping, checked by `parse` (a pydantic union would name its members in
    # the error's key path)
    concentration: Any = 1.0
    seed: Seed = 0
    min_weight: dict[str, Fraction] = {}
    max_weight: dict[str, Fraction] = {}
    prefix: Name = "rnd"


def names(block: RandomMixtures) -> list[str]:
    """`prefix-000` ... in draw order; 3 digits, 4 from 1001 mixtures on."""
    width = max(3, len(str(block.count - 1)))
    return [f"{block.prefix}-{i:0{width}d}" for i in range(block.count)]


def parse(raw, domains: list[str], path: str = "random_mixtures") -> RandomMixtures:
    """Validate the block against the sweep's domains; ConfigError naming the key path."""
    block = parse_model(RandomMixtures, raw, path)
    conc = block.concentration
    parse_model(dict[str, Concentration] if isinstance(conc, dict) else Concentration, conc,
                f"{path}.concentration")
    if len(names(block)[-1]) > 64:
        raise ConfigError(f"{path}.prefix", f"{shown(block.prefix)} is too long: the names "
                                            "it makes must be at most 64 characters")
    for key in ("concentration", "min_weight", "max_weight"):
        value = getattr(block, key)
        if isinstance(value, dict):
            for dom in value:
                if dom not in domains:
                    raise ConfigError(key_path(f"{path}.{key}", dom),
                                      f"no domain named {shown(dom)}; domains are {domains}")
    if isinstance(block.concentration, dict):
        missing = [d for d in domains if d not in block.concentration]
        if missing:
            raise ConfigError(f"{path}.concentration", f"give every domain a concentration "
                                                       f"(or one number); missing {missing}")
    lo, hi = bounds(block, domains)
    for d, a, b in zip(domains, lo, hi):
        if a > b:
            raise ConfigError(key_path(f"{path}.max_weight", d),
                              f"must be >= min_weight.{d} ({a}), got {b}")
    if lo.sum() > 1 + 1e-12:
        raise ConfigError(f"{path}.min_weight", f"sums to {lo.sum():.6g}; the weights of a "
                                                "mixture sum to 1, so the minima must sum to <= 1")
    if hi.sum() < 1 - 1e-12:
        raise ConfigError(f"{path}.max_weight", f"sums to {hi.sum():.6g} (domains not named "
                                                "count 1); the maxima must sum to >= 1")
    return block


def bounds(block: RandomMixtures, domains: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(min (D,), max (D,)) per domain in `domains` order."""
    lo = np.array([block.min_weight.get(d, 0.0) for d in domains])
    hi = np.array([block.max_weight.get(d, 1.0) for d in domains])
    return lo, hi


def expand(block: RandomMixtures, domains: list[str], path: str = "random_mixtures"
           ) -> list[tuple[str, tuple[float, ...]]]:
    """[(name, weights (D,) in `domains` order, rounded, summing to ~1)] for every mixture."""
    alpha = (np.array([block.concentration[d] for d in domains])
             if isinstance(block.concentration, dict)
             else np.full(len(domains), float(block.concentration)))
    lo, hi = bounds(block, domains)
    out = []
    for i, name in enumerate(names(block)):
        rng = np.random.default_rng([block.seed, i])
        for _ in range(MAX_DRAWS // BATCH):
            w = np.round(rng.dirichlet(alpha, size=BATCH), DECIMALS)
            with np.errstate(invalid="ignore", divide="ignore"):
                w = w / w.sum(1, keepdims=True)
            ok = np.isfinite(w).all(1) & (w >= lo).all(1) & (w <= hi).all(1)
            if ok.any():
                out.append((name, tuple(float(x) for x in w[int(np.argmax(ok))])))
                break
        else:
            raise ConfigError(path, f"{name}: no Dirichlet draw in {MAX_DRAWS} fell inside "
                                    "min_weight/max_weight; widen the bounds or raise the "
                                    "concentration (draws concentrate near the centre)")
    return out


def describe(block: RandomMixtures) -> str:
    """One line for the dry run."""
    conc = block.concentration if not isinstance(block.concentration, dict) else "per domain"
    return (f"{block.count} random mixtures {names(block)[0]}.. (Dirichlet, concentration "
            f"{conc}, seed {block.seed}" + (", bounded" if block.min_weight or block.max_weight
                                            else "") + ")")

