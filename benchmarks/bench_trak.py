"""TRAK cost of s2l vs the reference library traker 0.3.2 on CPU, and memory of blockwise scoring.

    python benchmarks/bench_trak.py [--setups tuned,mlp-deep,cnn] [--repeats 3] [--dtype auto]
                                    [--mem-n 40000] [--skip memory] [--s2l-only]

1. Throughput, per setup (one thread, CPU-seconds of this process, medians of --repeats runs of
   s2l and traker interleaved so that other load on the machine hits both alike):
     tuned     the setup this file measured first: MLP 784-104-32-10 (~85k params) on 5,000
               MNIST digits, 2,000 train x 200 targets, 1 model, k = 1,024
     issue     issue #14's check: MLP 64-128-128-10 (~26k) on sklearn digits, 1,497 x 300,
               2 models, k = 1,024
     mlp-deep  deeper and wider MLP 64-256-256-128-10 (~116k) on digits, 1,200 x 400,
               3 models, k = 768
     cnn       small CNN (2 conv + 2 linear, ~27k) on MNIST, 2,500 x 250, 2 models, k = 2,048
   featurization = train gradients + projection (+ traker's finalize: its K inverse);
   scoring = target gradients + projection + kernel solve + scores.
   traker runs at its best CPU setting, chosen per setup among batch size {64, 256} x projector
   dtype {fp32, bf16} (bf16 only if its scores keep Spearman >= 0.99 vs its fp32 ones);
   BasicProjector with one block (block_size = proj_dim: fewest regenerations).
   s2l runs with `--dtype` (auto: bf16 where a bf16 matmul measures fast).
   Agreement: Spearman of s2l's and traker's (fp32) scores on the SAME projection matrices
   (traker's own), for model 0 alone (identical up to traker's constant scale) and for the
   ensemble (traker weights members by 1/mean|K^-1|, s2l averages them); and of s2l's scores at
   --dtype vs fp32 on its own projections.
2. Peak RSS of scoring from a Zarr feature store: blockwise (4,096 rows at a time) vs
   all-at-once, each in a fresh subprocess, synthetic features (2 models x mem-n x 1,024).

The TRAK core is imported from $S2L_ROOT (default: this checkout), so that an older tree can
be measured with the same harness ("before" numbers: `S2L_ROOT=/tmp/old --dtype fp32
--s2l-only`, with this checkout's s2l/attribution/reference.py copied into the old tree).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, os.environ.get("S2L_ROOT", str(ROOT)))

SETUPS = {
    # name: (data, layers, n_train, n_targets, n_models, proj_dim)
    "tuned": ("mnist5k", "mlp:784-104-32-10", 2000, 200, 1, 1024),
    "issue": ("digits", "mlp:64-128-128-10", 1497, 300, 2, 1024),
    "mlp-deep": ("digits", "mlp:64-256-256-128-10", 1200, 400, 3, 768),
    "cnn": ("mnist5k", "cnn", 2500, 250, 2, 2048),
}


def cpu_info() -> str:
    """'<model name>; flags: amx_bf16 avx512_bf16 (those present); bf16 matmul fast: yes|no'."""
    name, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name == "unknown CPU":
                name = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    have = [f for f in ("amx_bf16", "amx_tile", "avx512_bf16") if f in flags] or ["no bf16 flags"]
    try:
        from s2l.trak import fast_bf16
        fast = "yes" if fast_bf16() else "no"
    except ImportError:  # an older tree
        fast = "n/a"
    return f"{name}; {' '.join(have)}; fast bf16 (s2l.trak.fast_bf16): {fast}"


def _model(layers: str, seed: int):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    if layers == "cnn":
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(16 * 7 * 7, 32), nn.ReLU(), nn.Linear(32, 10))
    dims = [int(d) for d in layers.split(":")[1].split("-")]
    mods = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        mods.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def build(name: str):
    """Trained models (list), train (x, y), targets (x, y), proj_dim of setup `name`."""
    from s2l.attribution.train import Recipe, train_classifier
    from s2l.attribution.vision import load_images, split_indices

    source, layers, n, T, M, k = SETUPS[name]
    x, y = load_images(source)
    tr, tg = split_indices(len(x), n, T, seed=0)
    models = []
    for m in range(M):
        model = _model(layers, m)
        train_classifier(model, x[tr], y[tr], Recipe(epochs=5, batch_size=128, lr=0.05), seed=m)
        models.append(model.eval())
    return models, (x[tr], y[tr]), (x[tg], y[tg]), k


def run_s2l(models, train, targets, k, dtype, batch_size, seed=0, projectors=None):
    """(S (n, T) numpy, featurize CPU-s, score CPU-s) of s2l: its own chunked projections
    (seeded like trak_scores) unless `projectors` (one per model) are given."""
    from s2l.trak import ChunkedProjector, featurize, grad_dim, model_seed, score_blockwise

    t0 = time.process_time()
    feats, qs, projs = [], [], []
    for m, model in enumerate(models):
        proj = projectors[m] if projectors else ChunkedProjector(grad_dim(model), k, model_seed(seed, m), dtype=dtype)
        phi, q = featurize(model, train, proj, batch_size=batch_size)
        feats.append(phi.numpy())
        qs.append(q.numpy())
        projs.append(proj)
    t1 = time.process_time()
    tfeats = [featurize(model, targets, projs[m], batch_size=batch_size)[0].numpy()
              for m, model in enumerate(models)]
    S = score_blockwise(np.stack(feats), np.stack(tfeats), np.stack(qs), block_rows=1 << 30)
    t2 = time.process_time()
    return S, t1 - t0, t2 - t1


def run_traker(models, train, targets, k, dtype, batch_size, seed=0):
    from s2l.attribution.reference import traker_scores

    t = {}
    S = traker_scores(models, train, targets, proj_dim=k, seed=seed, batch_size=batch_size,
                      dtype=dtype, timings=t)
    return S.numpy(), t["featurize"], t["score"]


def _rho(a, b) -> float:
    import scipy.stats
    return float(scipy.stats.spearmanr(np.ravel(a), np.ravel(b)).statistic)


def bench_setup(name: str, args) -> dict:
    import torch

    from s2l.trak import MatrixProjector, grad_dim

    try:
        from s2l.trak import resolve_dtype
        dtype = resolve_dtype(args.dtype)
    except ImportError:  # an older tree: fp32 or bf16 given explicitly
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(args.dtype, torch.float32)
    models, train, targets, k = build(name)
    p = grad_dim(models[0])
    small = ((train[0][:64], train[1][:64]), (targets[0][:8], targets[1][:8]))
    run_s2l(models[:1], *small, 64, dtype, args.batch_size)  # warm-ups: kernel creation, vmap
    if args.s2l_only:  # e.g. an older tree ($S2L_ROOT): its own cost only
        runs = [run_s2l(models, train, targets, k, dtype, args.batch_size, seed=r)[1:]
                for r in range(args.repeats)]
        f, s = (statistics.median(v) for v in zip(*runs))
        print(f"[{name}] {p:,} params, {len(train[0])} x {len(targets[0])}, {len(models)} model(s), "
              f"k={k}, {str(dtype)[6:]}: s2l featurize {f:.2f} / score {s:.2f} / total {f + s:.2f} CPU-s",
              flush=True)
        return None
    run_traker(models[:1], *small, 64, torch.float32, 64)
    # traker's best setting: one timed run per option (its fp32 at batch 64 is the reference)
    options, ref_fp32 = {}, None
    for bs in (64, 256):
        for dt in (torch.float32, torch.bfloat16):
            S, f, s = run_traker(models, train, targets, k, dt, bs)
            if dt == torch.float32 and bs == 64:
                ref_fp32 = S
            options[(bs, dt)] = (f + s, S)
    ok = {o: v for o, v in options.items() if o[1] == torch.float32 or _rho(v[1], ref_fp32) >= 0.99}
    best = min(ok, key=lambda o: ok[o][0])
    tuning = ", ".join(f"bs {bs} {str(dt)[6:]} {v[0]:.2f}s" + ("" if (bs, dt) in ok else " (rho<0.99)")
                       for (bs, dt), v in options.items())
    ours_f, ours_s, ref_f, ref_s = [], [], [], []
    for r in range(args.repeats):  # interleaved
        _, f, s = run_s2l(models, train, targets, k, dtype, args.batch_size, seed=r)
        ours_f.append(f)
        ours_s.append(s)
        _, f, s = run_traker(models, train, targets, k, best[1], best[0], seed=r)
        ref_f.append(f)
        ref_s.append(s)
    # agreement on traker's own projection matrices
    from s2l.attribution.reference import traker_projection
    Ps = [traker_projection(p, k, seed=0, model_id=m) for m in range(len(models))]
    same = [MatrixProjector(P.to(dtype)) for P in Ps]
    ours_same = run_s2l(models, train, targets, k, dtype, args.batch_size, projectors=same)[0]
    ours_one = run_s2l(models[:1], train, targets, k, dtype, args.batch_size, projectors=same[:1])[0]
    ref_one = run_traker(models[:1], train, targets, k, torch.float32, 64)[0]
    ours_fp32 = run_s2l(models, train, targets, k, torch.float32, args.batch_size)[0]
    ours_dt = run_s2l(models, train, targets, k, dtype, args.batch_size)[0]
    med = statistics.median
    return dict(name=name, p=p, n=len(train[0]), T=len(targets[0]), M=len(models), k=k,
                dtype=str(dtype)[6:], traker=f"bs {best[0]} {str(best[1])[6:]}", tuning=tuning,
                of=med(ours_f), os=med(ours_s), rf=med(ref_f), rs=med(ref_s),
                rho_one=_rho(ours_one, ref_one), rho_ens=_rho(ours_same, ref_fp32),
                rho_dtype=_rho(ours_dt, ours_fp32))


def _row(r) -> str:
    ot, rt = r["of"] + r["os"], r["rf"] + r["rs"]
    return (f"| {r['name']} | {r['p']:,} | {r['n']} x {r['T']}, {r['M']}, {r['k']} | "
            f"{r['of']:.2f} / {r['os']:.2f} / {ot:.2f} ({r['dtype']}) | "
            f"{r['rf']:.2f} / {r['rs']:.2f} / {rt:.2f} ({r['traker']}) | "
            f"{r['rf'] / r['of']:.2f}x / {r['rs'] / r['os']:.2f}x / {rt / ot:.2f}x | "
            f"{r['rho_one']:.4f}, {r['rho_ens']:.4f} | {r['rho_dtype']:.4f} |")


_HEAD = ("| setup | params | n x T, models, k | s2l feat / score / total (CPU-s) | traker feat / score / "
         "total (CPU-s) | ratio feat / score / total | Spearman vs traker fp32, same P: 1 model, "
         "ensemble | s2l scores vs its fp32 |\n|---|---|---|---|---|---|---|---|")


def bench_throughput(args) -> None:
    import torch

    print(f"CPU: {cpu_info()}; torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
          f"CPU-seconds, medians of {args.repeats} interleaved runs", flush=True)
    rows = []
    for name in args.setups.split(","):
        r = bench_setup(name, args)
        if r is None:
            continue
        rows.append(r)
        print(f"\n[{name}] {r['p']:,} params, {r['n']} train x {r['T']} targets, {r['M']} model(s), "
              f"k={r['k']}; s2l projection {r['dtype']}; traker best: {r['traker']} "
              f"(tried: {r['tuning']})\n{_row(r)}", flush=True)
    if rows:
        print("\n" + _HEAD)
    for r in rows:
        print(_row(r))


_MEM_CHILD = """
import resource, sys, numpy as np
sys.path.insert(0, {root!r})
from s2l.store import FeatureStore
from s2l.trak import score_blockwise
st = FeatureStore({path!r}, 2, {n}, 300, 1024, rows_per_chunk=4096)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
train, target, q = st.arrays()
if {blockwise}:
    score_blockwise(train, target, q, block_rows=4096, out=np.lib.format.open_memmap(
        {path!r} + '/S.npy', mode='w+', dtype=np.float32, shape=({n}, 300)))
