"""The attribution study (`kind: attribution`): TRAK on proxies of several widths, judged by LDS
against the largest width retrained on random subsets (paper section 3.1).

Stages (each task is one process, locally or one Slurm array task):
  train      proxy/<width>/<member>  train an ensemble member, keep late-epoch checkpoints
             subset/<i>              train the reference width on random subset i (fraction
                                     alpha), record every target's margin (LDS ground truth;
                                     independent of the proxies, so it shares their stage)
  featurize  <width>/<model>         projected gradients of one checkpoint -> features store
  score      <width>                 blockwise ensemble scores (n_train, n_targets)
  lds        <width>                 per-target LDS of that width's scores
  report     report                  lds.csv, LDS-vs-width figure, score-correlation heatmap

Files under <out> (default runs/<name>): data.pt and masks.npy (made by `prepare`), models/,
features/, scores/, subsets/, lds/, report files; see `features.py` for the Zarr layout.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from s2l.attribution.config import AttributionConfig, parse
from s2l.config import SlurmConfig
from s2l.study import Resources, Stage, Study, Task, register


def _torch(cfg: AttributionConfig):
    import torch

    torch.set_num_threads(cfg.threads)
    torch.set_flush_denormal(True)
    return torch


def _data(out: Path):
    import torch

    return torch.load(out / "data.pt", weights_only=True)


def _recipe(cfg: AttributionConfig):
    from s2l.attribution.train import Recipe

    return Recipe(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum,
                  weight_decay=cfg.weight_decay, label_smoothing=cfg.label_smoothing)


def _model(cfg: AttributionConfig, width: str, in_channels: int):
    from s2l.attribution.vision import build_model

    return build_model(cfg.width_of(width), in_channels)


def _store(cfg: AttributionConfig, out: Path, width: str):
    from s2l.attribution.features import FeatureStore

    return FeatureStore(out / "features" / width, cfg.n_models, cfg.n_train, cfg.n_targets, cfg.proj_dim)


@dataclasses.dataclass
class _Base(Task):
    cfg: AttributionConfig
    out: Path
    key: str
    resources: Resources = Resources()


@dataclasses.dataclass
class TrainProxy(_Base):
    width: str = ""
    member: int = 0

    @property
    def dir(self) -> Path:
        return self.out / "models" / self.width / str(self.member)

    def is_done(self) -> bool:
        return (self.dir / "done.json").exists()

    def run(self):
        from s2l.attribution.train import accuracy, train_classifier

        torch = _torch(self.cfg)
        d = _data(self.out)
        torch.manual_seed(self.cfg.widths.index(self.cfg.width_of(self.width)) * 1000 + self.member)
        model = _model(self.cfg, self.width, d["x_train"].shape[1])
        t0 = time.time()
        states = train_classifier(model, d["x_train"], d["y_train"], _recipe(self.cfg),
                                  seed=self.member, keep_epochs=self.cfg.ckpt_epochs)
        self.dir.mkdir(parents=True, exist_ok=True)
        for epoch, state in states.items():
            torch.save(state, self.dir / f"epoch{epoch}.pt")
        info = {"train_s": time.time() - t0, "target_acc": accuracy(model, d["x_target"], d["y_target"])}
        (self.dir / "done.json").write_text(json.dumps(info))


@dataclasses.dataclass
class TrainSubset(_Base):
    index: int = 0

    def is_done(self) -> bool:
        return (self.out / "subsets" / "done" / str(self.index)).exists()

    def run(self):
        from s2l.attribution.features import margins_array
        from s2l.attribution.train import margins, train_classifier

        torch = _torch(self.cfg)
        d = _data(self.out)
        mask = torch.from_numpy(np.load(self.out / "masks.npy")[self.index])
        torch.manual_seed(1_000_000 + self.index)
        model = _model(self.cfg, self.cfg.reference, d["x_train"].shape[1])
        train_classifier(model, d["x_train"][mask], d["y_train"][mask], _recipe(self.cfg),
                         seed=1_000_000 + self.index)
        margins_array(self.out / "subsets" / "margins.zarr")[self.index] = \
            margins(model, d["x_target"], d["y_target"]).numpy()
        (self.out / "subsets" / "done" / str(self.index)).touch()


@dataclasses.dataclass
class Featurize(_Base):
    width: str = ""
    model_id: int = 0

    def is_done(self) -> bool:
        return _store(self.cfg, self.out, self.width).is_done(self.model_id)

    def run(self):
        from s2l.attribution.grads import grad_dim
        from s2l.attribution.project import ChunkedProjector
        from s2l.attribution.trak import featurize, model_seed

        torch = _torch(self.cfg)
        d = _data(self.out)
        member, ck = divmod(self.model_id, len(self.cfg.ckpt_epochs))
        model = _model(self.cfg, self.width, d["x_train"].shape[1])
        path = self.out / "models" / self.width / str(member) / f"epoch{self.cfg.ckpt_epochs[ck]}.pt"
        model.load_state_dict(torch.load(path, weights_only=True))
        proj = ChunkedProjector(grad_dim(model), self.cfg.proj_dim,
                                model_seed(self.cfg.trak_seed, self.model_id), self.cfg.proj_type,
                                torch.bfloat16 if self.cfg.proj_dtype == "bf16" else torch.float32,
                                cache_bytes=self.cfg.cache_gb * 2**30)
        bs = self.cfg.trak_batch_size
        phi, q = featurize(model, (d["x_train"], d["y_train"]), proj, batch_size=bs)
        phi_t, _ = featurize(model, (d["x_target"], d["y_target"]), proj, batch_size=bs)
        _store(self.cfg, self.out, self.width).write(self.model_id, phi.numpy(), phi_t.numpy(), q.numpy())


@dataclasses.dataclass
class Score(_Base):
    width: str = ""

    def is_done(self) -> bool:
        return (self.out / "scores" / f"{self.width}.done").exists()

    def run(self):
        from s2l.attribution.features import score_array
        from s2l.attribution.trak import score_blockwise

        _torch(self.cfg)
        train, target, q = _store(self.cfg, self.out, self.width).arrays()
        out = score_array(self.out / "scores" / f"{self.width}.zarr", self.cfg.n_train,
                          self.cfg.n_targets, create=True)
        score_blockwise(train, target, q if self.cfg.use_q else None, ridge=self.cfg.ridge,
                        block_rows=out.chunks[0], out=out)
        (self.out / "scores" / f"{self.width}.done").touch()


@dataclasses.dataclass
class LDS(_Base):
    width: str = ""

    def is_done(self) -> bool:
        return (self.out / "lds" / f"{self.width}.npy").exists()

    def run(self):
        from s2l.attribution.lds import lds_per_target
        from s2l.store import zarr_array

        scores = zarr_array(self.out / "scores" / f"{self.width}.zarr")[:]
        actual = zarr_array(self.out / "subsets" / "margins.zarr")[:]
        (self.out / "lds").mkdir(exist_ok=True)
        np.save(self.out / "lds" / f"{self.width}.npy",
                lds_per_target(scores, np.load(self.out / "masks.npy"), actual))


@dataclasses.dataclass
class Report(_Base):
    def is_done(self) -> bool:
        return (self.out / "lds.csv").exists()

    def run(self):
        from s2l.attribution.report import write_report

        write_report(self.out)


class AttributionStudy(Study):
    def __init__(self, cfg: AttributionConfig, out: Path, slurm: SlurmConfig):
        self.cfg, self.name, self.out, self.slurm = cfg, cfg.name, Path(out), slurm

    # ------------------------------------------------------------------ sizes (no disk access)
    def _shape(self) -> tuple[int, int]:
        c = self.cfg
        native = {"mnist5k": (1, 28), "digits": (1, 8)}.get(c.source, (3, 32))
        return native[0], c.image_size or native[1]

    def sizes(self) -> dict[str, dict]:
        """Per width: params and training FLOPs of one model on the full train set."""
        import torch

        from s2l.attribution.vision import build_model, count_params, forward_flops

        ch, px = self._shape()
        out = {}
        for name, w in zip(self.cfg.width_names, self.cfg.widths):
            m = build_model(w, ch)
            flops = 3 * forward_flops(m, torch.zeros(1, ch, px, px)) * self.cfg.n_train * self.cfg.epochs
            out[name] = {"width": w, "params": count_params(m), "train_flops": flops}
        return out

    def prepare(self) -> None:
        import torch

        from s2l.attribution.features import margins_array
        from s2l.attribution.lds import subset_masks
        from s2l.attribution.vision import load_images, split_indices

        c = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        if not (self.out / "data.pt").exists():
            x, y = load_images(c.source, c.data_files, c.image_size)
            tr, tg = split_indices(len(x), c.n_train, c.n_targets, c.data_seed)
            tmp = self.out / "data.pt.tmp"
            torch.save({"x_train": x[tr], "y_train": y[tr], "x_target": x[tg], "y_target": y[tg],
                        "train_idx": torch.from_numpy(tr), "target_idx": torch.from_numpy(tg)}, tmp)
            tmp.rename(self.out / "data.pt")
        if not (self.out / "masks.npy").exists():
            np.save(self.out / "masks.npy", subset_masks(c.n_train, c.m, c.alpha, c.lds_seed))
        (self.out / "subsets" / "done").mkdir(parents=True, exist_ok=True)
        (self.out / "scores").mkdir(exist_ok=True)
        margins_array(self.out / "subsets" / "margins.zarr", c.m, c.n_targets)
        for w in c.width_names:
            _store(c, self.out, w).create()
        meta = {"name": c.name, "reference": c.reference, "alpha": c.alpha, "m": c.m,
                "bootstrap": c.bootstrap, "widths": self.sizes(), "config": dataclasses.asdict(c)}
        (self.out / "study.json").write_text(json.dumps(meta, indent=1))

    def stages(self) -> list[Stage]:
        c, o = self.cfg, self.out
        res = self.slurm.resources_for
        ref = c.reference
        train = [TrainProxy(c, o, f"proxy/{w}/{e}", res(w), width=w, member=e)
                 for w in c.width_names for e in range(c.ensemble)]
        train += [TrainSubset(c, o, f"subset/{i}", res(ref), index=i) for i in range(c.m)]
        feat = [Featurize(c, o, f"{w}/{m}", res(w), width=w, model_id=m)
                for w in c.width_names for m in range(c.n_models)]
        d = self.slurm.default
        return [Stage("train", train), Stage("featurize", feat),
                Stage("score", [Score(c, o, w, d, width=w) for w in c.width_names]),
                Stage("lds", [LDS(c, o, w, d, width=w) for w in c.width_names]),
                Stage("report", [Report(c, o, "report", d)])]

    def describe(self) -> str:
        c, sizes = self.cfg, self.sizes()
        lines = [f"attribution study {c.name}: {c.n_train} train / {c.n_targets} targets from "
                 f"{c.source}; reference {c.reference}; ensemble {c.ensemble} x "
                 f"{len(c.ckpt_epochs)} checkpoints; proj_dim {c.proj_dim}; LDS m={c.m} alpha={c.alpha}"]
        total = 0.0
        for w, s in sizes.items():
            f = s["train_flops"] * c.ensemble
            total += f
            lines.append(f"  proxy {w:>9}: {s['params']:>10,} params, {c.ensemble} models, "
                         f"{f:.3g} train FLOPs, compute ratio {sizes[c.reference]['train_flops'] / s['train_flops']:.3g}")
        f = sizes[c.reference]["train_flops"] * c.alpha * c.m
        total += f
        lines.append(f"  subsets {c.reference}: {c.m} models on {c.alpha:g} of the data, {f:.3g} FLOPs")
        for st in self.stages():
            lines.append(f"  stage {st.name}: {len(st.tasks)} tasks")
        lines.append(f"  total training compute {total:.3g} FLOPs")
        return "\n".join(lines)

    def summary(self) -> str:
        p = self.out / "lds.csv"
        return p.read_text() + f"results in {self.out}" if p.exists() else f"results in {self.out}"


@register("attribution")
def make_study(raw: dict, path: Path, out: str | Path | None = None, **overrides) -> AttributionStudy:
    from s2l.config import ConfigError

    cfg, top = parse(raw)
    slurm = SlurmConfig.from_section(top.section("slurm"), scales=cfg.width_names)
    top.finish()
    if overrides:
        try:
            cfg = dataclasses.replace(cfg, **overrides)
        except TypeError as e:
            raise ConfigError("", f"unknown override: {e}") from None
    return AttributionStudy(cfg, Path(out) if out else Path("runs") / cfg.name, slurm)
