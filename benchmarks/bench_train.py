"""Training and evaluation speed of s2l against a minimal nanoGPT-style loop, per CPU-second.

For each ladder size (20k .. 5M non-embedding parameters) it measures, one thread, in this one
process, medians of `--reps` interleaved runs (so that other load on the machine cancels out):

- s2l train (`s2l.train.train` on `s2l.model.build_model`, s2l's GPT-2) vs a minimal
  nanoGPT-style loop with the same shapes, tied head, AdamW, batch and sequence length, in
  training tokens per CPU-second, fp32 and bf16 autocast;
- s2l eval (`s2l.evaluate.evaluate` on a suite of rows of varying length with a loss mask, like
  the built-in test sets) vs s2l train, in real tokens per CPU-second (a row counts up to its
  last target token: padding is not work);
- the share of the fp32 one-thread matmul peak that training reaches, counting 6 (N + d V)
  FLOPs per token (N non-embedding parameters, the tied vocabulary head d x V; attention's
  own FLOPs are not counted).

    .venv/bin/python benchmarks/bench_train.py            # all sizes, 3 reps (a few minutes)
    .venv/bin/python benchmarks/bench_train.py --quick    # 20k, 100k, 1M
    .venv/bin/python benchmarks/bench_train.py --impl /tmp/a-orig   # a baseline copy of
        # s2l/{train,model,evaluate}.py, loaded in place of the working tree's
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from s2l.config import TrainConfig  # noqa: E402
from s2l.model import LADDER, ModelShape  # noqa: E402

#: The sizes measured; 5M is not on the LADDER (it jumps 3M -> 10M): d 256 x 6 layers ~ 4.7M.
SIZES: dict[str, tuple[int, int, int]] = {
    **{k: LADDER[k] for k in ("20k", "50k", "100k", "200k", "500k", "1M", "3M")},
    "5M": (256, 6, 8),
}
QUICK = ("20k", "100k", "1M")
VOCAB, SEQ, BATCH = 1024, 128, 32  # the default grid's (sweeps/grid.yaml)


# --------------------------------------------------------------------------------------------
# The reference: a minimal GPT, written the way nanoGPT (Karpathy) writes it.
# --------------------------------------------------------------------------------------------
class CausalSelfAttention(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.n_head, self.n_embd = h, d

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.c_fc = nn.Linear(d, 4 * d)
        self.gelu = nn.GELU()  # nanoGPT: the exact (erf) GELU
        self.c_proj = nn.Linear(4 * d, d)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, h)
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = MLP(d)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, d, n_layer, h, vocab, block_size):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab, d), wpe=nn.Embedding(block_size, d),
            h=nn.ModuleList([Block(d, h) for _ in range(n_layer)]), ln_f=nn.LayerNorm(d)))
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets):
        pos = torch.arange(0, idx.size(1), dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


def minimal_train(shape: ModelShape, data: np.ndarray, cfg: TrainConfig, precision: str) -> None:
    """nanoGPT's train.py loop, single process: AdamW (decay on 2-D weights), lr per step,
    grad clip, loss.item() only at log steps."""
    torch.manual_seed(0)
    model = GPT(shape.d_model, shape.n_layers, shape.n_heads, VOCAB, SEQ)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2))
    ctx = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
           else torch.autocast("cpu", enabled=False))
    steps = len(data)
    for it in range(steps):
        lr = cfg.lr * (0.5 * (1 + math.cos(math.pi * it / steps)))
        for g in optimizer.param_groups:
            g["lr"] = lr
        batch = torch.from_numpy(data[it])
        x, y = batch[:, :-1].contiguous(), batch[:, 1:].contiguous()  # as get_batch makes them
        with ctx:
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (it + 1) % cfg.log_every == 0:
            loss.item()


# --------------------------------------------------------------------------------------------
# s2l, from the working tree or from a baseline copy (--impl DIR)
# --------------------------------------------------------------------------------------------
def load_impl(impl: str | None):
    """(train module, model module, evaluate module): the working tree's, or DIR's files."""
    if impl is None:
        import s2l.evaluate as ev
        import s2l.model as mo
        import s2l.train as tr
        return tr, mo, ev
    mods = []
    for name in ("train", "model", "evaluate"):
        spec = importlib.util.spec_from_file_location(f"baseline_{name}",
                                                      Path(impl) / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses look their module up there
        spec.loader.exec_module(mod)
        mods.append(mod)
    return tuple(mods)


class Suite:
    """A test suite like the built-in ones (tokens (R, L), loss_mask (R, L), rows of varying
    length: about 45% full-length rows, the rest 16..100 tokens, as in the default grid)."""

    def __init__(self, rows: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        L = SEQ + 1
        lengths = np.where(rng.random(rows) < 0.45, L, rng.integers(16, 101, rows))
        self.tokens = np.zeros((rows, L), dtype=np.int32)
        self.loss_mask = np.zeros((rows, L), dtype=bool)
        for i, n in enumerate(lengths):
            self.tokens[i, :n] = rng.integers(0, VOCAB, n)
            self.loss_mask[i, 1:n] = True
        self.row_sample = np.arange(rows)
        self.row_choice = np.zeros(rows, dtype=np.int64)
        self.answer = np.full(rows, -1)
        self.real_tokens = int(lengths.sum())


def cpu_seconds(fn) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def peak_gflops(dtype: torch.dtype, n: int = 1024, reps: int = 6) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = 0.0
    for _ in range(3):
        s = cpu_seconds(lambda: [a @ b for _ in range(reps)])
        best = max(best, 2 * n ** 3 * reps / s / 1e9)
    return best


def bf16_capability() -> str:
    flags = set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    have = [f for f in ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f") if f in flags]
    return ", ".join(have) or "none of amx_bf16/avx512_bf16"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    ap.add_argument("--sizes", nargs="*", help=f"a subset of {list(SIZES)}")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=0.6,
                    help="target CPU-seconds of one training measurement")
    ap.add_argument("--impl", help="directory holding a train.py/model.py/evaluate.py to "
                                   "measure instead of the working tree's")
    ap.add_argument("--baseline", help="directory holding a baseline copy of s2l/{train,model,"
                                       "evaluate}.py, measured interleaved with the working tree")
    ap.add_argument("--baseline-eval-batch", type=int, default=16,
                    help="the baseline's eval_batch_size (its TrainConfig default was 16)")
    ap.add_argument("--no-bf16", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)  # as s2l.lm.cell does
    sizes = args.sizes or (list(QUICK) if args.quick else list(SIZES))
    impls = {"after" if args.baseline else "s2l": load_impl(args.impl)}
    if args.baseline:
        impls = {"before": load_impl(args.baseline), **impls}
    cfg_defaults = TrainConfig()

    name = "?"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
            break
    p32, p16 = peak_gflops(torch.float32), peak_gflops(torch.bfloat16)
    print(f"CPU: {name}; bf16 flags: {bf16_capability()}; torch {torch.__version__}, 1 thread")
    print(f"matmul peak per CPU-second: fp32 {p32:.0f} GFLOP/s, bf16 {p16:.0f} GFLOP/s "
          f"({p16 / p32:.1f}x); impls: "
          + ", ".join(f"{k}={args.baseline if k == 'before' else (args.impl or 'working tree')}"
                      for k in impls))
    print(f"V={VOCAB} T={SEQ} B={BATCH}, eval_batch_size={cfg_defaults.eval_batch_size} "
          f"(baseline: {args.baseline_eval_batch}), "
          f"medians of {args.reps} interleaved runs, tokens per CPU-second\n", flush=True)

    precisions = ["fp32"] if args.no_bf16 else ["fp32", "bf16"]
    tables: dict[str, list[list[str]]] = {k: [] for k in impls}
    for size in sizes:
        shape = ModelShape(*SIZES[size])
        N = shape.non_embedding_params()
        flops_tok = 6 * (N + shape.d_model * VOCAB)
        # Steps so that one fp32 measurement takes ~args.seconds at ~50% of the peak.
        steps = max(3, int(args.seconds * 0.5 * p32 * 1e9 / (flops_tok * BATCH * SEQ)))
        rng = np.random.default_rng(0)
        data = rng.integers(0, VOCAB, (steps, BATCH, SEQ + 1)).astype(np.int64)
        # Rows so that one fp32 evaluation takes about as long as a training measurement.
        eval_rows = max(32, int(args.seconds * 0.5 * p32 * 1e9 / (2 * flops_tok * 90)))
        suite = Suite(eval_rows)
        cfg = {p: TrainConfig(batch_size=BATCH, precision=p, log_every=20,
                              checkpoint_every=10 ** 6) for p in precisions}

        def s2l_train_eval(k, p):
            tr, mo, ev = impls[k]
            ebs = args.baseline_eval_batch if k == "before" else cfg_defaults.eval_batch_size
            model = mo.build_model(shape, VOCAB, SEQ, seed=0)
            s = cpu_seconds(lambda: tr.train(model, lambda i: data[i], steps, cfg[p]))
            e = cpu_seconds(lambda: ev.evaluate(model, suite, ebs, p))
            return steps * BATCH * SEQ / s, suite.real_tokens / e

        def min_train(p):
            return steps * BATCH * SEQ / cpu_seconds(lambda: minimal_train(shape, data,
                                                                           cfg[p], p))

        # Warm-up (lazy init, oneDNN kernel creation) - not timed.
        short = data[:2]
        for p in precisions:
            for tr, mo, ev in impls.values():
                model = mo.build_model(shape, VOCAB, SEQ, seed=0)
                tr.train(model, lambda i: short[i], 2, cfg[p])
                ev.evaluate(model, Suite(32), cfg_defaults.eval_batch_size, p)
            minimal_train(shape, short, cfg[p], p)
        res: dict[tuple, list[float]] = {}
        for _ in range(args.reps):
            for p in precisions:
                for k in impls:
                    t, e = s2l_train_eval(k, p)
                    res.setdefault((k, "train", p), []).append(t)
                    res.setdefault((k, "eval", p), []).append(e)
                res.setdefault(("min", "train", p), []).append(min_train(p))
        med = {k: statistics.median(v) for k, v in res.items()}
        share = lambda tok_s: 100 * tok_s * flops_tok / (p32 * 1e9)  # noqa: E731
        for k, (tr, _, _) in impls.items():
            auto = (tr.resolve_precision("auto", torch.device("cpu"), N)
                    if hasattr(tr, "resolve_precision") else "fp32")
            try:  # evaluation may resolve "auto" differently from training
                auto_eval = tr.resolve_precision("auto", torch.device("cpu"), N, inference=True)
            except (AttributeError, TypeError):
                auto_eval = auto
            m = lambda what, p: med[(k, what, p)]  # noqa: E731
            row = [size, f"{N / 1e3:.0f}k", f"{auto}/{auto_eval}", f"{m('train', 'fp32'):.0f}",
                   f"{med[('min', 'train', 'fp32')]:.0f}",
                   f"{m('train', 'fp32') / med[('min', 'train', 'fp32')]:.2f}x"]
            if "bf16" in precisions:
                row += [f"{m('train', 'bf16'):.0f}", f"{med[('min', 'train', 'bf16')]:.0f}",
                        f"{m('train', 'bf16') / med[('min', 'train', 'bf16')]:.2f}x",
                        f"{m('train', 'bf16') / m('train', 'fp32'):.2f}x"]
            else:
                row += ["-"] * 4
            row.append(f"{m('eval', 'fp32') / m('train', 'fp32'):.2f}x")
            row.append(f"{m('eval', 'bf16') / m('train', 'bf16'):.2f}x"
                       if "bf16" in precisions else "-")
            row.append(f"{m('eval', auto_eval) / m('train', auto):.2f}x"
                       if {auto, auto_eval} <= set(precisions) else "-")
            row.append(f"{share(m('train', 'fp32')):.0f}% "
                       f"({share(med[('min', 'train', 'fp32')]):.0f}%)")
            tables[k].append(row)
            print(k, "|", " | ".join(row), flush=True)

    head = ("size", "N", "auto train/eval", "train fp32", "min fp32", "ratio", "train bf16",
            "min bf16",
            "ratio", "bf16/fp32", "eval/train fp32", "eval/train bf16", "eval/train auto",
            "fp32 peak share (min)")
    for k, rows in tables.items():
        print(f"\n{k}:")
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for row in rows:
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
