"""DsDm (Engstrom, Feldmann, Madry 2024): select the candidates that a datamodel predicts lower
the target loss most, with TRAK datamodels (`s2l.trak`) computed on small proxies.

For each proxy model m (trained on a random subset of the pool) TRAK featurizes the pool and
the target examples with the LM model output (`s2l.trak.LMOddsOutput`)

    f(z; theta) = mean over z's predicted tokens t of log(p_t / (1 - p_t))   (trak.log_odds: true)
                  mean over z's predicted tokens t of p_t / (1 - p_t)        (log_odds: false, DsDm's)

A pool row's predicted tokens are all its tokens; a target example's are its whole text,
prompt + answer (`trak.target_tokens: full`, the default) or only the answer tokens the task
scores (`answer`). Why the defaults: on the offline default (scripture cloze, 1-3 answer
tokens) the answer-only p/(1-p) datamodel of 20k/100k proxies picked the scripture share of
random selection (16-18% vs 14%) and did not beat random on the holdout; the whole text raised
it to 35%, and log-odds (loss-like: small p_t no longer shrink a token's gradient to ~0) to
45%, judged on the target split only. Then `s2l.trak.score_blockwise` (no Q term: the LM output
has none) gives S (n_pool, T): S[i, j] > 0 means including candidate i is predicted to RAISE
target j's output, i.e. raise the probability of its answer tokens, i.e. LOWER its loss. So

    w = S.mean(axis=1)              (n_pool,)  datamodel averaged over target examples
    predicted target loss change   = -w        (up to a positive factor)
    DsDm selection                 = the n candidates with the largest w

(the DsDm paper states it as minimising the predicted loss; the traker code's scores are
output-raising, hence the sign here; `tests/test_selection_dsdm.py` checks the direction on a
planted pool).
"""
from __future__ import annotations

import numpy as np
import torch

from s2l.gpt2 import set_attention
from s2l.trak import LMOddsOutput, featurize, per_example_grads_loop


def featurize_lm(model: torch.nn.Module, tokens: np.ndarray, mask: np.ndarray | None, projector,
                 log_odds: bool = False, batch_size: int = 16) -> np.ndarray:
    """Projected gradients Phi (n, k) float32 of the LM output on token rows (n, L), counting
    the predicted tokens marked by `mask` (n, L) (None: all)."""
    # The loop, not vmap, and eager attention: on CPU, the attention backward has no fast
    # per-example (vmap) path, and SDPA none for the loop either.
    set_attention(model, "eager")
    data = (torch.from_numpy(np.asarray(tokens, dtype=np.int64)),)
    if mask is not None:
        data += (torch.from_numpy(np.asarray(mask)),)
    phi, _ = featurize(model, data, projector, LMOddsOutput(log_odds), batch_size,
                       grads=per_example_grads_loop)
    return phi.numpy()


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
