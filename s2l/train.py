"""Training one LM: AdamW, linear warmup + cosine decay, gradient clipping, checkpoints.

The loop is a deterministic function of (model init seed, batch function, config): batches
come from `batch_fn(step)`, a pure function of the step index, and checkpoints hold the model,
optimizer and step. So a cell that is killed, preempted or requeued resumes from its last
checkpoint and ends with bit-identical weights on the same hardware and thread count.

Speed (docs/performance.md): the vocabulary head and its cross-entropy are fused and blocked
(`linear_cross_entropy`: the (B, T, V) logits never exist), GPT-2's forward is one function
over its parameters (`s2l.gpt2.final_hidden`, no module wrappers), AdamW is fused, and
`precision: auto` is resolved by device, CPU capability and model size (`resolve_precision`).

Runs on CPU or one CUDA device, in bf16 autocast when asked (`precision`), and under
torch.distributed (DDP) when launched with WORLD_SIZE > 1 (torchrun-style env vars, set by
`hpc/` from the Slurm job): every rank computes the same global batch indices and takes its
own rows, rank 0 alone writes checkpoints.

Two guards keep a bad run from becoming a result or a stuck cell:
- divergence: a non-finite training loss stops training at that step, and a log window whose
  mean loss rises above `train.diverge_factor` x the best window so far and above a uniform
  guess (ln V) fails the cell (`Diverged`, with the step and the losses seen), instead of
  training on to the end;
- checkpoints: the last two are kept (`ckpt.pt`, `ckpt.prev.pt`); one that cannot be read
  (truncated by a full disk, say) falls back to the previous one, else to a fresh start, with
  a warning line. A resumed run sees the same batches, so either way the result is the same.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from s2l.config import TrainConfig
from s2l.gpt2 import body_and_head, final_hidden

#: Seconds between time-based checkpoints, on top of every `checkpoint_every` steps: bounds
#: the work lost to a preemption that gives no warning.
CHECKPOINT_EVERY_S = 120.0


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warmup over `warmup_frac` of training, then cosine to `min_lr_ratio * lr`."""
    warmup = max(1, int(cfg.warmup_frac * total))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = cfg.min_lr_ratio * cfg.lr
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * progress))


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        device = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(device)  # NCCL collectives run on the current device
        return device
    return torch.device("cpu")


#: Smallest non-embedding parameter count at which `precision: auto` picks bf16 autocast on a
#: CPU with fast bf16 (AMX) for training. Below it the casts and bf16 kernels' fixed costs
#: outweigh the faster matmuls (benchmarks/bench_train.py, docs/performance.md: s2l training
#: bf16/fp32 0.46-0.74x at 20k-500k, 0.90-1.00x at 1M, 0.95-0.97x at 2.7M, 1.10x at 4.7M).
BF16_CPU_MIN_PARAMS = 4_000_000
#: The same for inference (`s2l.evaluate`): forward-only passes have no backward and optimizer
#: casts to amortise, so bf16 pays from smaller sizes (measured: eval bf16/fp32 1.0x at 25k,
#: 1.1x at 57k, 1.2x at 100k-200k).
BF16_CPU_MIN_PARAMS_INFERENCE = 50_000


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags of the first processor in `path` (empty when unreadable)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def fast_cpu_bf16(flags: frozenset[str] | None = None) -> bool:
    """True when this CPU runs bf16 matmuls much faster than fp32: AMX tiles with bf16
    (Sapphire Rapids and later: ~4x fp32 per core). AVX512_BF16 alone gives ~2x on paper and
    less in practice once the casts are paid, so it does not count."""
    flags = cpu_flags() if flags is None else flags
    return "amx_bf16" in flags and torch.backends.mkldnn.is_available()