else:
    S = score_blockwise(train[:], target[:], q[:], block_rows={n})
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # absolute peak (MiB): import peaks hid deltas
"""


def bench_memory(args) -> None:
    from s2l.store import FeatureStore

    n = args.mem_n
    with tempfile.TemporaryDirectory() as tmp:
        st = FeatureStore(tmp, 2, n, 300, 1024, rows_per_chunk=4096)
        st.create()
        rng = np.random.default_rng(0)
        for m in range(2):
            st.write(m, rng.standard_normal((n, 1024), dtype=np.float32),
                     rng.standard_normal((300, 1024), dtype=np.float32), rng.uniform(size=n))
        feat_mb = 2 * n * 1024 * 4 / 2**20
        out = {}
        for blockwise in (True, False):
            code = _MEM_CHILD.format(root=str(ROOT), path=tmp, n=n, blockwise=blockwise)
            t0 = time.perf_counter()
            res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            out[blockwise] = (float(res.stdout.strip().splitlines()[-1]), time.perf_counter() - t0)
    print(f"scoring {n} train x 300 targets x 2 models, k=1024 ({feat_mb:.0f} MiB of train features):")
    print(f"  blockwise (4,096 rows): peak RSS {out[True][0]:.0f} MiB, {out[True][1]:.1f} s")
    print(f"  all at once:            peak RSS {out[False][0]:.0f} MiB, {out[False][1]:.1f} s")
    print(f"  memory ratio {out[False][0] / max(out[True][0], 1):.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setups", default="tuned,mlp-deep,cnn",
                    help=f"comma-separated, from {', '.join(SETUPS)}")
    ap.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"],
                    help="s2l projection precision")
    ap.add_argument("--batch-size", type=int, default=256, help="s2l gradient batch")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mem-n", type=int, default=40000)
    ap.add_argument("--skip", choices=["throughput", "memory"], default=None)
    ap.add_argument("--s2l-only", action="store_true", help="time s2l alone (no traker)")
    args = ap.parse_args()
    unknown = set(args.setups.split(",")) - set(SETUPS)
    if unknown:
        ap.error(f"unknown setups {sorted(unknown)}; choose from {sorted(SETUPS)}")
    import logging

    os.environ.setdefault("TQDM_DISABLE", "1")  # traker's progress bars
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    logging.disable(logging.WARNING)
    torch.set_num_threads(1)  # one thread: per-CPU-second figures that other load cancels out
    torch.set_flush_denormal(True)
    if args.skip != "throughput":
        bench_throughput(args)
    if args.skip != "memory":
        bench_memory(args)


if __name__ == "__main__":
    main()
