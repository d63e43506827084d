"""Token budgets against the data: does a scale's budget repeat its mixture's domains?

A cell of scale S and mixture w draws `S.tokens` training tokens, `w[d] * S.tokens` of them
from domain d (s2l.data.mixture samples windows at random, so a small domain is simply seen
several times). Its repetition factor is max over domains d with w[d] > 0 of
`w[d] * S.tokens / T[d]`, where T[d] is the number of training tokens domain d holds.
A factor above 1 means some text is seen more than once; that is a warning at submit and in
`--dry-run`, not a refusal: repeating data is a legitimate choice (tiny demo corpora do it by
design), and only the user knows whether it is intended (docs/architecture.md, "Data
preparation").

T[d] is *measured* once the data is prepared (the training tokens in its stats.json) and
*estimated* before: the source bytes the preparation plan lists (for built-in domains, their
cap `max_mb_per_domain`, an upper bound) times (1 - heldout_frac) divided by
`BYTES_PER_TOKEN` (~4 bytes per token for a 50k-vocabulary BPE on English; small vocabularies
make more tokens per byte, so the estimate under-counts tokens and over-states repetition).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

BYTES_PER_TOKEN = 4.0


@dataclasses.dataclass(frozen=True)
class Repetition:
    scale: str
    mixture: str
    tokens: int  # the scale's training tokens
    factor: float  # max over the mixture's domains of w[d] * tokens / T[d]
    domain: str  # the domain attaining it


def domain_tokens(cfg, plan) -> tuple[dict[str, float], str]:
    """({domain: training tokens it holds}, how they were obtained: "measured" from a finished
    preparation's stats, else "estimated ...")."""
    stats_path = Path(plan.root) / "stats.json"
    if (Path(plan.root) / "COMPLETE").exists():
        try:
            stats = json.loads(stats_path.read_text())
            return ({d: float(stats["domains"][d]["train_tokens"]) for d in cfg.domains},
                    "measured (prepared data)")
        except (OSError, ValueError, KeyError):
            pass  # an unreadable stats file: estimate as if not prepared
    by = {d: 0 for d in cfg.domains}
    for s in plan.shards:
        by[s.domain] += s.approx_bytes
    keep = 1.0 - cfg.heldout_frac
    return ({d: b * keep / BYTES_PER_TOKEN for d, b in by.items()},
            f"estimated from source bytes / {BYTES_PER_TOKEN:g} per token before preparation "
            "(built-in domains: their max_mb_per_domain cap)")


def repetitions(sweep, tokens_by_domain: dict[str, float]) -> list[Repetition]:
    """One `Repetition` per scale x mixture, in sweep order."""
    out = []
    for sc in sweep.scales:
        for mix in sweep.mixtures:
            worst, dom = 0.0, ""
            for d, w in mix.weights:
                if w <= 0:
                    continue
                have = tokens_by_domain.get(d, 0.0)
                f = float("inf") if have <= 0 else w * sc.tokens / have
                if f > worst:
                    worst, dom = f, d
            out.append(Repetition(sc.name, mix.name, int(sc.tokens), worst, dom))
    return out


def budget_warnings(sweep, plan) -> list[str]:
    """Lines for each scale whose budget repeats some mixture's domain (factor > 1): the
    worst mixture and domain, how many mixtures repeat, and where the domain sizes came from."""
    tokens, how = domain_tokens(sweep.data, plan)
    reps = repetitions(sweep, tokens)
    lines = []
    for sc in sweep.scales:
        mine = [r for r in reps if r.scale == sc.name and r.factor > 1]
        if not mine:
            continue
        w = max(mine, key=lambda r: r.factor)
        lines.append(f"token budget: scale {sc.name} ({sc.tokens:,} tokens) repeats data in "
                     f"{len(mine)} of {len(sweep.mixtures)} mixtures, at most {w.factor:.2f}x "
                     f"(domain {w.domain} in mixture {w.mixture}, "
                     f"{tokens.get(w.domain, 0):,.0f} tokens)")
    if lines:
        lines.append(f"  domain sizes {how}")
    return lines
