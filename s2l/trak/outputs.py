"""Model-output functions f(z; theta) whose parameter gradients TRAK projects.

Each output has
- `output(model, params, buffers, *example)`: a scalar for ONE example (no batch dimension),
  written so that `torch.func.vmap(torch.func.grad(...))` can map it over a batch. Inside vmap,
  `logits[y]` and `F.one_hot(y)` fail on the batched label, so the correct class is selected
  with a comparison against `torch.arange` instead;
- `batched(model, *batch)`: the (B,) outputs of a whole batch in one ordinary forward pass
  (for `grads.layer_grads`, which needs examples not to interact: eval mode);
- `out_to_loss(model, *batch)`: the (B,) reweighting term Q = d loss / d f, used by `traker`
  and optionally by us.

Classification (TRAK, Park et al. 2023, section 3.3): f = log(p_y / (1 - p_y))
= z_y - logsumexp_{c != y} z_c, the "margin"; Q = 1 - p_y.

Causal LM (DsDm, Engstrom et al. 2024): f = mean over next-token predictions t of
p_t / (1 - p_t), where p_t is the probability of the actual token t+1 (computed through the
log-odds for stability). With `log_odds=True` it is the mean log-odds instead (the LM analogue
of the classification margin). Q is 1 (no reweighting): the LM loss is not a function of this
single scalar.
"""
from __future__ import annotations

import torch
from torch.func import functional_call


def margin_from_logits(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """logits (..., C), y (...) -> log(p_y / (1 - p_y)) (...), vmap-safe."""
    is_y = torch.arange(logits.shape[-1], device=logits.device) == y.unsqueeze(-1)
    correct = (logits * is_y).sum(-1)
    others = logits.masked_fill(is_y, float("-inf")).logsumexp(-1)
    return correct - others


class ClassificationMargin:
    """Margin of an image (or any) classifier taking x (B, ...) -> logits (B, C).
    One example is (x (...), y ())."""

    def output(self, model, params, buffers, x, y):
        logits = functional_call(model, (params, buffers), (x.unsqueeze(0),))
        return margin_from_logits(logits, y.unsqueeze(0)).sum()

    def batched(self, model, x, y):
        """x (B, ...), y (B,) -> margins (B,)."""
        return margin_from_logits(model(x), y)

    @torch.no_grad()
    def out_to_loss(self, model, x, y):
        """x (B, ...), y (B,) -> 1 - p_y (B,)."""
        p = torch.softmax(model(x), -1)
        is_y = torch.arange(p.shape[-1]) == y.unsqueeze(-1)
        return 1.0 - (p * is_y).sum(-1)


class LMOddsOutput:
    """Causal LM taking input_ids (B, L) -> logits (B, L, V) (or an object with `.logits`).

    One example is a token sequence (L,); positions 0..L-2 predict tokens 1..L-1. An optional
    mask (L,) of 0/1 marks which *predicted* tokens count (e.g. answer tokens only)."""

    def __init__(self, log_odds: bool = False):
        self.log_odds = log_odds

    def _per_token(self, logits, ids):
        lo = margin_from_logits(logits[..., :-1, :], ids[..., 1:])  # log(p/(1-p)) per position
        return lo if self.log_odds else lo.exp()

    def output(self, model, params, buffers, input_ids, mask=None):
        out = functional_call(model, (params, buffers), (input_ids.unsqueeze(0),))
        logits = getattr(out, "logits", out)[0]
        vals = self._per_token(logits, input_ids)
        if mask is None:
            return vals.mean()
        w = mask[1:].to(vals.dtype)
        return (vals * w).sum() / w.sum().clamp_min(1.0)

    def batched(self, model, input_ids, mask=None):
        """input_ids (B, L), mask (B, L) or None -> outputs (B,)."""
        out = model(input_ids)
        vals = self._per_token(getattr(out, "logits", out), input_ids)  # (B, L-1)
        if mask is None:
            return vals.mean(-1)
        w = mask[:, 1:].to(vals.dtype)
        return (vals * w).sum(-1) / w.sum(-1).clamp_min(1.0)

    @torch.no_grad()
    def out_to_loss(self, model, input_ids, mask=None):
        """(B,) ones: no reweighting."""
        return torch.ones(input_ids.shape[0])