def resolve_precision(requested: str, device: torch.device, n_params: int,
                      flags: frozenset[str] | None = None, inference: bool = False) -> str:
    """The precision a run uses: "fp32" or "bf16" (autocast).

    requested: "fp32" | "bf16" (taken as is) | "auto": bf16 on CUDA (when the GPU supports it),
    on CPU bf16 only with fast bf16 (`fast_cpu_bf16`) AND n_params (non-embedding) >=
    `BF16_CPU_MIN_PARAMS` (`BF16_CPU_MIN_PARAMS_INFERENCE` when `inference`), fp32 otherwise.
    A pure function of (device, CPU flags, size): the same machine always decides the same
    way. `flags` overrides /proc/cpuinfo (tests).
    """
    if requested in ("fp32", "bf16"):
        return requested
    if requested != "auto":
        raise ValueError(f"precision must be auto, fp32 or bf16, not {requested!r}")
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    floor = BF16_CPU_MIN_PARAMS_INFERENCE if inference else BF16_CPU_MIN_PARAMS
    if device.type == "cpu" and fast_cpu_bf16(flags) and n_params >= floor:
        return "bf16"
    return "fp32"


def non_embedding_params(model: torch.nn.Module) -> int:
    """Parameters outside the token and position embeddings (the tied head counts as the
    token embedding), the size `resolve_precision` decides on."""
    skip = set()
    for get in ("get_input_embeddings", "get_output_embeddings"):
        emb = getattr(model, get, lambda: None)()
        if emb is not None:
            skip.add(id(emb.weight))
    wpe = getattr(getattr(model, "transformer", None), "wpe", None)
    if wpe is not None:
        skip.add(id(wpe.weight))
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def autocast(device: torch.device, precision: str):
    """bf16 autocast when `precision` is "bf16" (resolve "auto" first with
    `resolve_precision`; an unresolved "auto" means bf16 on CUDA only)."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


#: Rows of the vocabulary head computed at a time by `linear_cross_entropy`, by matmul dtype:
#: in fp32 a (512, V) block of logits stays in a core's L2 cache (512 x 1024 x 4 B = 2 MiB)
#: instead of round-tripping a (B T, V) tensor through memory three times (logits,
#: log-softmax, grad); bf16 (AMX) matmuls need taller blocks to run at speed (measured:
#: 256 rows is slower than the unfused head in bf16, 1024 faster).
HEAD_CHUNK_ROWS = {torch.float32: 512, torch.bfloat16: 1024, torch.float16: 1024}


def _compute_dtype(device_type: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype matmuls run in here: autocast's when it is on, else the tensors' own."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return dtype


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of logits = hidden @ weight.T, with the gradient computed in the
    forward pass, block by block (see `linear_cross_entropy`)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk):
        m = hidden.size(0)
        cdt = _compute_dtype(hidden.device.type, hidden.dtype)
        chunk = chunk or HEAD_CHUNK_ROWS.get(cdt, 512)
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(cdt)
            grad_h = torch.empty(hidden.shape, dtype=cdt, device=hidden.device)
            grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for lo in range(0, m, chunk):
                h = hidden[lo:lo + chunk].to(cdt)
                t = targets[lo:lo + chunk, None]
                logp = torch.log_softmax((h @ w.t()).float(), 1)  # (c, V), fp32 softmax math
                total -= logp.gather(1, t).sum()
                p = logp.exp_()                                   # softmax, in place
                p.scatter_add_(1, t, torch.full(t.shape, -1.0, device=p.device))  # - one-hot
                p = p.to(cdt)
                torch.mm(p, w, out=grad_h[lo:lo + chunk])       # d loss_sum / d h
                if cdt == torch.float32:
                    grad_w.addmm_(p.t(), h)                     # d loss_sum / d W
                else:
                    grad_w += (p.t() @ h).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.m, ctx.h_dtype, ctx.w_dtype = m, hidden.dtype, weight.dtype
        return total / m

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        scale = grad_out / ctx.m
        return ((grad_h * scale).to(ctx.h_dtype), (grad_w * scale).to(ctx.w_dtype), None, None)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         chunk: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of the vocabulary head: F.cross_entropy(hidden @ weight.T, targets).

    hidden (M, d), weight (V, d), targets int64 (M,) -> fp32 scalar. The logits never exist
    as a whole: each block of `chunk` rows is computed, turned into its loss and its gradient
    (softmax - one-hot) while it is in cache, and multiplied back into d hidden (M, d) and
    d weight (V, d) at once; backward only scales them (`chunk` None: `HEAD_CHUNK_ROWS`). Same
    FLOPs as the unfused head + loss, a third of its memory traffic, and no (M, V)
    log-softmax written and read back (15% of a step at 100k params).
    Matmuls run in autocast's dtype when autocast is on; the softmax is always fp32.
    Deterministic: a fixed block order.
    """
    return _LinearCrossEntropy.apply(hidden, weight, targets, chunk)


