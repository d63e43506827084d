"""Per-example gradients of a model-output function, with `torch.func` (vmap over grad).

The gradient vector of one example is the concatenation of the flattened gradients of every
parameter in `model.named_parameters()` order (the order `traker` uses too), so that row r of a
projection matrix always multiplies the same parameter entry.

The model is evaluated in eval mode with its buffers fixed (BatchNorm uses running statistics):
TRAK linearises the *trained* model around its final parameters.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn
from torch.func import grad, vmap


def param_layout(model: nn.Module) -> list[tuple[str, tuple[int, ...], int]]:
    """[(name, shape, offset into the flat gradient vector)], and the order used everywhere."""
    out, off = [], 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            out.append((name, tuple(p.shape), off))
            off += p.numel()
    return out


def grad_dim(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def per_example_grads(model: nn.Module, output, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    """{param name: (B, *param shape)} gradients of `output.output` for each example of `batch`
    (a tuple of tensors whose first dimension is B)."""
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    g = grad(output.output, argnums=1)
    in_dims = (None, None, None) + (0,) * len(batch)
    return vmap(g, in_dims=in_dims, randomness="different")(model, params, buffers, *batch)


def flat_grads(model: nn.Module, output, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Per-example gradients as one matrix G (B, p), p = number of trainable parameters."""
    gs = per_example_grads(model, output, batch)
    b = batch[0].shape[0]
    return torch.cat([gs[name].reshape(b, -1) for name, _, _ in param_layout(model)], dim=1)


def iter_batches(data: tuple[torch.Tensor, ...], batch_size: int) -> Iterator[tuple[torch.Tensor, ...]]:
    n = data[0].shape[0]
    for i in range(0, n, batch_size):
        yield tuple(t[i:i + batch_size] for t in data)
