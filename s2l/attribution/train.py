"""One training recipe for every width: SGD with Nesterov momentum, OneCycle LR, weight decay,
optional label smoothing (the paper's CIFAR recipe, with muP-free shared hyperparameters).

`train_classifier` trains on tensors already in memory and returns the model in eval mode plus
the state dicts of the requested epochs (late-epoch checkpoints are TRAK ensemble members).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn


@dataclasses.dataclass(frozen=True)
class Recipe:
    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.2  # OneCycle peak
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    pct_start: float = 0.25


def train_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: Recipe,
                     seed: int, keep_epochs: tuple[int, ...] = ()) -> dict[int, dict]:
    """Train `model` in place on x (N, C, H, W), y (N,). Returns {epoch: state_dict} for each
    epoch in `keep_epochs` (1-based; the last epoch is always included)."""
    torch.set_flush_denormal(True)  # denormals from saturated softmaxes slow CPUs down a lot
    g = torch.Generator().manual_seed(seed)
    n = len(x)
    steps_per_epoch = max(1, -(-n // recipe.batch_size))
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                          nesterov=True, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=recipe.lr, epochs=recipe.epochs, steps_per_epoch=steps_per_epoch,
        pct_start=recipe.pct_start)
    keep = set(keep_epochs) | {recipe.epochs}
    saved = {}
    model.train()
    for epoch in range(1, recipe.epochs + 1):
        perm = torch.randperm(n, generator=g)
        for s in range(steps_per_epoch):
            idx = perm[s * recipe.batch_size:(s + 1) * recipe.batch_size]
            if len(idx) < 2:  # BatchNorm needs 2 examples; a leftover singleton is skipped
                continue
            loss = F.cross_entropy(model(x[idx]), y[idx], label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if epoch in keep:
            saved[epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.eval()
    return saved


@torch.no_grad()
def margins(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Classification margin log(p_y / (1 - p_y)) per example: (N,) float32, model in eval mode."""
    from s2l.trak.outputs import margin_from_logits

    model.eval()
    out = [margin_from_logits(model(x[i:i + batch_size]), y[i:i + batch_size])
           for i in range(0, len(x), batch_size)]
    return torch.cat(out)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    model.eval()
    hits = sum((model(x[i:i + batch_size]).argmax(-1) == y[i:i + batch_size]).sum().item()
               for i in range(0, len(x), batch_size))
    return hits / max(1, len(x))
