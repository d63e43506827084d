"""Per-example gradients of a model-output function (see `outputs`), two ways.

The gradient vector of one example is the concatenation of the flattened gradients of every
trainable parameter in `model.named_parameters()` order (the order `traker` uses too), so that
row r of a projection matrix always multiplies the same parameter entry.

- `flat_grads`: `torch.func` (vmap over grad), the fast path for most models.
- `per_example_grads_loop`: one autograd backward per example. Kept on purpose for
  `transformers` GPT-2 on CPU, where vmap hits a batching fallback for the attention backward
  and ran 1.7x slower than the loop (60 vs 35 sequences/s at 20k parameters, 128 tokens).

The model is evaluated in eval mode with its buffers fixed (BatchNorm uses running statistics):
TRAK linearises the *trained* model around its final parameters.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import nn
from torch.func import grad, vmap


def param_names(model: nn.Module) -> list[str]:
    """Names of the trainable parameters: the order of every flat gradient vector."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def grad_dim(model: nn.Module) -> int:
    """p: entries of one flat gradient vector (trainable parameters)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def per_example_grads(model: nn.Module, output, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    """{param name: (B, *param shape)} gradients of `output.output` for each example of `batch`
    (a tuple of tensors whose first dimension is B), by vmap over grad."""
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    g = grad(output.output, argnums=1)
    in_dims = (None, None, None) + (0,) * len(batch)
    return vmap(g, in_dims=in_dims, randomness="different")(model, params, buffers, *batch)


def flat_grads(model: nn.Module, output, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Per-example gradients as one matrix G (B, p) (vmap), p = trainable parameters."""
    gs = per_example_grads(model, output, batch)
    b = batch[0].shape[0]
    return torch.cat([gs[name].reshape(b, -1) for name in param_names(model)], dim=1)


def per_example_grads_loop(model: nn.Module, output, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The same G (B, p) float32 as `flat_grads`, by one backward per example of `batch`
    (a tuple of tensors whose first dimension is B, e.g. (tokens (B, L), mask (B, L)))."""
    names = param_names(model)
    params = dict(model.named_parameters())
    plist = [params[n] for n in names]
    rows = []
    for b in range(batch[0].shape[0]):
        value = output.output(model, params, {}, *(t[b] for t in batch))
        grads = torch.autograd.grad(value, plist)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows).float()


def iter_batches(data: tuple[torch.Tensor, ...], batch_size: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """Consecutive slices of `batch_size` rows of every tensor of `data` (first dims equal)."""
    n = data[0].shape[0]
    for i in range(0, n, batch_size):
        yield tuple(t[i:i + batch_size] for t in data)
