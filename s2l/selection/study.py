"""The selection study (`kind: selection`): DsDm with proxies of several sizes against random
and DSIR selection, judged by the reference-size model trained on each selection (Khaddaj et
al. 2025, section 3.2).

Stages (each task is one process, locally or one Slurm array task; afterok between stages):
  proxies    <size>/<m>        train proxy m of a size on its random subset of the pool
  featurize  <size>/<m>        TRAK features of the pool and the target examples (LM output)
  score      <size>            ensemble TRAK scores (n_pool, T) of a size
  select     select            every selection (dsdm-<size>, random, dsir) for every seed
  final      <selection>/<seed>  reference-size model on a selection -> per-sample losses
  report     report            selection.csv, gain-vs-proxy-compute figure, compute.csv

Files under <out> (default runs/<name>): pool.npz, split.npz, sweep.yaml, FINGERPRINT,
proxies/, features/ (`s2l.store.FeatureStore` layout), scores/, selections/, final/,
losses.zarr (s2l.store schema: scale = the reference size, mixture = selection name,
weight = the domain composition of each selection), times/*.json (seconds and FLOPs of every
task, for the compute table), and the report files.

Tasks only compute; `s2l.tasks.run_task` marks them done (under <out>/.s2l/done/) with the
config fingerprint, so a changed config redoes everything (stale work directories are moved
aside by `prepare`, never deleted; the store migrates as in the LM sweep).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import ClassVar

import numpy as np

from s2l.config import ConfigError
from s2l.model import training_flops
from s2l.runtime import StudyTask, retire_stale, setup_torch
from s2l.selection.config import SelectionConfig, parse, shape_of
from s2l.tasks import Stage, Study, register

#: what a changed config moves aside (everything the tasks and `prepare` write but the store)
WORK = ("proxies", "features", "scores", "selections", "final", "times", "pool.npz", "split.npz")


def _data(cfg: SelectionConfig):
    from s2l.data import PreparedData

    return PreparedData.load(cfg.data.cache_root / cfg.data.fingerprint())


def _model(cfg: SelectionConfig, size: str, vocab: int, positions: int, seed: int):
    from s2l.model import build_model

    return build_model(shape_of(size), vocab, positions, seed)


def _params(size: str) -> int:
    return shape_of(size).non_embedding_params()


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
    rng = np.random.default_rng([cfg.pool.seed, 7919, member])
    k = max(1, int(round(cfg.proxies.subset_frac * n_pool)))
    return np.sort(rng.choice(n_pool, size=k, replace=False)).astype(np.int64)


def _feature_store(cfg: SelectionConfig, out: Path, size: str, n_pool: int, n_targets: int):
    from s2l.store import FeatureStore

    return FeatureStore(out / "features" / size, cfg.proxies.models, n_pool, n_targets, cfg.trak.proj_dim)


def _pool_sizes(out: Path) -> tuple[int, int]:
    """(candidates in the pool, target examples), from the files `prepare` wrote."""
    return len(np.load(out / "pool.npz")["domain"]), len(np.load(out / "split.npz")["target"])


@dataclasses.dataclass
class TrainProxy(StudyTask):
    stage: ClassVar[str] = "proxies"
    size: str = ""
    member: int = 0

    def run(self):
        from s2l.selection.pool import Pool
        from s2l.train import train

        cfg, d = self.cfg, self.out / "proxies" / self.size / str(self.member)
        torch = setup_torch(cfg.train.threads)
        d.mkdir(parents=True, exist_ok=True)
        pool = Pool.load(self.out / "pool.npz")
        rows = proxy_subset(cfg, len(pool), self.member)
        # seq_len + 1 positions: TRAK reads whole pool rows (L = seq_len + 1 tokens)
        model = _model(cfg, self.size, _data(cfg).vocab_size, cfg.data.seq_len + 1, 1000 + self.member)
        t0 = time.perf_counter()
        train(model, _batches(pool.tokens, rows, cfg.train.batch_size, 1000 + self.member),
              cfg.proxies.steps, cfg.train, checkpoint=d / "ckpt.pt")
        torch.save(model.state_dict(), d / "model.pt")
        tokens = cfg.proxies.steps * cfg.train.batch_size * cfg.data.seq_len
        _record_time(self.out, f"proxies/{self.key}", stage="proxy training", size=self.size,
                     seconds=time.perf_counter() - t0, flops=training_flops(_params(self.size), tokens))
        (d / "ckpt.pt").unlink(missing_ok=True)


@dataclasses.dataclass
class Featurize(StudyTask):
    stage: ClassVar[str] = "featurize"
    size: str = ""
    member: int = 0

    def run(self):
        from s2l.selection.dsdm import featurize_lm
        from s2l.selection.pool import Pool, full_text_mask
        from s2l.trak import grad_dim, projector_for

        cfg, t = self.cfg, self.cfg.trak
        torch = setup_torch(cfg.train.threads)
        pool = Pool.load(self.out / "pool.npz")
        split = np.load(self.out / "split.npz")
        model = _model(cfg, self.size, _data(cfg).vocab_size, cfg.data.seq_len + 1, 0)
        model.load_state_dict(torch.load(self.out / "proxies" / self.size / str(self.member) / "model.pt",
                                         weights_only=True))
        # P (p, k) is regenerated per batch unless cached: keep it whatever its size
        proj = projector_for(model, t.proj_dim, t.seed, self.member)
        t0 = time.perf_counter()
        phi = featurize_lm(model, pool.tokens, None, proj, t.log_odds, t.batch_size)
        # the datamodel target: the whole target text (default) or only its answer tokens
        t_mask = split["target_mask"]
        if t.target_tokens == "full":
            t_mask = full_text_mask(t_mask)
        phi_t = featurize_lm(model, split["target_tokens"], t_mask, proj, t.log_odds, t.batch_size)
        store = _feature_store(cfg, self.out, self.size, len(pool), len(phi_t))
        store.write(self.member, phi, phi_t, np.ones(len(pool), np.float32))
        n_rows = len(pool) + len(phi_t)
        shape = shape_of(self.size)
        # forward + backward of every token through the blocks and the vocabulary head (6 FLOPs
        # per weight per token), plus the projection matmul (2 p k per row)
        flops = (training_flops(shape.non_embedding_params() + shape.d_model * model.config.vocab_size,
                                n_rows * pool.tokens.shape[1])
                 + n_rows * 2.0 * grad_dim(model) * t.proj_dim)
        _record_time(self.out, f"featurize/{self.key}", stage="featurization", size=self.size,
                     seconds=time.perf_counter() - t0, flops=flops)


@dataclasses.dataclass
class Score(StudyTask):
    stage: ClassVar[str] = "score"
    size: str = ""

    def run(self):
        from s2l.trak import score_blockwise

        setup_torch(self.cfg.train.threads)
        t0 = time.perf_counter()
        n_pool, T = _pool_sizes(self.out)
        train, target, _ = _feature_store(self.cfg, self.out, self.size, n_pool, T).arrays()
        # no Q term: the LM output has none
        S = score_blockwise(train[:], target[:], None, ridge=self.cfg.trak.ridge)
        (self.out / "scores").mkdir(exist_ok=True)
        np.save(self.out / "scores" / f"{self.size}.npy", S)
        M, n, k = train.shape
        flops = M * (2.0 * n * k * k + 10.0 * k ** 3 + 2.0 * k * k * T + 2.0 * n * k * T)
        _record_time(self.out, f"score/{self.size}", stage="scoring", size=self.size,
                     seconds=time.perf_counter() - t0, flops=flops)


def selection_path(out: Path, name: str, seed: int) -> Path:
    return out / "selections" / f"{name}-s{seed}.npy"


@dataclasses.dataclass
class Select(StudyTask):
    stage: ClassVar[str] = "select"

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
                                        cfg.dsir.ngrams, cfg.dsir.buckets)
        info = {}
        for name in cfg.selections():
            for seed in cfg.seeds:
                # random and DSIR draw a new subset per seed, so their CIs include that draw;
                # DsDm is deterministic given its scores
                s = cfg.select.seed * 1000 + seed
                if name.startswith("dsdm-"):
                    idx = dsdm.select(np.load(self.out / "scores" / f"{name[5:]}.npy"), cfg.select.n)
                elif name == "random":
                    idx = dsdm.random_select(len(pool), cfg.select.n, s)
                else:
                    idx = dsir.select(log_w, cfg.select.n, s)
                np.save(selection_path(self.out, name, seed), idx)
            info[name] = dict(zip(pool.domains, pool.composition(idx).round(4).tolist()))
        (self.out / "selections" / "composition.json").write_text(json.dumps(info, indent=1))
        # The store's `weight` (mixture, domain) = the domain composition of each selection
        # (of its last seed): the only writer of this small array, once.
        store.write_weights(self.out / "losses.zarr",
                            np.array([list(info[m].values()) for m in cfg.selections()]))


def _cell_id(cfg: SelectionConfig, selection: str, seed: int) -> str:
    return f"{cfg.fingerprint()}-{selection}-{seed}"


@dataclasses.dataclass
class FinalTrain(StudyTask):
    stage: ClassVar[str] = "final"
    selection: str = ""
    seed: int = 0

    def run(self):
        from s2l import store
        from s2l.evaluate import evaluate
        from s2l.selection.pool import Pool, subset_suite
        from s2l.train import train

        cfg, d = self.cfg, self.out / "final" / self.selection / str(self.seed)
        setup_torch(cfg.train.threads)
        d.mkdir(parents=True, exist_ok=True)
        data = _data(cfg)
        pool = Pool.load(self.out / "pool.npz")
        rows = np.load(selection_path(self.out, self.selection, self.seed))
        ref = cfg.reference
        model = _model(cfg, ref.size, data.vocab_size, cfg.data.seq_len, self.seed)
        t0 = time.perf_counter()
        train(model, _batches(pool.tokens, rows, cfg.train.batch_size, self.seed),
              ref.steps, cfg.train, checkpoint=d / "ckpt.pt")
        train_s = time.perf_counter() - t0
        suite = subset_suite(data.test, np.load(self.out / "split.npz")["eval"])
        loss, correct = evaluate(model, suite, cfg.train.eval_batch_size, cfg.train.precision)
        store.write_cell(self.out / "losses.zarr", ref.size, self.selection, self.seed, loss, correct)
        tokens = ref.steps * cfg.train.batch_size * cfg.data.seq_len
        _record_time(self.out, f"final/{self.key}", stage="final training", size=ref.size,
                     selection=self.selection, seconds=train_s,
                     flops=training_flops(_params(ref.size), tokens))
        (d / "ckpt.pt").unlink(missing_ok=True)


@dataclasses.dataclass
class Report(StudyTask):
    stage: ClassVar[str] = "report"

    def run(self):
        from s2l.selection.report import write_report

        write_report(self.out)


class SelectionStudy(Study):
    def __init__(self, cfg: SelectionConfig, raw: dict, out: Path, yaml_text: str = ""):
        self.cfg, self.raw, self.name, self.out = cfg, raw, cfg.name, Path(out)
        self.yaml_text = yaml_text

    def groups(self) -> list[str]:
        return list(dict.fromkeys([*self.cfg.all_proxies, self.cfg.reference.size]))

    def _build_pool(self, data):
        """The candidate pool; a domain too short for one window, or a pool smaller than
        `select.n`, is a ConfigError (raised before anything is written)."""
        from s2l.selection.pool import build_pool

        cfg, L = self.cfg, self.cfg.data.seq_len + 1
        for name, stream in data.train.items():
            if len(stream) < L:
                raise ConfigError(f"data.domains.{name}", f"has {len(stream)} tokens, fewer than one "
                                                          f"pool window of data.seq_len + 1 = {L}")
        pool = build_pool(data.train, cfg.pool.per_domain, L, cfg.pool.seed)
        if not cfg.select.n < len(pool):
            raise ConfigError("select.n", f"must be < the {len(pool)} candidates the domains give "
                                          f"(pool.per_domain {cfg.pool.per_domain} asked), "
                                          f"got {cfg.select.n}")
        return pool

    def prepare(self) -> None:
        from s2l import store
        from s2l.data import prepare_data
        from s2l.selection.pool import eval_samples, split_target, target_rows

        cfg, out = self.cfg, self.out
        prepare_data(cfg.data)  # before touching <out>: may fail
        data = _data(cfg)
        fp = cfg.fingerprint()
        stale = (out / "FINGERPRINT").exists() and (out / "FINGERPRINT").read_text() != fp
        pool = self._build_pool(data) if stale or not (out / "pool.npz").exists() else None
        if stale:
            retire_stale(out, fp, WORK)
        out.mkdir(parents=True, exist_ok=True)
        (out / "sweep.yaml").write_text(self.yaml_text)
        if pool is not None:
            pool.save(out / "pool.npz")
        n_pool = len(np.load(out / "pool.npz")["domain"])
        t = cfg.target
        target, holdout = split_target(data.test, t.test_set, t.target_frac, t.seed)
        tt, tm = target_rows(data.test, target)
        ev = eval_samples(data.test, t.test_set, holdout)
        np.savez(out / "split.npz", target=target, holdout=holdout, eval=ev,
                 target_tokens=tt, target_mask=tm)
        for size in cfg.all_proxies:
            _feature_store(cfg, out, size, n_pool, len(target)).create()
        ref = cfg.reference
        tokens = ref.steps * cfg.train.batch_size * cfg.data.seq_len
        sels = cfg.selections()
        names = data.test.sample_test_set[ev]
        layout = store.StoreLayout(
            scales=[ref.size], params=[_params(ref.size)],
            flops=[training_flops(_params(ref.size), tokens)], mixtures=sels,
            seeds=list(cfg.seeds), domains=list(cfg.data.domains),
            weights=np.full((len(sels), len(cfg.data.domains)), 1.0 / len(cfg.data.domains)),
            test_set=[str(n) for n in names],
            multiple_choice=bool((data.test.answer[ev] >= 0).any()),
            cell_ids={store.cell_key(ref.size, m, s): _cell_id(cfg, m, s)
                      for m in sels for s in cfg.seeds},
            attrs={"sweep": self.name, "sweep_yaml": self.yaml_text, "kind": "selection",
                   "target": t.test_set, "chance": dict(data.test.chance),
                   "tokens": {ref.size: tokens}, "n_select": cfg.select.n,
                   "proxies": list(cfg.all_proxies)})
        store.create_store(out / "losses.zarr", layout)
        (out / "FINGERPRINT").write_text(fp)

    def stages(self) -> list[Stage]:
        cfg, out = self.cfg, self.out
        members = range(cfg.proxies.models)
        ref = cfg.reference.size
        return [
            Stage("proxies", [TrainProxy(cfg, out, f"{s}/{m}", s, size=s, member=m)
                              for s in cfg.all_proxies for m in members]),
            Stage("featurize", [Featurize(cfg, out, f"{s}/{m}", s, size=s, member=m)
                                for s in cfg.all_proxies for m in members]),
            Stage("score", [Score(cfg, out, s, size=s) for s in cfg.all_proxies]),
            Stage("select", [Select(cfg, out, "select")]),
            Stage("final", [FinalTrain(cfg, out, f"{m}/{s}", ref, selection=m, seed=s)
                            for m in cfg.selections() for s in cfg.seeds]),
            Stage("report", [Report(cfg, out, "report")]),
        ]

    def describe(self) -> str:
        cfg = self.cfg
        lines = [f"selection study {cfg.name!r} -> {self.out}",
                 f"target {cfg.target.test_set} ({cfg.target.target_frac:.0%} to select, rest held "
                 f"out); pool {cfg.pool.per_domain} x {len(cfg.data.domains)} domains of "
                 f"{cfg.data.seq_len + 1} tokens; select n={cfg.select.n}"]
        tok = cfg.train.batch_size * cfg.data.seq_len
        for s in cfg.all_proxies:
            n = _params(s)
            lines.append(f"  proxy {s:>6}: {n:>9,} params x {cfg.proxies.models} models, "
                         f"{training_flops(n, tok * cfg.proxies.steps):.3g} FLOPs each")
        ref = cfg.reference
        n = _params(ref.size)
        runs = len(cfg.selections()) * len(cfg.seeds)
        lines.append(f"  reference {ref.size}: {n:,} params, {runs} trainings "
                     f"({', '.join(cfg.selections())} x seeds {list(cfg.seeds)}), "
                     f"{training_flops(n, tok * ref.steps):.3g} FLOPs each")
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
def _make(raw: dict, path: Path, out, tracking_uri: str | None) -> SelectionStudy:
    if tracking_uri:
        raise ConfigError("--tracking-uri", "the selection study does not track to MLflow (its "
                                            "results are losses.zarr and selection.csv in the "
                                            "out dir); drop --tracking-uri")
    cfg = parse(raw, path)
    yaml_text = path.read_text() if path.is_file() else ""
    return SelectionStudy(cfg, raw, Path(out) if out else Path("runs") / cfg.name, yaml_text)