class LMLoss(torch.nn.Module):
    """The training objective as one module: a GPT-2-style causal LM (`.transformer` and a
    `.lm_head` tied to the embedding, as `s2l.model.build_model` makes) and its mean next-token
    cross-entropy through `linear_cross_entropy`, so the (B, T, V) logits are never built.
    Wrapping the pair (not the LM alone) in DDP keeps the gradient all-reduce working; the
    checkpoints still hold `model.state_dict()`, loadable with `from_pretrained`."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """inputs, targets int64 (B, T) -> fp32 scalar."""
        model = self.model
        if not body_and_head(model):
            logits = model(input_ids=inputs).logits  # any other causal LM: the plain path
            return torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))
        hidden = final_hidden(model, inputs)  # (B, T, d)
        return linear_cross_entropy(hidden.reshape(-1, hidden.size(-1)), model.lm_head.weight,
                                    targets.reshape(-1))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    # No weight decay on biases and LayerNorm gains (the usual GPT recipe).
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # Fused AdamW (one kernel over all parameters, CUDA and CPU): on CPU the default is the
    # per-parameter for-loop, ~10 kernels per tensor.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2), fused=True)


class Diverged(RuntimeError):
    """Training diverged: the message says at which step and what loss was seen."""


class Distributed:
    """torch.distributed from torchrun-style env vars; a no-op for a single process."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.rank = int(os.environ.get("RANK", 0))
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            torch.distributed.init_process_group(backend=backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        if self.world == 1:
            return model
        ids = [device.index] if device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def shard(self, batch: np.ndarray) -> np.ndarray:
        """This rank's rows of the global batch (B must divide by the world size)."""
        return batch[self.rank::self.world]

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        # NCCL reduces only CUDA tensors (a CPU one fails: "No backend type associated with
        # device type cpu", seen on an H200); gloo only CPU ones
        nccl = torch.distributed.get_backend() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else None
        t = torch.tensor([value], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return t.item() / self.world

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def previous(path: Path) -> Path:
    """Where the checkpoint before `path` is kept (`ckpt.pt` -> `ckpt.prev.pt`)."""
    return path.with_suffix(".prev" + path.suffix)


def save_checkpoint(path: Path, model, optimizer, step: int, history: list,
                    window: list | None = None) -> None:
    """Atomic write (tmp + rename): a kill during the save never leaves a corrupt file; the
    checkpoint it replaces is kept as `previous(path)`. A failed write (disk full) leaves no
    temporary file behind and raises OSError naming the path."""
    tmp = path.with_suffix(".tmp")
    try:
        # `window`: losses of the log window in progress, so that a checkpoint between two
        # log steps resumes to the same loss curve, not only the same weights.
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "step": step, "history": history,
                    "window": [float(x) for x in (window or [])]}, tmp)
    except (OSError, RuntimeError) as e:  # torch wraps a failed write in RuntimeError
        tmp.unlink(missing_ok=True)
        raise OSError(f"cannot write checkpoint {tmp}: {e}") from e
    if path.exists():
        os.replace(path, previous(path))
    os.replace(tmp, path)


def load_checkpoint(path: Path, device: torch.device) -> dict | None:
    """The newest readable checkpoint of `path` and `previous(path)`, or None (start fresh).

    Unreadable files are reported on stdout and left where they are (the next save replaces
    them): a corrupt checkpoint must neither block its cell nor be resumed silently."""
    for candidate in (path, previous(path)):
        if not candidate.exists():
            continue
        try:
            state = torch.load(candidate, map_location=device, weights_only=False)
            if not all(k in state for k in ("model", "optimizer", "step", "history")):
                raise ValueError("missing keys")
            return state
        except Exception as e:  # noqa: BLE001 - any unreadable file: fall back, say so
            print(f"[s2l] warning: checkpoint {candidate} is unreadable ({type(e).__name__}: "
                  f"{str(e)[:200]}); trying an older one", flush=True)
    if path.exists() or previous(path).exists():
        print("[s2l] warning: no readable checkpoint; training from scratch", flush=True)
    return None


