"""DsDm (Engstrom, Feldmann, Madry 2024): select the candidates that a datamodel predicts lower
the target loss most, with TRAK datamodels computed on small proxies.

For each proxy model m (trained on a random subset of the pool) TRAK featurizes the pool and
the target examples with the LM model output

    f(z; theta) = mean over z's predicted tokens t of log(p_t / (1 - p_t))   (trak.log_odds: true)
                  mean over z's predicted tokens t of p_t / (1 - p_t)        (log_odds: false, DsDm's)

(`s2l.attribution.outputs.LMOddsOutput`). A pool row's predicted tokens are all its tokens; a
target example's are its whole text, prompt + answer (`trak.target_tokens: full`, the default)
or only the answer tokens the task scores (`answer`). Why the defaults: on the offline default
(scripture cloze, 1-3 answer tokens) the answer-only p/(1-p) datamodel of 20k/100k proxies
picked the scripture share of random selection (16-18% vs 14%) and did not beat random on the
holdout; the whole text raised it to 35%, and log-odds (loss-like: small p_t no longer shrink
a token's gradient to ~0) to 45%, judged on the target split only. Then, `s2l.attribution.trak.score_blockwise` gives
S (n_pool, T): S[i, j] > 0 means including candidate i is predicted to RAISE target j's
output, i.e. raise the probability of its answer tokens, i.e. LOWER its loss. So

    w = S.mean(axis=1)              (n_pool,)  datamodel averaged over target examples
    predicted target loss change   = -w        (up to a positive factor)
    DsDm selection                 = the n candidates with the largest w

(the DsDm paper states it as minimising the predicted loss; the traker code's scores are
output-raising, hence the sign here; `tests/test_selection_dsdm.py` checks the direction on a
planted pool).

Per-example gradients: a loop of one backward per sequence, not `torch.func.vmap`: on CPU
with `transformers` GPT-2 the vmap path hits a batching fallback for attention backward and
ran 1.7x slower than the loop (60 vs 35 sequences/s at 20k parameters, 128 tokens); the
attention is switched to the eager implementation for the same reason.
"""
from __future__ import annotations

import numpy as np
import torch


def lm_output(log_odds: bool = False):
    from s2l.attribution.outputs import LMOddsOutput

    return LMOddsOutput(log_odds=log_odds)


def per_example_grads(model: torch.nn.Module, output, tokens: torch.Tensor,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """G (B, p) float32: gradient of `output.output` for each row of tokens (B, L) (with
    optional loss mask (B, L)), parameters in `named_parameters()` order (as
    `s2l.attribution.grads.param_layout`, so projections match the attribution package)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = dict(model.named_parameters())
    plist = [params[n] for n in names]
    rows = []
    for b in range(tokens.shape[0]):
        value = output.output(model, params, {}, tokens[b], None if mask is None else mask[b])
        grads = torch.autograd.grad(value, plist)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows).float()


def featurize(model: torch.nn.Module, tokens: np.ndarray, mask: np.ndarray | None, projector,
              log_odds: bool = False, batch_size: int = 16) -> np.ndarray:
    """Projected gradients Phi (n, k) float32 of the LM output on token rows (n, L)."""
    model.eval()
    # eager attention: see the module docstring (SDPA backward has no fast per-example path)
    model.config._attn_implementation = "eager"
    output = lm_output(log_odds)
    out = []
    for lo in range(0, len(tokens), batch_size):
        t = torch.from_numpy(np.asarray(tokens[lo:lo + batch_size], dtype=np.int64))
        m = None if mask is None else torch.from_numpy(np.asarray(mask[lo:lo + batch_size]))
        out.append(projector.project(per_example_grads(model, output, t, m)))
    return torch.cat(out).numpy()


def make_projector(model: torch.nn.Module, proj_dim: int, seed: int):
    """The attribution package's seeded chunked Rademacher projector for `model`'s gradients,
    cached in memory (P is regenerated per batch otherwise)."""
    from s2l.attribution.grads import grad_dim
    from s2l.attribution.project import ChunkedProjector

    p = grad_dim(model)
    return ChunkedProjector(p, proj_dim, seed, cache_bytes=max(1 << 30, 4 * p * proj_dim))


def scores(phi_train, phi_target, ridge: float = 0.0) -> np.ndarray:
    """Ensemble TRAK scores S (n, T) float32 from features (M, n, k), (M, T, k); no Q term
    (the LM output has none, and the paper drops it)."""
    from s2l.attribution.trak import score_blockwise

    return score_blockwise(phi_train, phi_target, None, ridge=ridge)


def datamodel(S: np.ndarray) -> np.ndarray:
    """w (n,) float64: the datamodel averaged over target examples; larger = lower predicted
    target loss when the candidate is included."""
    return np.asarray(S, dtype=np.float64).mean(axis=1)


def select(S: np.ndarray, n: int) -> np.ndarray:
    """DsDm: indices (n,) int64 of the n candidates with the lowest predicted target loss,
    best first; ties broken by pool order (a stable sort), so it is deterministic."""
    predicted_loss = -datamodel(S)
    return np.argsort(predicted_loss, kind="stable")[:n].astype(np.int64)


def random_select(n_pool: int, n: int, seed: int) -> np.ndarray:
    """The baseline: n distinct candidates uniformly at random, (n,) int64."""
    return np.random.default_rng(seed).choice(n_pool, size=n, replace=False).astype(np.int64)
