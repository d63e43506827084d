"""The attribution sweep file (`kind: attribution`), validated into a frozen config.

    name: attribution-digits
    data:  {source: mnist5k, data_files: null, image_size: 16, n_train: 1000, n_targets: 100, seed: 0}
    model: {widths: [0.03125, 0.0625, 0.125, 0.25]}      # ResNet-9 width multipliers k
    train: {epochs: 8, batch_size: 128, lr: 0.2, momentum: 0.9, weight_decay: 5e-4,
            label_smoothing: 0.0, threads: 1}
    trak:  {ensemble: 4, checkpoints: [8], proj_dim: 512, proj_type: rademacher,
            proj_dtype: fp32, ridge: 0.0, use_q: true, seed: 0, batch_size: 128, cache_gb: 2}
    lds:   {alpha: 0.5, m: 64, seed: 0, bootstrap: 1000}
    slurm: {...}                                           # s2l.config.SlurmConfig

The reference (ground-truth) width is the largest one. Width names are "k" + the multiplier
(e.g. "k0.25"); they are what `slurm.resources` is keyed by.
"""
from __future__ import annotations

import dataclasses

from s2l.config import ConfigError, Section, check_name, fraction, non_negative, one_of, positive


@dataclasses.dataclass(frozen=True)
class AttributionConfig:
    name: str
    source: str = "mnist5k"
    data_files: tuple[str, ...] | None = None
    image_size: int | None = 16
    n_train: int = 1000
    n_targets: int = 100
    data_seed: int = 0
    widths: tuple[float, ...] = (0.03125, 0.0625, 0.125, 0.25)
    epochs: int = 8
    batch_size: int = 128
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    threads: int = 1
    ensemble: int = 4
    checkpoints: tuple[int, ...] = ()  # epochs whose checkpoints are ensembled; () = last only
    proj_dim: int = 512
    proj_type: str = "rademacher"
    proj_dtype: str = "fp32"
    ridge: float = 0.0
    use_q: bool = True
    trak_seed: int = 0
    trak_batch_size: int = 128
    cache_gb: float = 2.0
    alpha: float = 0.5
    m: int = 64
    lds_seed: int = 0
    bootstrap: int = 1000

    @property
    def width_names(self) -> list[str]:
        return [width_name(w) for w in self.widths]

    @property
    def reference(self) -> str:
        return width_name(max(self.widths))

    @property
    def ckpt_epochs(self) -> tuple[int, ...]:
        return self.checkpoints or (self.epochs,)

    @property
    def n_models(self) -> int:
        """Ensemble size per width: members x checkpoints."""
        return self.ensemble * len(self.ckpt_epochs)

    def width_of(self, name: str) -> float:
        return dict(zip(self.width_names, self.widths))[name]


def width_name(w: float) -> str:
    return f"k{w:g}"


def parse(raw: dict) -> tuple[AttributionConfig, Section]:
    """Validate the whole file except `slurm`; returns the config and the top-level Section
    (the caller reads `slurm` and calls `finish()`). ConfigError names the key path."""
    top = Section(raw, "")
    top.get("kind", str)
    name = check_name("name", top.get("name", str))
    d = AttributionConfig(name=name)
    data = top.section("data")
    files = data.get("data_files", (str, list), None)
    if isinstance(files, str):
        files = [files]
    size = data.get("image_size", int, d.image_size, positive)
    cfg = dict(
        name=name,
        source=data.get("source", str, d.source),
        data_files=tuple(map(str, files)) if files else None,
        image_size=size,
        n_train=data.get("n_train", int, d.n_train, positive),
        n_targets=data.get("n_targets", int, d.n_targets, positive),
        data_seed=data.get("seed", int, d.data_seed),
    )
    data.finish()
    model = top.section("model")
    widths = model.get("widths", list, list(d.widths))
    for i, w in enumerate(widths):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w <= 0:
            raise ConfigError(f"model.widths[{i}]", f"must be a positive width multiplier, got {w!r}")
    if not widths or len(set(widths)) != len(widths):
        raise ConfigError("model.widths", f"must be a non-empty list of distinct numbers, got {widths!r}")
    cfg["widths"] = tuple(sorted(float(w) for w in widths))
    model.finish()
    tr = top.section("train")
    cfg.update(
        epochs=tr.get("epochs", int, d.epochs, positive),
        batch_size=tr.get("batch_size", int, d.batch_size, positive),
        lr=tr.get("lr", float, d.lr, positive),
        momentum=tr.get("momentum", float, d.momentum, fraction),
        weight_decay=tr.get("weight_decay", float, d.weight_decay, non_negative),
        label_smoothing=tr.get("label_smoothing", float, d.label_smoothing, fraction),
        threads=tr.get("threads", int, d.threads, positive),
    )
    tr.finish()
    t = top.section("trak")
    ckpts = t.get("checkpoints", list, [])
    for i, e in enumerate(ckpts):
        if not isinstance(e, int) or isinstance(e, bool) or not 1 <= e <= cfg["epochs"]:
            raise ConfigError(f"trak.checkpoints[{i}]", f"must be an epoch in 1..{cfg['epochs']}, got {e!r}")
    cfg.update(
        ensemble=t.get("ensemble", int, d.ensemble, positive),
        checkpoints=tuple(sorted(set(ckpts))),
        proj_dim=t.get("proj_dim", int, d.proj_dim, positive),
        proj_type=t.get("proj_type", str, d.proj_type, one_of("rademacher", "normal")),
        proj_dtype=t.get("proj_dtype", str, d.proj_dtype, one_of("fp32", "bf16")),
        ridge=t.get("ridge", float, d.ridge, non_negative),
        use_q=t.get("use_q", bool, d.use_q),
        trak_seed=t.get("seed", int, d.trak_seed),
        trak_batch_size=t.get("batch_size", int, d.trak_batch_size, positive),
        cache_gb=t.get("cache_gb", float, d.cache_gb, non_negative),
    )
    t.finish()
    lds = top.section("lds")
    cfg.update(
        alpha=lds.get("alpha", float, d.alpha, lambda v: None if 0 < v < 1 else "must be in (0, 1)"),
        m=lds.get("m", int, d.m, lambda v: None if v >= 3 else "must be >= 3 (a rank correlation over subsets)"),
        lds_seed=lds.get("seed", int, d.lds_seed),
        bootstrap=lds.get("bootstrap", int, d.bootstrap, positive),
    )
    lds.finish()
    if cfg["n_train"] * cfg["alpha"] < 2:
        raise ConfigError("lds.alpha", f"alpha * data.n_train must be >= 2, got {cfg['alpha']} * {cfg['n_train']}")
    return AttributionConfig(**cfg), top
