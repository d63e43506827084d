"""TRAK features of one model: projected per-example gradients Phi (n, k) and Q terms (n,).

    phi_i = P^T grad_theta f(z_i; theta)      (k,)   P (p, k) from `project`, f from `outputs`

`featurize` is the same for every model family; only the per-example gradient routine differs
(`grads.layer_grads` by default: closed forms for Linear/Conv2d/BatchNorm models, vmap for the
rest; `grads.per_example_grads_loop` where vmap is slow).

Gradients of several batches are projected together (up to `proj_rows` rows, and at most
`_BUFFER_BYTES` of gradients): a (64 x p) @ (p x k) product reaches ~55% of the (1024 x p)
one's FLOP rate in bf16 on this CPU, so small gradient batches would waste the projection.
The projector has `project(G (B, p)) -> (B, k) float32` and, for the buffer, `p` (gradient
entries; without it, batches are projected one by one).
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

import torch
from torch import nn

from s2l.trak.grads import iter_batches, layer_grads
from s2l.trak.outputs import ClassificationMargin

_BUFFER_BYTES = 256 * 2**20  # gradient rows held before projecting


def _proj_dtype(projector) -> torch.dtype:
    dt = getattr(projector, "dtype", None) or getattr(getattr(projector, "P", None), "dtype", None)
    return dt if isinstance(dt, torch.dtype) and dt.is_floating_point else torch.float32


def featurize(model: nn.Module, data: tuple[torch.Tensor, ...], projector, output=None,
              batch_size: int = 64, grads: Callable = layer_grads,
              proj_rows: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected gradients Phi (n, k) float32 and out-to-loss terms q (n,) float32 of `model`
    on `data`, a tuple of tensors with first dim n: (x, y) for a classifier (default output:
    the classification margin), (tokens,) or (tokens, mask) for an LM output.

    `grads(model, output, batch) -> G (B, p)` computes the per-example gradients of a batch of
    `batch_size` rows. They are written into one reused buffer of up to `proj_rows` rows in
    the projector's dtype (`layer_grads` writes there directly: one rounding, no fp32 copy of
    G, no fresh pages to fault in per batch) and projected together."""
    output = output or ClassificationMargin()
    n = data[0].shape[0]
    p = getattr(projector, "p", None)
    if p is None:  # a projector that does not say its input width: project batch by batch
        phis, qs = [], []
        model.eval()
        for batch in iter_batches(data, batch_size):
            phis.append(projector.project(grads(model, output, batch)))
            qs.append(output.out_to_loss(model, *batch).float())
        return torch.cat(phis), torch.cat(qs)
    dtype = _proj_dtype(projector)
    cap = max(1, min(proj_rows, _BUFFER_BYTES // (torch.finfo(dtype).bits // 8 * p), n))
    cap = max(batch_size, cap // batch_size * batch_size)  # whole batches fit
    buf = torch.empty(min(cap, n), p, dtype=dtype)
    direct = grads is layer_grads
    phis, qs, rows = [], [], 0
    model.eval()
    for batch in iter_batches(data, batch_size):
        B = batch[0].shape[0]
        if rows + B > buf.shape[0]:
            phis.append(projector.project(buf[:rows]))
            rows = 0
        if direct:
            layer_grads(model, output, batch, out=buf[rows:rows + B])
        else:
            buf[rows:rows + B].copy_(grads(model, output, batch))
        rows += B
        qs.append(output.out_to_loss(model, *batch).float())
    if rows:
        phis.append(projector.project(buf[:rows]))
    return torch.cat(phis), torch.cat(qs)


def from_checkpoints(model: nn.Module, checkpoints: Iterable) -> Iterator[nn.Module]:
    """Yield `model` loaded with each checkpoint (a state dict or a path to one), one at a time."""
    for ck in checkpoints:
        state = torch.load(ck, map_location="cpu", weights_only=True) if not isinstance(ck, dict) else ck
        model.load_state_dict(state)
        yield model.eval()
