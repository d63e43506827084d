"""The attribution study (`kind: attribution`): TRAK on proxies of several widths, judged by LDS
against the largest width retrained on random subsets (Khaddaj et al. 2025, section 3.1).

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
features/, scores/, subsets/, lds/, report files, FINGERPRINT (the config's; a changed config
moves the old work aside into stale-<time>/); see `s2l.store.FeatureStore` for the Zarr
layout. Tasks only compute; `s2l.tasks.run_task` marks them done under <out>/.s2l/done/.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import ClassVar

import numpy as np

from s2l.attribution.config import AttributionConfig, check_split_size, parse
from s2l.config import ConfigError
from s2l.runtime import StudyTask, retire_stale, setup_torch
from s2l.tasks import Stage, Study, register

#: what a changed config moves aside (everything the tasks and `prepare` write)
WORK = ("data.pt", "masks.npy", "study.json", "models", "features", "scores", "subsets", "lds",
        "lds.csv", "lds_vs_width.png", "score_spearman.csv", "score_spearman.png")


def _data(out: Path) -> dict:
    """The split written by `prepare`: x_train (n, C, H, W), y_train (n,), x_target (T, C, H, W),
    y_target (T,), train_idx (n,), target_idx (T,)."""
    import torch

    return torch.load(out / "data.pt", weights_only=True)


def _recipe(cfg: AttributionConfig):
    from s2l.attribution.train import Recipe

    return Recipe(**cfg.train.model_dump(exclude={"threads"}))


def _model(cfg: AttributionConfig, width: str, in_channels: int):
    from s2l.attribution.vision import build_model

    return build_model(cfg.width_of(width), in_channels)


def _store(cfg: AttributionConfig, out: Path, width: str):
    from s2l.store import FeatureStore

    return FeatureStore(out / "features" / width, cfg.n_models, cfg.data.n_train,
                        cfg.data.n_targets, cfg.trak.proj_dim)


@dataclasses.dataclass
class TrainProxy(StudyTask):
    stage: ClassVar[str] = "train"
    width: str = ""
    member: int = 0

    @property
    def dir(self) -> Path:
        return self.out / "models" / self.width / str(self.member)

    def run(self):
        from s2l.attribution.train import accuracy, train_classifier

        torch = setup_torch(self.cfg.train.threads)
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
        (self.dir / "metrics.json").write_text(json.dumps(info))


@dataclasses.dataclass
class TrainSubset(StudyTask):
    stage: ClassVar[str] = "train"
    index: int = 0

    def run(self):
        from s2l.attribution.train import margins, train_classifier
        from s2l.store import margins_array

        torch = setup_torch(self.cfg.train.threads)
        d = _data(self.out)
        mask = torch.from_numpy(np.load(self.out / "masks.npy")[self.index])
        torch.manual_seed(1_000_000 + self.index)
        model = _model(self.cfg, self.cfg.reference, d["x_train"].shape[1])
        train_classifier(model, d["x_train"][mask], d["y_train"][mask], _recipe(self.cfg),
                         seed=1_000_000 + self.index)
        margins_array(self.out / "subsets" / "margins.zarr")[self.index] = \
            margins(model, d["x_target"], d["y_target"]).numpy()


@dataclasses.dataclass
class Featurize(StudyTask):
    stage: ClassVar[str] = "featurize"
    width: str = ""
    model_id: int = 0

    def run(self):
        from s2l.trak import featurize, projector_for

        cfg, t = self.cfg, self.cfg.trak
        torch = setup_torch(cfg.train.threads)
        d = _data(self.out)
        member, ck = divmod(self.model_id, len(cfg.ckpt_epochs))
        model = _model(cfg, self.width, d["x_train"].shape[1])
        path = self.out / "models" / self.width / str(member) / f"epoch{cfg.ckpt_epochs[ck]}.pt"
        model.load_state_dict(torch.load(path, weights_only=True))
        proj = projector_for(model, t.proj_dim, t.seed, self.model_id, t.proj_type, t.proj_dtype,
                             cache_bytes=t.cache_gb * 2**30)
        print(f"featurize {self.width} model {self.model_id}: projection {t.proj_dtype} -> {proj.dtype}",
              flush=True)  # 'auto' resolves per machine: keep the choice in the task log
        phi, q = featurize(model, (d["x_train"], d["y_train"]), proj, batch_size=t.batch_size)
        phi_t, _ = featurize(model, (d["x_target"], d["y_target"]), proj, batch_size=t.batch_size)
        _store(cfg, self.out, self.width).write(self.model_id, phi.numpy(), phi_t.numpy(), q.numpy())


@dataclasses.dataclass
class Score(StudyTask):
    stage: ClassVar[str] = "score"
    width: str = ""

    def run(self):
        from s2l.store import score_array
        from s2l.trak import score_blockwise

        cfg = self.cfg
        setup_torch(cfg.train.threads)
        train, target, q = _store(cfg, self.out, self.width).arrays()
        out = score_array(self.out / "scores" / f"{self.width}.zarr", cfg.data.n_train,
                          cfg.data.n_targets, create=True)
        score_blockwise(train, target, q if cfg.trak.use_q else None, ridge=cfg.trak.ridge,
                        block_rows=out.chunks[0], out=out)


@dataclasses.dataclass
class LDS(StudyTask):
    stage: ClassVar[str] = "lds"
    width: str = ""

    def run(self):
        from s2l.attribution.lds import lds_per_target
        from s2l.store import zarr_array

        scores = zarr_array(self.out / "scores" / f"{self.width}.zarr")[:]
        actual = zarr_array(self.out / "subsets" / "margins.zarr")[:]
        (self.out / "lds").mkdir(exist_ok=True)
        np.save(self.out / "lds" / f"{self.width}.npy",
                lds_per_target(scores, np.load(self.out / "masks.npy"), actual))


@dataclasses.dataclass
class Report(StudyTask):
    stage: ClassVar[str] = "report"

    def run(self):
        from s2l.attribution.report import write_report

        write_report(self.out)


class AttributionStudy(Study):
    def __init__(self, cfg: AttributionConfig, raw: dict, out: Path):
        self.cfg, self.raw, self.name, self.out = cfg, raw, cfg.name, Path(out)

    def groups(self) -> list[str]:
        return self.cfg.width_names

    # ------------------------------------------------------------------ sizes (no disk access)
    def _shape(self) -> tuple[int, int]:
        d = self.cfg.data
        native = {"mnist5k": (1, 28), "digits": (1, 8)}.get(d.source, (3, 32))
        return native[0], d.image_size or native[1]

    def sizes(self) -> dict[str, dict]:
        """Per width: params and training FLOPs of one model on the full train set."""
        import torch

        from s2l.attribution.vision import build_model, count_params, forward_flops

        ch, px = self._shape()
        out = {}
        for name, w in zip(self.cfg.width_names, self.cfg.widths):
            with torch.device("meta"):  # shapes only: no memory for weights, even at large k
                m = build_model(w, ch)
                flops = 3 * forward_flops(m, torch.zeros(1, ch, px, px))
            flops *= self.cfg.data.n_train * self.cfg.train.epochs
            out[name] = {"width": w, "params": count_params(m), "train_flops": flops}
        return out

    def _load_split(self) -> dict:
        """The train and target examples; a source that cannot be loaded or is too small is a
        ConfigError (raised before anything is written)."""
        import torch

        from s2l.attribution.vision import load_images, split_indices

        d = self.cfg.data
        try:
            x, y = load_images(d.source, d.files, d.image_size)
        except (OSError, ValueError) as e:  # a hub id or parquet file that does not load
            raise ConfigError("data.data_files" if d.files else "data.source",
                              f"cannot load images from {d.source[:100]!r}: {str(e)[:300]}") from None
        check_split_size(d.source, len(x), d.n_train, d.n_targets)
        tr, tg = split_indices(len(x), d.n_train, d.n_targets, d.seed)
        return {"x_train": x[tr], "y_train": y[tr], "x_target": x[tg], "y_target": y[tg],
                "train_idx": torch.from_numpy(tr), "target_idx": torch.from_numpy(tg)}

    def prepare(self) -> None:
        import torch

        from s2l.attribution.lds import subset_masks
        from s2l.store import margins_array

        c, out = self.cfg, self.out
        fp = c.fingerprint()
        stale = (out / "FINGERPRINT").exists() and (out / "FINGERPRINT").read_text() != fp
        split = self._load_split() if stale or not (out / "data.pt").exists() else None
        if stale:
            retire_stale(out, fp, WORK)
        out.mkdir(parents=True, exist_ok=True)
        if split is not None:
            tmp = out / "data.pt.tmp"
            torch.save(split, tmp)
            tmp.rename(out / "data.pt")
        if not (out / "masks.npy").exists():
            np.save(out / "masks.npy", subset_masks(c.data.n_train, c.lds.m, c.lds.alpha, c.lds.seed))
        (out / "scores").mkdir(exist_ok=True)
        margins_array(out / "subsets" / "margins.zarr", c.lds.m, c.data.n_targets)
        for w in c.width_names:
            _store(c, out, w).create()
        meta = {"name": c.name, "reference": c.reference, "alpha": c.lds.alpha, "m": c.lds.m,
                "bootstrap": c.lds.bootstrap, "widths": self.sizes(), "config": c.model_dump()}
        (out / "study.json").write_text(json.dumps(meta, indent=1))
        (out / "FINGERPRINT").write_text(fp)

    def stages(self) -> list[Stage]:
        c, o = self.cfg, self.out
        ref = c.reference
        train = [TrainProxy(c, o, f"proxy/{w}/{e}", w, width=w, member=e)
                 for w in c.width_names for e in range(c.trak.ensemble)]
        train += [TrainSubset(c, o, f"subset/{i}", ref, index=i) for i in range(c.lds.m)]
        feat = [Featurize(c, o, f"{w}/{m}", w, width=w, model_id=m)
                for w in c.width_names for m in range(c.n_models)]
        return [Stage("train", train), Stage("featurize", feat),
                Stage("score", [Score(c, o, w, width=w) for w in c.width_names]),
                Stage("lds", [LDS(c, o, w, width=w) for w in c.width_names]),
                Stage("report", [Report(c, o, "report")])]

    def describe(self) -> str:
        c, sizes = self.cfg, self.sizes()
        lines = [f"attribution study {c.name}: {c.data.n_train} train / {c.data.n_targets} targets "
                 f"from {c.data.source}; reference {c.reference}; ensemble {c.trak.ensemble} x "
                 f"{len(c.ckpt_epochs)} checkpoints; proj_dim {c.trak.proj_dim}; "
                 f"LDS m={c.lds.m} alpha={c.lds.alpha}"]
        total = 0.0
        ref_flops = sizes[c.reference]["train_flops"]
        for w, s in sizes.items():
            f = s["train_flops"] * c.trak.ensemble
            total += f
            lines.append(f"  proxy {w:>9}: {s['params']:>10,} params, {c.trak.ensemble} models, "
                         f"{f:.3g} train FLOPs, compute ratio {ref_flops / s['train_flops']:.3g}")
        f = ref_flops * c.lds.alpha * c.lds.m
        total += f
        lines.append(f"  subsets {c.reference}: {c.lds.m} models on {c.lds.alpha:g} of the data, "
                     f"{f:.3g} FLOPs")
        for st in self.stages():
            lines.append(f"  stage {st.name}: {len(st.tasks)} tasks")
        lines.append(f"  total training compute {total:.3g} FLOPs")
        return "\n".join(lines)

    def summary(self) -> str:
        p = self.out / "lds.csv"
        return p.read_text() + f"results in {self.out}" if p.exists() else f"results in {self.out}"


@register("attribution")
def _make(raw: dict, path: Path, out, tracking_uri: str | None) -> AttributionStudy:
    if tracking_uri:
        raise ConfigError("--tracking-uri", "the attribution study does not track to MLflow "
                                            "(its results are lds.csv and figures in the out dir); "
                                            "drop --tracking-uri")
    cfg = parse(raw)
    return AttributionStudy(cfg, raw, Path(out) if out else Path("runs") / cfg.name)
