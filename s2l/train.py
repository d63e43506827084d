"""Training one LM: AdamW, linear warmup + cosine decay, gradient clipping, checkpoints.

The loop is a deterministic function of (model init seed, batch function, config): batches
come from `batch_fn(step)`, a pure function of the step index, and checkpoints hold the model,
optimizer and step. So a cell that is killed, preempted or requeued resumes from its last
checkpoint and ends with bit-identical weights on the same hardware and thread count.

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


def autocast(device: torch.device, precision: str):
    """bf16 autocast on CUDA by default ("auto"); on CPU only when asked ("bf16"): it pays
    off there only from ~5M parameters (docs/architecture.md, measured choices)."""
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    # No weight decay on biases and LayerNorm gains (the usual GPT recipe).
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    fused = next(model.parameters()).is_cuda
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2), fused=fused or None)


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
        t = torch.tensor([value], dtype=torch.float64)
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
    net = dist.wrap(model, device)
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
        with autocast(device, cfg.precision):
            logits = net(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))
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
            best, uniform = min(m for _, m in history), math.log(logits.size(-1))
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
