"""The selection study (`kind: selection`): DsDm with proxies of several sizes against random
and DSIR selection, judged by the reference-size model trained on each selection (paper 3.2).

Stages (each task is one process, locally or one Slurm array task; afterok between stages):
  proxies    <size>/<m>        train proxy m of a size on its random subset of the pool
  featurize  <size>/<m>        TRAK features of the pool and the target examples (LM output)
  score      <size>            ensemble TRAK scores (n_pool, T) of a size
  select     select            every selection (dsdm-<size>, random, dsir) for every seed
  final      <selection>/<seed>  reference-size model on a selection -> per-sample losses
  report     report            selection.csv, gain-vs-proxy-compute figure, compute.csv

Files under <out> (default runs/<name>): pool.npz, split.npz, sweep.yaml, FINGERPRINT,
proxies/, features/ (s2l.attribution.features layout), scores/, selections/, final/,
losses.zarr (s2l.store schema: scale = the reference size, mixture = selection name,
weight = the domain composition of each selection), times/*.json (seconds and FLOPs of every
task, for the compute table), and the report files.

Every done marker holds the config fingerprint, so a changed config redoes everything (stale
work directories are moved aside, never deleted; the store migrates as in the LM sweep).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from s2l.selection.config import SelectionConfig, parse, shape_of
from s2l.study import Resources, Stage, Study, Task, register

WORK_DIRS = ("proxies", "features", "scores", "selections", "final", "times")


def _torch(cfg: SelectionConfig):
    import torch

    torch.set_num_threads(cfg.train.threads)
    torch.set_flush_denormal(True)  # denormals from peaked softmaxes: 2x slower on CPU
    return torch


def _data(cfg: SelectionConfig):
    from s2l.data import PreparedData

    return PreparedData.load(cfg.data.cache_root / cfg.data.fingerprint())


def _model(cfg: SelectionConfig, size: str, vocab: int, positions: int, seed: int):
    from s2l.model import build_model

    return build_model(shape_of(size), vocab, positions, seed)


def _record_time(out: Path, key: str, **values) -> None:
    (out / "times").mkdir(parents=True, exist_ok=True)
    (out / "times" / f"{key.replace('/', '__')}.json").write_text(json.dumps(values))


def _batches(tokens: np.ndarray, rows: np.ndarray, batch_size: int, seed: int):
    """batch_fn(step) -> int64 (B, L): rows drawn with replacement from `rows`, a pure function
    of (seed, step) so that a resumed training sees the same batches."""
    def batch(step: int) -> np.ndarray:
        rng = np.random.default_rng([seed, step])
        return tokens[rows[rng.integers(len(rows), size=batch_size)]].astype(np.int64)
    return batch


def proxy_subset(cfg: SelectionConfig, n_pool: int, member: int) -> np.ndarray:
    """Sorted pool indices (int64) of proxy `member`'s random subset (shared by all sizes, so
    sizes differ only in the model)."""
    rng = np.random.default_rng([cfg.pool_seed, 7919, member])
    k = max(1, int(round(cfg.subset_frac * n_pool)))
    return np.sort(rng.choice(n_pool, size=k, replace=False)).astype(np.int64)


@dataclasses.dataclass
class _Base(Task):
    cfg: SelectionConfig
    out: Path
    key: str
    resources: Resources = Resources()

    @property
    def marker(self) -> Path:
        # per task class: the proxy and featurize tasks of a size share their key
        return self.out / "markers" / type(self).__name__ / self.key.replace("/", "__")

    def is_done(self) -> bool:
        return self.marker.exists() and self.marker.read_text() == self.cfg.fingerprint()

    def mark_done(self) -> None:
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        self.marker.write_text(self.cfg.fingerprint())


@dataclasses.dataclass
class TrainProxy(_Base):
    size: str = ""
    member: int = 0

    def run(self):
        from s2l.selection.pool import Pool
        from s2l.train import train

        torch = _torch(self.cfg)
        cfg, d = self.cfg, self.out / "proxies" / self.size / str(self.member)
        d.mkdir(parents=True, exist_ok=True)
        pool = Pool.load(self.out / "pool.npz")
        rows = proxy_subset(cfg, len(pool), self.member)
        # seq_len + 1 positions: TRAK reads whole pool rows (L = seq_len + 1 tokens)
        model = _model(cfg, self.size, _data(cfg).vocab_size, cfg.data.seq_len + 1, 1000 + self.member)
        t0 = time.perf_counter()
        train(model, _batches(pool.tokens, rows, cfg.train.batch_size, 1000 + self.member),
              cfg.proxy_steps, cfg.train, checkpoint=d / "ckpt.pt")
        torch.save(model.state_dict(), d / "model.pt")
        tokens = cfg.proxy_steps * cfg.train.batch_size * cfg.data.seq_len
        _record_time(self.out, f"proxies/{self.key}", stage="proxy training", size=self.size,
                     seconds=time.perf_counter() - t0,
                     flops=6.0 * shape_of(self.size).non_embedding_params() * tokens)
        (d / "ckpt.pt").unlink(missing_ok=True)
        self.mark_done()


def _feature_store(cfg: SelectionConfig, out: Path, size: str, n_pool: int, n_targets: int):
    from s2l.attribution.features import FeatureStore

    return FeatureStore(out / "features" / size, cfg.proxy_models, n_pool, n_targets, cfg.proj_dim)


@dataclasses.dataclass
class Featurize(_Base):
    size: str = ""
    member: int = 0

    def run(self):
        from s2l.attribution.grads import grad_dim
        from s2l.attribution.trak import model_seed
        from s2l.selection import dsdm
        from s2l.selection.pool import Pool, full_text_mask

        torch = _torch(self.cfg)
        cfg = self.cfg
        pool = Pool.load(self.out / "pool.npz")
        split = np.load(self.out / "split.npz")
        model = _model(cfg, self.size, _data(cfg).vocab_size, cfg.data.seq_len + 1, 0)
        model.load_state_dict(torch.load(self.out / "proxies" / self.size / str(self.member) / "model.pt",
                                         weights_only=True))
        proj = dsdm.make_projector(model, cfg.proj_dim, model_seed(cfg.trak_seed, self.member))
        t0 = time.perf_counter()
        bs = cfg.trak_batch_size
        phi = dsdm.featurize(model, pool.tokens, None, proj, cfg.log_odds, bs)
        # the datamodel target: the whole target text (default) or only its answer tokens
        t_mask = split["target_mask"]
        if cfg.target_tokens == "full":
            t_mask = full_text_mask(t_mask)
        phi_t = dsdm.featurize(model, split["target_tokens"], t_mask, proj, cfg.log_odds, bs)
        store = _feature_store(cfg, self.out, self.size, len(pool), len(phi_t))
        store.write(self.member, phi, phi_t, np.ones(len(pool), np.float32))
        n_rows = len(pool) + len(phi_t)
        shape = shape_of(self.size)
        # forward + backward ~ 3 forward passes of 2 FLOPs per weight per token (blocks and the
        # vocabulary head), plus the projection matmul (2 p k per row)
        per_token = 6.0 * (shape.non_embedding_params() + shape.d_model * model.config.vocab_size)
        flops = n_rows * (per_token * pool.tokens.shape[1] + 2.0 * grad_dim(model) * cfg.proj_dim)
        _record_time(self.out, f"featurize/{self.key}", stage="featurization", size=self.size,
                     seconds=time.perf_counter() - t0, flops=flops)
        self.mark_done()


@dataclasses.dataclass
class Score(_Base):
    size: str = ""

    def run(self):
        from s2l.selection import dsdm

        _torch(self.cfg)
        t0 = time.perf_counter()
        n_pool = len(np.load(self.out / "pool.npz")["domain"])
        T = len(np.load(self.out / "split.npz")["target"])
        train, target, _ = _feature_store(self.cfg, self.out, self.size, n_pool, T).arrays()
        S = dsdm.scores(train[:], target[:], self.cfg.ridge)
        (self.out / "scores").mkdir(exist_ok=True)
        np.save(self.out / "scores" / f"{self.size}.npy", S)
        M, n, k = train.shape
        flops = M * (2.0 * n * k * k + 10.0 * k ** 3 + 2.0 * k * k * T + 2.0 * n * k * T)
        _record_time(self.out, f"score/{self.size}", stage="scoring", size=self.size,
                     seconds=time.perf_counter() - t0, flops=flops)
        self.mark_done()


def selection_path(out: Path, name: str, seed: int) -> Path:
    return out / "selections" / f"{name}-s{seed}.npy"


@dataclasses.dataclass
class Select(_Base):
    def run(self):
        from s2l import store
        from s2l.selection import dsdm, dsir
        from s2l.selection.pool import Pool, text_tokens

        cfg = self.cfg
        pool = Pool.load(self.out / "pool.npz")
        split = np.load(self.out / "split.npz")
        (self.out / "selections").mkdir(exist_ok=True)
        log_w = None
        if "dsir" in cfg.methods:
            log_w = dsir.log_importance(list(pool.tokens),
                                        text_tokens(split["target_tokens"], split["target_mask"]),
                                        cfg.dsir_ngrams, cfg.dsir_buckets)
        info = {}
        for name in cfg.selections():
            for seed in cfg.seeds:
                # random and DSIR draw a new subset per seed, so their CIs include that draw;
                # DsDm is deterministic given its scores
                s = cfg.select_seed * 1000 + seed
                if name.startswith("dsdm-"):
                    idx = dsdm.select(np.load(self.out / "scores" / f"{name[5:]}.npy"), cfg.n_select)
                elif name == "random":
                    idx = dsdm.random_select(len(pool), cfg.n_select, s)
                else:
                    idx = dsir.select(log_w, cfg.n_select, s)
                np.save(selection_path(self.out, name, seed), idx)
            info[name] = dict(zip(pool.domains, pool.composition(idx).round(4).tolist()))
        (self.out / "selections" / "composition.json").write_text(json.dumps(info, indent=1))
        # The store's `weight` (mixture, domain) = the domain composition of each selection
        # (of its last seed): the only writer of this small array, once.
        store.write_weights(self.out / "losses.zarr",
                            np.array([list(info[m].values()) for m in cfg.selections()]))
        self.mark_done()


def _cell_id(cfg: SelectionConfig, selection: str, seed: int) -> str:
    return f"{cfg.fingerprint()}-{selection}-{seed}"


@dataclasses.dataclass
class FinalTrain(_Base):
    selection: str = ""
    seed: int = 0

    def run(self):
        from s2l import store
        from s2l.evaluate import evaluate
        from s2l.selection.pool import Pool, subset_suite
        from s2l.train import train

        _torch(self.cfg)
        cfg, d = self.cfg, self.out / "final" / self.selection / str(self.seed)
        d.mkdir(parents=True, exist_ok=True)
        data = _data(cfg)
        pool = Pool.load(self.out / "pool.npz")
        rows = np.load(selection_path(self.out, self.selection, self.seed))
        model = _model(cfg, cfg.reference, data.vocab_size, cfg.data.seq_len, self.seed)
        t0 = time.perf_counter()
        train(model, _batches(pool.tokens, rows, cfg.train.batch_size, self.seed),
              cfg.reference_steps, cfg.train, checkpoint=d / "ckpt.pt")
        train_s = time.perf_counter() - t0
        suite = subset_suite(data.test, np.load(self.out / "split.npz")["eval"])
        loss, correct = evaluate(model, suite, cfg.train.eval_batch_size, cfg.train.precision)
        store.write_cell(self.out / "losses.zarr", cfg.reference, self.selection, self.seed, loss, correct)
        tokens = cfg.reference_steps * cfg.train.batch_size * cfg.data.seq_len
        _record_time(self.out, f"final/{self.key}", stage="final training", size=cfg.reference,
                     selection=self.selection, seconds=train_s,
                     flops=6.0 * shape_of(cfg.reference).non_embedding_params() * tokens)
        (d / "ckpt.pt").unlink(missing_ok=True)
        self.mark_done()


@dataclasses.dataclass
class Report(_Base):
    def run(self):
        from s2l.selection.report import write_report

        write_report(self.out)
        self.mark_done()


class SelectionStudy(Study):
    def __init__(self, cfg: SelectionConfig, out: Path):
        self.cfg, self.name, self.out, self.slurm = cfg, cfg.name, Path(out), cfg.slurm

    def prepare(self) -> None:
        from s2l import store
        from s2l.data import prepare_data
        from s2l.selection.pool import build_pool, eval_samples, split_target, target_rows

        cfg = self.cfg
        prepare_data(cfg.data)  # before touching <out>: may fail
        data = _data(cfg)
        self.out.mkdir(parents=True, exist_ok=True)
        fp, fp_file = cfg.fingerprint(), self.out / "FINGERPRINT"
        if fp_file.exists() and fp_file.read_text() != fp:
            stale = self.out / f"stale-{time.strftime('%Y%m%d-%H%M%S')}"
            for name in (*WORK_DIRS, "markers", "pool.npz", "split.npz"):
                if (self.out / name).exists():
                    stale.mkdir(exist_ok=True)
                    (self.out / name).rename(stale / name)
        (self.out / "sweep.yaml").write_text(cfg.yaml_text)
        if not (self.out / "pool.npz").exists():
            build_pool(data.train, cfg.per_domain, cfg.data.seq_len + 1, cfg.pool_seed).save(
                self.out / "pool.npz")
        n_pool = len(np.load(self.out / "pool.npz")["domain"])
        target, holdout = split_target(data.test, cfg.target_set, cfg.target_frac, cfg.target_seed)
        tt, tm = target_rows(data.test, target)
        ev = eval_samples(data.test, cfg.target_set, holdout)
        np.savez(self.out / "split.npz", target=target, holdout=holdout, eval=ev,
                 target_tokens=tt, target_mask=tm)
        for size in cfg.all_proxies:
            _feature_store(cfg, self.out, size, n_pool, len(target)).create()
        ref = shape_of(cfg.reference).non_embedding_params()
        tokens = cfg.reference_steps * cfg.train.batch_size * cfg.data.seq_len
        sels = cfg.selections()
        names = data.test.sample_test_set[ev]
        layout = store.StoreLayout(
            scales=[cfg.reference], params=[ref], flops=[6.0 * ref * tokens], mixtures=sels,
            seeds=list(cfg.seeds), domains=list(cfg.data.domains),
            weights=np.full((len(sels), len(cfg.data.domains)), 1.0 / len(cfg.data.domains)),
            test_set=[str(n) for n in names],
            multiple_choice=bool((data.test.answer[ev] >= 0).any()),
            cell_ids={store.cell_key(cfg.reference, m, s): _cell_id(cfg, m, s)
                      for m in sels for s in cfg.seeds},
            attrs={"sweep": self.name, "sweep_yaml": cfg.yaml_text, "kind": "selection",
                   "target": cfg.target_set, "chance": dict(data.test.chance),
                   "tokens": {cfg.reference: tokens}, "n_select": cfg.n_select,
                   "proxies": list(cfg.all_proxies)})
        store.create_store(self.out / "losses.zarr", layout)
        fp_file.write_text(fp)

    def stages(self) -> list[Stage]:
        cfg, out = self.cfg, self.out
        res = cfg.slurm.resources_for
        members = range(cfg.proxy_models)
        return [
            Stage("proxies", [TrainProxy(cfg, out, f"{s}/{m}", res(s), s, m)
                              for s in cfg.all_proxies for m in members]),
            Stage("featurize", [Featurize(cfg, out, f"{s}/{m}", res(s), s, m)
                                for s in cfg.all_proxies for m in members]),
            Stage("score", [Score(cfg, out, s, cfg.slurm.default, s) for s in cfg.all_proxies]),
            Stage("select", [Select(cfg, out, "select", cfg.slurm.default)]),
            Stage("final", [FinalTrain(cfg, out, f"{m}/{s}", res(cfg.reference), m, s)
                            for m in cfg.selections() for s in cfg.seeds]),
            Stage("report", [Report(cfg, out, "report", cfg.slurm.default)]),
        ]

    def describe(self) -> str:
        cfg = self.cfg
        lines = [f"selection study {cfg.name!r} -> {self.out}",
                 f"target {cfg.target_set} ({cfg.target_frac:.0%} to select, rest held out); pool "
                 f"{cfg.per_domain} x {len(cfg.data.domains)} domains of {cfg.data.seq_len + 1} tokens; "
                 f"select n={cfg.n_select}"]
        tok = cfg.train.batch_size * cfg.data.seq_len
        for s in cfg.all_proxies:
            n = shape_of(s).non_embedding_params()
            lines.append(f"  proxy {s:>6}: {n:>9,} params x {cfg.proxy_models} models, "
                         f"{6.0 * n * tok * cfg.proxy_steps:.3g} FLOPs each")
        n = shape_of(cfg.reference).non_embedding_params()
        f = 6.0 * n * tok * cfg.reference_steps
        runs = len(cfg.selections()) * len(cfg.seeds)
        lines.append(f"  reference {cfg.reference}: {n:,} params, {runs} trainings "
                     f"({', '.join(cfg.selections())} x seeds {list(cfg.seeds)}), {f:.3g} FLOPs each")
        for st in self.stages():
            done = sum(t.is_done() for t in st.tasks)
            lines.append(f"  stage {st.name:<9} {len(st.tasks):>3} tasks, {done} done")
        return "\n".join(lines)

    def summary(self) -> str:
        path = self.out / "selection.csv"
        if not path.exists():
            return f"results in {self.out} (no selection.csv yet: run the report stage)"
        return f"results in {self.out}\n{path.read_text()}"


@register("selection")
def _make(raw: dict, path: Path, out, **_) -> SelectionStudy:
    cfg = parse(raw, path)
    return SelectionStudy(cfg, Path(out) if out else Path("runs") / cfg.name)
