"""TRAK features of one model: projected per-example gradients Phi (n, k) and Q terms (n,).

    phi_i = P^T grad_theta f(z_i; theta)      (k,)   P (p, k) from `project`, f from `outputs`

`featurize` is the same for every model family; only the per-example gradient routine differs
(`grads.flat_grads` by default, `grads.per_example_grads_loop` where vmap is slow).
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from s2l.trak.grads import flat_grads, iter_batches
from s2l.trak.outputs import ClassificationMargin


def featurize(model: nn.Module, data: tuple[torch.Tensor, ...], projector, output=None,
              batch_size: int = 64, grads: Callable = flat_grads) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected gradients Phi (n, k) float32 and out-to-loss terms q (n,) float32 of `model`
    on `data`, a tuple of tensors with first dim n: (x, y) for a classifier (default output:
    the classification margin), (tokens,) or (tokens, mask) for an LM output.
    `grads(model, output, batch) -> G (B, p)` computes the per-example gradients."""
    output = output or ClassificationMargin()
    phis, qs = [], []
    model.eval()
    for batch in iter_batches(data, batch_size):
        phis.append(projector.project(grads(model, output, batch)))
        qs.append(output.out_to_loss(model, *batch).float())
    return torch.cat(phis), torch.cat(qs)


def from_checkpoints(model: nn.Module, checkpoints: Iterable) -> Iterator[nn.Module]:
    """Yield `model` loaded with each checkpoint (a state dict or a path to one), one at a time."""
    for ck in checkpoints:
        state = torch.load(ck, map_location="cpu", weights_only=True) if not isinstance(ck, dict) else ck
        model.load_state_dict(state)
        yield model.eval()
