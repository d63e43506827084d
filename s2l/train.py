"""Training one LM: AdamW, linear warmup + cosine decay, gradient clipping, checkpoints.

The loop is a deterministic function of (model init seed, batch function, config): batches
come from `batch_fn(step)`, a pure function of the step index, and checkpoints hold the model,
optimizer and step. So a cell that is killed, preempted or requeued resumes from its last
checkpoint and ends with bit-identical weights on the same hardware and thread count.

Runs on CPU or one CUDA device, in bf16 autocast when asked (`precision`), and under
torch.distributed (DDP) when launched with WORLD_SIZE > 1 (torchrun-style env vars, set by
`hpc/` from the Slurm job): every rank computes the same global batch indices and takes its
own rows, rank 0 alone writes checkpoints.
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
    off there only from ~5M parameters (DESIGN.md measurements)."""
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


def save_checkpoint(path: Path, model, optimizer, step: int, history: list) -> None:
    """Atomic write (tmp + rename): a kill during the save never leaves a corrupt file."""
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "step": step, "history": history}, tmp)
    os.replace(tmp, path)


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
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, history = state["step"], state["history"]
        if dist.is_main:
            print(f"[s2l] resumed from {checkpoint} at step {start}/{total_steps}", flush=True)
    net = dist.wrap(model, device)
    if cfg.compile:
        net = torch.compile(net)
    net.train()

    window, t_last, tokens_window, t_ckpt = [], time.perf_counter(), 0, time.monotonic()
    for step in range(start, total_steps):
        batch = torch.from_numpy(dist.shard(batch_fn(step))).to(device, non_blocking=True)
        inputs, targets = batch[:, :-1], batch[:, 1:]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total_steps, cfg)
        with autocast(device, cfg.precision):
            logits = net(input_ids=inputs).logits
        loss = torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))
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
            if on_log and dist.is_main:
                on_log(done, mean, tokens_window / max(now - t_last, 1e-9))
            window, t_last, tokens_window = [], now, 0
        # Time-based saves only at log boundaries, so a resumed loss curve is the same too.
        due = done % cfg.checkpoint_every == 0 or (
            done % cfg.log_every == 0 and time.monotonic() - t_ckpt > CHECKPOINT_EVERY_S)
        if checkpoint is not None and due and done < total_steps:
            if dist.is_main:
                save_checkpoint(checkpoint, model, optimizer, done, history)
            t_ckpt = time.monotonic()
    dist.barrier()
    return history
