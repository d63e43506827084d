"""The GPU checks, in one run that fits a short lease: CUDA training, bf16, NCCL, packed proxies, MFU.

    python benchmarks/gpu_check.py [--out DIR] [--quick]

Sections (each timed, each failure printed and recorded, none stops the others):
  env        torch / CUDA / device, bf16 support, the measured bf16 matmul peak (8192^3)
  mfu        a reference-size cell (760M shape, vocab 50304, T 1024) trained by s2l.train.train
             in bf16 autocast: tokens/s and MFU = tokens/s x flops_per_token / peak
             (against the device's spec peak and against the measured matmul peak)
  precision  the same recipe at 125M in fp32 (TF32 off) and bf16: speed ratio, loss gap
  packed     K=16 smallest-scale proxies: s2l.packed.train_packed vs the same 16 trained one
             after another by s2l.train.train: aggregate tokens/s, ratio, loss agreement
  nccl       a one-rank NCCL group: s2l.train.Distributed.mean and a DDP step (gradients equal
             to the plain model's)
  eval       s2l.evaluate.row_losses on CUDA, bf16 vs fp32 per-row losses
--quick runs every section at toy sizes (CPU too), to check the script itself.
Results: printed, and JSON in DIR/gpu_check.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from s2l.config import TrainConfig  # noqa: E402
from s2l.model import LADDER, ModelShape, build_model  # noqa: E402
from s2l.packed import flops_per_token, train_packed  # noqa: E402
from s2l.train import Distributed, train  # noqa: E402

H200_BF16_DENSE = 989e12  # spec sheet, dense bf16 tensor-core FLOP/s (H100/H200 SXM)


def random_batches(seed: int, batch: int, seq_len: int, vocab: int):
    def fn(step: int) -> np.ndarray:
        rng = np.random.default_rng([seed, step])
        # a learnable stream: a random walk over the vocabulary, so losses fall
        start = rng.integers(0, vocab, (batch, 1))
        return ((start + np.cumsum(rng.integers(0, 3, (batch, seq_len + 1)), 1)) % vocab).astype(np.int64)
    return fn


def timed_train(shape: ModelShape, vocab: int, seq_len: int, batch: int, steps: int,
                precision: str, log_every: int, seed: int = 0, compile_: bool = False) -> dict:
    model = build_model(shape, vocab, seq_len, seed)
    rates, losses = [], []
    cfg = TrainConfig(batch_size=batch, lr=1e-3, log_every=log_every, precision=precision,
                      compile=compile_)
    t = time.perf_counter()
    hist = train(model, random_batches(seed, batch, seq_len, vocab), steps, cfg,
                 on_log=lambda s, loss, r: (rates.append(r), losses.append(loss)))
    n = shape.non_embedding_params()
    fpt = flops_per_token(shape.d_model, shape.n_layers, vocab, seq_len, n)
    # the first windows hold the warm-up (and the compilation): the last half is the steady state
    rate = float(np.median(rates[len(rates) // 2:]))
    return {"params": n, "tokens_per_s": rate, "flops_per_token": fpt,
            "tflops": rate * fpt / 1e12, "final_loss": hist[-1][1], "wall_s": time.perf_counter() - t}


def sec_env(r: dict, dev: torch.device, quick: bool) -> None:
    r["torch"] = torch.__version__
    r["cuda"] = torch.version.cuda
    r["device"] = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    r["bf16_supported"] = bool(dev.type == "cuda" and torch.cuda.is_bf16_supported())
    n = 1024 if quick else 8192
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(dev)
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    sync(dev)
    r["matmul_bf16_tflops"] = 10 * 2 * n ** 3 / (time.perf_counter() - t) / 1e12


def sec_mfu(r: dict, dev: torch.device, quick: bool, peak_measured: float | None) -> None:
    """The reference shape as s2l trains it by default (bf16 autocast, eager), then with
    torch.compile (train.compile: true) and with a larger batch."""
    shape = ModelShape(*LADDER["20k" if quick else "760M"])
    vocab, seq_len = (512, 64) if quick else (50304, 1024)
    runs = {"eager_b16": (16, False), "compile_b16": (16, True), "compile_b32": (32, True)}
    for name, (batch, compile_) in runs.items():
        batch = 4 if quick else batch
        out = timed_train(shape, vocab, seq_len, batch, steps=6 if quick else 28, precision="bf16",
                          log_every=2 if quick else 4, compile_=compile_)
        out["mfu_spec"] = out["tflops"] * 1e12 / H200_BF16_DENSE
        if peak_measured:
            out["mfu_measured_peak"] = out["tflops"] / peak_measured
        r[name] = dict(shape="760M", vocab=vocab, seq_len=seq_len, batch=batch, **out)


def sec_precision(r: dict, dev: torch.device, quick: bool) -> None:
    shape = ModelShape(*LADDER["20k" if quick else "125M"])
    vocab, seq_len, batch = (512, 64, 4) if quick else (50304, 1024, 16)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here
    for precision in ("fp32", "bf16"):
        r[precision] = timed_train(shape, vocab, seq_len, batch, steps=6 if quick else 16,
                                   precision=precision, log_every=2 if quick else 4)
    r["bf16_speedup"] = r["bf16"]["tokens_per_s"] / r["fp32"]["tokens_per_s"]
    r["final_loss_gap"] = abs(r["bf16"]["final_loss"] - r["fp32"]["final_loss"])


def sec_packed(r: dict, dev: torch.device, quick: bool) -> None:
    k = 4 if quick else 16
    vocab, seq_len, batch = 1024, 128, 32  # the default grid's data and batch
    steps = 10 if quick else 60
    for name, dims in (("xs", (32, 2, 2)), ("m", (64, 2, 4))):
        for precision in ("fp32", "bf16"):
            shape = ModelShape(*dims)
            cfg = TrainConfig(batch_size=batch, lr=3e-3, log_every=10, precision=precision)
            models = [build_model(shape, vocab, seq_len, s) for s in range(k)]
            fns = [random_batches(s, batch, seq_len, vocab) for s in range(k)]
            seq_models = [copy.deepcopy(m) for m in models]
            sync(dev)
            t = time.perf_counter()
            hp = train_packed(models, fns, steps, cfg, device=dev)
            sync(dev)
            packed_s = time.perf_counter() - t
            t = time.perf_counter()
            hs = [train(m, fn, steps, cfg) for m, fn in zip(seq_models, fns)]
            sync(dev)
            seq_s = time.perf_counter() - t
            tokens = k * steps * batch * seq_len
            gap = max(abs(a[-1][1] - b[-1][1]) for a, b in zip(hp, hs))
            r[f"{name}_{precision}"] = {
                "k": k, "steps": steps, "packed_tokens_per_s": tokens / packed_s,
                "sequential_tokens_per_s": tokens / seq_s, "speedup": seq_s / packed_s,
                "max_final_loss_gap": gap}


def sec_nccl(r: dict, dev: torch.device, quick: bool) -> None:
    if dev.type != "cuda":
        r["skipped"] = "no CUDA"
        return
    import torch.distributed as td

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    td.init_process_group("nccl", rank=0, world_size=1)
    try:
        d = Distributed()
        d.world = 2  # as a 2-rank job would: mean() must all-reduce on the NCCL device
        try:
            r["distributed_mean"] = d.mean(3.0)
        except Exception as e:  # noqa: BLE001 - recorded: the point of the check
            r["distributed_mean_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        model = build_model(ModelShape(64, 2, 4), 1024, 64, 0).to(dev)
        plain = copy.deepcopy(model)
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index or 0])
        x = torch.from_numpy(random_batches(0, 8, 64, 1024)(0)).to(dev)
        for net in (ddp, plain):
            logits = net(input_ids=x[:, :-1]).logits
            torch.nn.functional.cross_entropy(logits.reshape(-1, 1024), x[:, 1:].reshape(-1)).backward()
        r["ddp_grad_max_diff"] = max((a.grad - b.grad).abs().max().item() for a, b in
                                     zip(model.parameters(), plain.parameters()))
    finally:
        td.destroy_process_group()


def sec_eval(r: dict, dev: torch.device, quick: bool) -> None:
    from s2l.evaluate import row_losses

    vocab, seq_len = 1024, 128
    model = build_model(ModelShape(*LADDER["1M"]), vocab, seq_len, 0)
    train(model, random_batches(1, 32, seq_len, vocab), 20 if quick else 200,
          TrainConfig(batch_size=32, lr=3e-3, log_every=10))
    rng = np.random.default_rng(0)
    tokens = random_batches(7, 512, seq_len, vocab)(0)
    mask = np.zeros_like(tokens, dtype=bool)
    for i, n in enumerate(rng.integers(8, seq_len + 1, len(tokens))):
        mask[i, 1:n] = True
    out = {p: row_losses(model.to(dev), tokens, mask, 64, p) for p in ("fp32", "bf16")}
    diff = np.abs(out["bf16"] - out["fp32"])
    r.update(rows=len(tokens), max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()),
             mean_loss_fp32=float(out["fp32"].mean()))


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args(argv)
    dev = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    results: dict = {}
    out = Path(args.out) / "gpu_check.json"
    sections = [("env", lambda r: sec_env(r, dev, args.quick)),
                ("mfu", lambda r: sec_mfu(r, dev, args.quick, results["env"].get("matmul_bf16_tflops"))),
                ("precision", lambda r: sec_precision(r, dev, args.quick)),
                ("packed", lambda r: sec_packed(r, dev, args.quick)),
                ("nccl", lambda r: sec_nccl(r, dev, args.quick)),
                ("eval", lambda r: sec_eval(r, dev, args.quick))]
    for name, fn in sections:
        if args.only and name not in args.only and name != "env":
            continue
        r = results[name] = {}
        t = time.perf_counter()
        try:
            fn(r)
        except Exception as e:  # noqa: BLE001 - one broken section must not hide the others
            r["error"] = f"{type(e).__name__}: {str(e)[:500]}"
            traceback.print_exc()
        r["section_s"] = round(time.perf_counter() - t, 1)
        print(f"== {name}: {json.dumps(r, default=float)}", flush=True)
        out.write_text(json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
