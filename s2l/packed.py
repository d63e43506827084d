"""K same-shape models trained as one: the proxies of a GPU job packed into batched kernels.

A proxy of 25k-1M parameters leaves a GPU almost idle: its matmuls are a few kilobytes, so a
step costs kernel launches, not arithmetic. `train_packed` stacks the K models' parameters
along a new leading dimension (`torch.func.stack_module_state`) and runs one forward and
backward for all of them with `torch.func.vmap` over `functional_call` of the model itself,
so each launch does K models' work. The models stay what they were (`s2l.gpt2.GPT2LM`s): their
trained weights are copied back at the end (loadable with `from_pretrained` as before).

It is the same recipe as `s2l.train.train`, model by model: the same learning-rate schedule
(`lr_at`), AdamW with the same decay groups (AdamW is elementwise, so one optimizer over the
stacked tensors updates each model as its own optimizer would), gradient clipping by each
model's own global norm, fp32 loss on (optionally bf16-autocast) logits. Losses agree with
sequential training to float rounding (batched kernels sum in another order), not bit for bit:
a packed cell is a different numerical run from an unpacked one, and is recorded as such.

Shapes: K models, batches (K, B, T + 1) int64 (model k's rows are batch_fns[k](step)),
stacked parameters (K, *param.shape).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch.func import functional_call, stack_module_state, vmap

from s2l.config import TrainConfig
from s2l.gpt2 import set_attention
from s2l.train import Diverged, autocast, lr_at, non_embedding_params, pick_device, resolve_precision


def train_packed(models: Sequence[torch.nn.Module], batch_fns: Sequence[Callable[[int], np.ndarray]],
                 total_steps: int, cfg: TrainConfig, device: torch.device | None = None,
                 on_log: Callable[[int, np.ndarray, float], None] | None = None
                 ) -> list[list[tuple[int, float]]]:
    """Train `models` (same architecture) in place, each on its own batches, in one vmapped
    step. Returns each model's loss curve [(step, mean loss over the log window)], as
    `s2l.train.train` does. on_log(step, losses (K,), tokens_per_s of all K together)."""
    if len(models) != len(batch_fns) or not models:
        raise ValueError(f"{len(models)} models but {len(batch_fns)} batch functions")
    device = device or pick_device()
    attention = []
    for m in models:
        m.to(device)
        # The eager attention is plain matmuls, which vmap batches; a fused SDPA kernel has no
        # batching rule on every backend and would fall back to a per-model loop.
        attention.append(set_attention(m, "eager"))
        m.train()
    params, buffers = stack_module_state(list(models))  # leaves: (K, *shape), requires_grad
    base = models[0]
    k = len(models)
    precision = resolve_precision(cfg.precision, device, non_embedding_params(base))

    def loss_of(p, b, batch):  # one model's mean next-token loss on its (B, T + 1) batch
        with autocast(device, precision):
            logits = functional_call(base, (p, b), (batch[:, :-1],)).logits
        return torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))

    batched_loss = vmap(loss_of)
    # Decay groups as s2l.train.make_optimizer, on the unstacked shapes (dim >= 2 decays).
    decay = [p for p in params.values() if p.dim() >= 3]
    no_decay = [p for p in params.values() if p.dim() < 3]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, cfg.beta2), fused=device.type == "cuda" or None)

    histories: list[list[tuple[int, float]]] = [[] for _ in range(k)]
    window: list[torch.Tensor] = []
    tokens, t_last = 0, _clock(device)
    for step in range(total_steps):
        batch = torch.from_numpy(np.stack([fn(step) for fn in batch_fns])).to(device, non_blocking=True)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total_steps, cfg)
        losses = batched_loss(params, buffers, batch)  # (K,)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # models share nothing: each stacked slice gets its own grad
        if cfg.grad_clip > 0:
            _clip_per_model(list(params.values()), cfg.grad_clip)
        optimizer.step()
        window.append(losses.detach())
        tokens += batch[:, :, 1:].numel()
        done = step + 1
        if done % cfg.log_every == 0 or done == total_steps:
            means = torch.stack(window).float().mean(0).cpu().numpy()  # one sync per window
            if not np.isfinite(means).all():
                bad = int(np.flatnonzero(~np.isfinite(means))[0])
                raise Diverged(f"packed model {bad}: training loss is {means[bad]} at step {done}")
            for i in range(k):
                histories[i].append((done, float(means[i])))
            now = _clock(device)
            if on_log:
                on_log(done, means, tokens / max(now - t_last, 1e-9))
            window, tokens, t_last = [], 0, now
    with torch.no_grad():  # copy the trained slices back into the models
        for i, m in enumerate(models):
            m.load_state_dict({n: p[i] for n, p in params.items()}, strict=False)
    for m, impl in zip(models, attention):  # evaluation goes back to the fused kernel
        set_attention(m, impl)
    return histories


def _clip_per_model(stacked: list[torch.Tensor], max_norm: float) -> None:
    """clip_grad_norm_ of each model on its own: the norm over model i's slices of every
    parameter, the same coefficient max_norm / (norm + 1e-6), capped at 1."""
    grads = [p.grad for p in stacked if p.grad is not None]
    sq = torch.stack([g.float().pow(2).flatten(1).sum(1) for g in grads]).sum(0)  # (K,)
    coef = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))


def _clock(device: torch.device) -> float:
    import time

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def flops_per_token(d_model: int, n_layers: int, vocab: int, seq_len: int, n_params: int) -> float:
    """Training FLOPs per token: 6 (N + d V) for the weights incl. the tied head, plus
    12 L d T for attention scores and values (forward + backward), as in PaLM's MFU."""
    return 6.0 * (n_params + d_model * vocab) + 12.0 * n_layers * d_model * seq_len

