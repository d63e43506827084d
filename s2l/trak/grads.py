"""Per-example gradients of a model-output function (see `outputs`), three ways.

The gradient vector of one example is the concatenation of the flattened gradients of every
trainable parameter in `model.named_parameters()` order (the order `traker` uses too), so that
row r of a projection matrix always multiplies the same parameter entry.

- `layer_grads`: one batched forward and backward with hooks, then each layer's per-example
  gradient in closed form from its input a and the gradient g of the output at its output
  (nn.Linear: g a^T, an outer product per example; nn.Conv2d: g unfold(a)^T; BatchNorm in eval
  mode: sum g x_hat). Exact (the same math as autograd; tests/test_trak_fast.py), at least as
  fast as vmap (1.3x on a 26k-parameter MLP at batch 256, even on a small CNN), no vmap
  warm-up, and it writes G straight into the caller's projection buffer in the projection
  dtype (no fp32 G, no concatenation: 0.5 of 2.5 CPU-s on issue #14's MLP).
- `flat_grads`: `torch.func` (vmap over grad), for any model.
- `per_example_grads_loop`: one autograd backward per example. Kept on purpose for
  `transformers` GPT-2 on CPU, where vmap hits a batching fallback for the attention backward
  and ran 1.7x slower than the loop (60 vs 35 sequences/s at 20k parameters, 128 tokens).

The model is evaluated in eval mode with its buffers fixed (BatchNorm uses running statistics):
TRAK linearises the *trained* model around its final parameters.
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
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


# Modules whose per-example parameter gradients `layer_grads` knows in closed form.
_CLOSED_FORM = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)


def closed_form_layers(model: nn.Module) -> list[nn.Module] | None:
    """The modules owning `model`'s trainable parameters if `layer_grads` can handle them all
    (Linear; Conv2d with groups 1, zero padding given as numbers; BatchNorm with running
    statistics, in eval mode; no parameter shared between modules), else None."""
    seen, mods = set(), []
    for mod in model.modules():
        own = [p for p in mod.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        if not isinstance(mod, _CLOSED_FORM) or any(id(p) in seen for p in own):
            return None
        if isinstance(mod, nn.Conv2d) and (mod.groups != 1 or mod.padding_mode != "zeros"
                                           or isinstance(mod.padding, str)):
            return None
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)) and (mod.training or mod.running_mean is None):
            return None
        seen.update(id(p) for p in own)
        mods.append(mod)
    return mods


class _Outer:
    """The per-example outer products g_i a_i^T (B, O, I) of a Linear layer, not materialised:
    `write` fills a (B, O*I) destination a few examples at a time, so the fp32 temporary stays
    in cache and is converted on the fly into the destination's dtype (e.g. bf16)."""

    def __init__(self, g: torch.Tensor, a: torch.Tensor):
        self.g, self.a = g, a  # (B, O), (B, I)

    def tensor(self) -> torch.Tensor:
        return self.g.unsqueeze(2) * self.a.unsqueeze(1)

    def write(self, dst: torch.Tensor) -> None:
        B, O, I = self.g.shape[0], self.g.shape[1], self.a.shape[1]
        step = max(1, (1 << 18) // (O * I))  # ~1 MiB of fp32 per temporary
        for i in range(0, B, step):
            j = min(B, i + step)
            dst[i:j].view(j - i, O, I).copy_(self.g[i:j].unsqueeze(2) * self.a[i:j].unsqueeze(1))


def _module_grads(mod: nn.Module, a: torch.Tensor, g: torch.Tensor) -> dict:
    """{'weight'|'bias': (B, *param shape) tensor or `_Outer`} per-example gradients of one
    call of `mod` from its input a (B, ...) and the output gradient g (B, ...) (same shape as
    the module output)."""
    B = a.shape[0]
    out = {}
    if isinstance(mod, nn.Linear):
        if a.dim() == 2:  # (B, in), (B, out): the gradient of W is the outer product g a^T
            out["weight"] = _Outer(g, a)
            gb = g
        else:  # (B, ..., in): sum of outer products over the extra positions
            a2, g2 = a.reshape(B, -1, a.shape[-1]), g.reshape(B, -1, g.shape[-1])
            out["weight"] = torch.bmm(g2.transpose(1, 2), a2)
            gb = g2.sum(1)
    elif isinstance(mod, nn.Conv2d):
        # W (O, C, kh, kw): dL/dW = sum over output positions l of g[:, l] patch(a)[:, l]^T
        cols = F.unfold(a, mod.kernel_size, dilation=mod.dilation, padding=mod.padding,
                        stride=mod.stride)  # (B, C*kh*kw, L)
        g2 = g.reshape(B, g.shape[1], -1)  # (B, O, L)
        out["weight"] = torch.bmm(g2, cols.transpose(1, 2)).view(B, *mod.weight.shape)
        gb = g2.sum(2)
    else:  # BatchNorm in eval mode: y = x_hat * w + b with x_hat from the running statistics
        shape = (1, -1) + (1,) * (a.dim() - 2)
        x_hat = (a - mod.running_mean.view(shape)) * torch.rsqrt(mod.running_var.view(shape) + mod.eps)
        dims = tuple(range(2, a.dim()))
        out["weight"] = (g * x_hat).sum(dims) if dims else g * x_hat
        gb = g.sum(dims) if dims else g
    if mod.bias is not None:
        out["bias"] = gb
    return out


def layer_grads(model: nn.Module, output, batch: tuple[torch.Tensor, ...],
                out: torch.Tensor | None = None) -> torch.Tensor:
    """Per-example gradients G (B, p), p = trainable parameters in `param_names` order, from one
    batched forward/backward (see the module docstring). Needs `output.batched` and
    `closed_form_layers(model)`; falls back to `flat_grads` (vmap) otherwise.

    out: optional (B, p) destination of any float dtype (e.g. a bf16 row block of a projection
    buffer): written in place, with one rounding per entry, and returned; else G is a new
    tensor in the model's dtype.

    Examples must not interact in the forward pass (true in eval mode: BatchNorm uses running
    statistics), so the gradient of sum_i f_i at layer outputs is the per-example gradient."""
    model.eval()
    mods = closed_form_layers(model)
    if mods is None or not hasattr(output, "batched"):
        return _vmapped(model, output, batch, out)
    calls: dict[nn.Module, list] = {m: [] for m in mods}

    def hook(mod, inputs, o):
        calls[mod].append((inputs[0], o, inputs[0]._version, o._version))

    handles = [m.register_forward_hook(hook) for m in mods]
    try:
        with torch.enable_grad():
            f = output.batched(model, *batch)  # (B,)
    finally:
        for h in handles:
            h.remove()
    # an in-place op after a layer (ReLU(inplace=True)) would make `o` another node of the
    # graph: the closed forms would then be wrong, so use vmap
    if any(a._version != va or o._version != vo for m in mods for a, o, va, vo in calls[m]):
        return _vmapped(model, output, batch, out)
    outs = [o for m in mods for _, o, _, _ in calls[m]]
    gouts = torch.autograd.grad(f.sum(), outs, allow_unused=True)
    B = batch[0].shape[0]
    per_name: dict[str, object] = {}
    names = {id(p): n for n, p in model.named_parameters()}
    i = 0
    for m in mods:
        for a, o, _, _ in calls[m]:
            gout = gouts[i] if gouts[i] is not None else torch.zeros_like(o)
            i += 1
            for attr, val in _module_grads(m, a.detach(), gout.detach()).items():
                key = names[id(getattr(m, attr))]
                if key in per_name:  # a module called more than once: gradients add up
                    prev = per_name[key]
                    val = (prev.tensor() if isinstance(prev, _Outer) else prev) + \
                        (val.tensor() if isinstance(val, _Outer) else val)
                per_name[key] = val
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if out is None:
        out = torch.empty(B, sum(p.numel() for _, p in params), dtype=params[0][1].dtype)
    lo = 0
    for n, p in params:
        dst = out[:, lo:lo + p.numel()]
        lo += p.numel()
        val = per_name.get(n)
        if val is None:  # a module never called (dead branch): zero gradient
            dst.zero_()
        elif isinstance(val, _Outer):
            val.write(dst)
        else:
            dst.copy_(val.reshape(B, -1))
    return out


def _vmapped(model: nn.Module, output, batch: tuple[torch.Tensor, ...],
             out: torch.Tensor | None) -> torch.Tensor:
    """`layer_grads`' fallback: `flat_grads` (vmap), written into `out` when given."""
    G = flat_grads(model, output, batch)
    return G if out is None else out.copy_(G)


def iter_batches(data: tuple[torch.Tensor, ...], batch_size: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """Consecutive slices of `batch_size` rows of every tensor of `data` (first dims equal)."""
    n = data[0].shape[0]
    for i in range(0, n, batch_size):
        yield tuple(t[i:i + batch_size] for t in data)
