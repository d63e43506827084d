"""TRAK throughput vs the reference library and memory of blockwise scoring, on this machine.

    python benchmarks/bench_trak.py [--n-train 2000] [--n-targets 200] [--proj-dim 1024]
                                    [--repeats 3] [--threads 1] [--mem-n 40000]

1. Same trained MLP (~85k params, MNIST-5k digits), same projection dim, one model:
   featurization (train examples/s) and scoring (target featurization + kernel + scores, s) of
   s2l vs traker 0.3.2 (CPU: BasicProjector, block_size = proj_dim, fp32). Medians of
   --repeats runs; Spearman of the two score matrices on the same projection matrix.
2. Peak RSS of scoring from a Zarr feature store: blockwise (4,096 rows at a time) vs
   all-at-once (every feature loaded), each in a fresh subprocess, synthetic features
   (2 models x mem-n x 1,024; 300 targets).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _mlp_setup(n_train, n_targets):
    import torch
    from torch import nn

    from s2l.attribution.train import Recipe, train_classifier
    from s2l.attribution.vision import load_images, split_indices

    x, y = load_images("mnist5k")
    tr, tg = split_indices(len(x), n_train, n_targets, seed=0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 104), nn.ReLU(), nn.Linear(104, 32),
                          nn.ReLU(), nn.Linear(32, 10))
    train_classifier(model, x[tr], y[tr], Recipe(epochs=5, batch_size=128, lr=0.05), seed=0)
    return model.eval(), (x[tr], y[tr]), (x[tg], y[tg])


def bench_throughput(args) -> None:
    import scipy.stats
    import torch

    from s2l.attribution.reference import traker_projection, traker_scores
    from s2l.trak import ChunkedProjector, MatrixProjector, featurize, grad_dim, score_blockwise

    model, train, targets = _mlp_setup(args.n_train, args.n_targets)
    p, k = grad_dim(model), args.proj_dim
    print(f"MLP {p:,} params, {args.n_train} train, {args.n_targets} targets, proj_dim {k}, "
          f"{torch.get_num_threads()} thread(s)")
    ours_feat, ours_score, ref_total = [], [], []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        proj = ChunkedProjector(p, k, seed=r)
        phi, q = featurize(model, train, proj, batch_size=args.batch_size)
        t1 = time.perf_counter()
        phi_t, _ = featurize(model, targets, proj, batch_size=args.batch_size)
        score_blockwise(phi.numpy()[None], phi_t.numpy()[None], q.numpy()[None])
        t2 = time.perf_counter()
        ours_feat.append(t1 - t0)
        ours_score.append(t2 - t1)
        t0 = time.perf_counter()
        ref = traker_scores([model], train, targets, proj_dim=k, seed=r, batch_size=args.batch_size)
        ref_total.append(time.perf_counter() - t0)
    # traker featurizes, finalizes and scores in one call above; its featurization time is
    # estimated by the same call with a single target (finalize is a k x k inverse: small)
    ref_feat = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        traker_scores([model], train, (targets[0][:1], targets[1][:1]),
                      proj_dim=k, seed=r, batch_size=args.batch_size)
        ref_feat.append(time.perf_counter() - t0)
    of, osc = statistics.median(ours_feat), statistics.median(ours_score)
    rf, rt = statistics.median(ref_feat), statistics.median(ref_total)
    rs = max(rt - rf, 1e-9)
    print(f"featurize train: s2l {args.n_train / of:8.0f} ex/s   traker {args.n_train / rf:8.0f} ex/s"
          f"   ratio {rf / of:.2f}x")
    print(f"score targets:   s2l {osc:8.2f} s      traker {rs:8.2f} s      ratio {rs / osc:.2f}x")
    print(f"end to end:      s2l {of + osc:8.2f} s      traker {rt:8.2f} s      ratio {rt / (of + osc):.2f}x")
    P = traker_projection(p, k, seed=0, model_id=0)
    mp = MatrixProjector(P)
    a, qa = featurize(model, train, mp, batch_size=args.batch_size)
    b, _ = featurize(model, targets, mp, batch_size=args.batch_size)
    ours = score_blockwise(a.numpy()[None], b.numpy()[None], qa.numpy()[None])
    ref = traker_scores([model], train, targets, proj_dim=k, seed=0, batch_size=args.batch_size)
    rho = scipy.stats.spearmanr(ours.ravel(), ref.numpy().ravel()).statistic
    print(f"Spearman(s2l, traker) on the same projection matrix: {rho:.5f}")


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
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-targets", type=int, default=200)
    ap.add_argument("--proj-dim", type=int, default=1024)  # keep n_train > proj_dim: K invertible
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mem-n", type=int, default=40000)
    ap.add_argument("--skip", choices=["throughput", "memory"], default=None)
    args = ap.parse_args()
    import logging
    import os

    os.environ.setdefault("TQDM_DISABLE", "1")  # traker's progress bars
    import torch

    logging.disable(logging.WARNING)
    torch.set_num_threads(args.threads)
    if args.skip != "throughput":
        bench_throughput(args)
    if args.skip != "memory":
        bench_memory(args)


if __name__ == "__main__":
    main()