def discard_checkpoints(path: Path) -> None:
    for p in (path, previous(path), path.with_suffix(".tmp")):
        p.unlink(missing_ok=True)


def train(model: torch.nn.Module, batch_fn: Callable[[int], np.ndarray], total_steps: int,
          cfg: TrainConfig, checkpoint: Path | None = None,
          on_log: Callable[[int, float, float], None] | None = None) -> list[tuple[int, float]]:
    """Train `model` in place for `total_steps` optimizer steps.

    batch_fn(step) -> int64 array (B, seq_len + 1): inputs are [:, :-1], targets [:, 1:].
    on_log(step, loss, tokens_per_s) is called every `cfg.log_every` steps on rank 0.
    Returns the training-loss curve [(step, mean loss over the last log window)].
    """
    dist = Distributed()
    if cfg.batch_size % dist.world:
        raise ValueError(f"train.batch_size={cfg.batch_size} must be divisible by the "
                         f"{dist.world} processes of a multi-GPU/multi-task cell")
    device = pick_device()
    model.to(device)
    precision = resolve_precision(cfg.precision, device, non_embedding_params(model))
    vocab = model.config.vocab_size  # ln V: the divergence guard's uniform-guess loss
    optimizer = make_optimizer(model, cfg)
    start, history = 0, []
    state = load_checkpoint(checkpoint, device) if checkpoint is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, history = state["step"], state["history"]
        resumed_window = [torch.tensor(x, dtype=torch.float32, device=device)
                          for x in state.get("window", [])]
        if dist.is_main:
            print(f"[s2l] resumed from {checkpoint} at step {start}/{total_steps}", flush=True)
    net = dist.wrap(LMLoss(model), device)
    if cfg.compile:
        net = torch.compile(net)
    net.train()

    window = resumed_window if state is not None else []
    t_last, tokens_window, t_ckpt = time.perf_counter(), 0, time.monotonic()
    for step in range(start, total_steps):
        batch = torch.from_numpy(dist.shard(batch_fn(step))).to(device, non_blocking=True)
        inputs, targets = batch[:, :-1], batch[:, 1:]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total_steps, cfg)
        with autocast(device, precision):
            loss = net(inputs, targets)
        if not torch.isfinite(loss):  # one sync per step: free on CPU, cheap next to a step
            raise Diverged(f"training loss is {loss.item()} at step {step + 1}/{total_steps}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()

        window.append(loss.detach())
        tokens_window += targets.numel() * dist.world
        done = step + 1
        if done % cfg.log_every == 0 or done == total_steps:
            # .item() is a device sync: once per log window, not per step.
            mean = dist.mean(torch.stack(window).float().mean().item())
            now = time.perf_counter()
            history.append((done, mean))
            # Diverged: far above its best AND worse than a uniform guess over the vocabulary
            # (ln V); the second condition keeps near-zero losses' noise from tripping it.
            best, uniform = min(m for _, m in history), math.log(vocab)
            if mean > max(cfg.diverge_factor * best, uniform):
                raise Diverged(f"training loss rose to {mean:.4g} at step {done}/{total_steps}: "
                               f"{mean / best:.1f}x its best {best:.4g} (train.diverge_factor "
                               f"{cfg.diverge_factor}) and above ln V = {uniform:.3g}")
            if on_log and dist.is_main:
                on_log(done, mean, tokens_window / max(now - t_last, 1e-9))
            window, t_last, tokens_window = [], now, 0
        # Time-based saves only at log boundaries, so a resumed loss curve is the same too.
        due = done % cfg.checkpoint_every == 0 or (
            done % cfg.log_every == 0 and time.monotonic() - t_ckpt > CHECKPOINT_EVERY_S)
        if checkpoint is not None and due and done < total_steps:
            if dist.is_main:
                save_checkpoint(checkpoint, model, optimizer, done, history, window)
            t_ckpt = time.monotonic()
    dist.barrier()
    return history
