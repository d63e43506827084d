"""Per-sample evaluation: the loss of every test sample, and accuracy for multiple choice.

A test suite is a set of token rows (see `s2l.data.TestSuite`): `tokens` (R, L), `loss_mask`
(R, L) marking which positions are targets, `row_sample` (R,) and `row_choice` (R,) mapping
rows to samples and choices, `answer` (S,) the true choice (-1 when not multiple choice).

The loss of a row is the mean cross-entropy over its target tokens. A sample's loss is the
loss of its only row, or of its true choice for multiple choice; `correct` is 1.0 when the
true choice has the lowest loss among the choices (HellaSwag-style, per-token normalised), and
NaN for samples that are not multiple choice.
"""
from __future__ import annotations

import numpy as np
import torch

from s2l.gpt2 import body_and_head, final_hidden
from s2l.train import autocast, non_embedding_params, resolve_precision

#: Stated bound on |loss_bf16 - loss_fp32| / max(1, loss_fp32) for a sample's mean loss when
#: evaluation runs in bf16 autocast (matmuls in bf16, softmax in fp32); tested on a trained
#: model in tests/test_precision.py. Well below the seed-to-seed spread of a proxy's losses.
BF16_EVAL_TOLERANCE = 0.02

#: Target positions put through the vocabulary head at a time: a (rows, V) fp32 block of
#: logits that stays in L2 (512 x 1024 x 4 B = 2 MiB).
HEAD_CHUNK_ROWS = 512


def head_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
             chunk: int = HEAD_CHUNK_ROWS) -> torch.Tensor:
    """Cross-entropy of each position: hidden (K, d), weight (V, d), targets int64 (K,) ->
    fp32 (K,) = logsumexp(h W^T) - (h W^T)[target], block by block, softmax math in fp32
    (matmuls in autocast's dtype when it is on)."""
    out = torch.empty(hidden.size(0), dtype=torch.float32, device=hidden.device)
    for lo in range(0, hidden.size(0), chunk):
        logits = (hidden[lo:lo + chunk] @ weight.t()).float()      # (c, V)
        t = targets[lo:lo + chunk, None]
        out[lo:lo + chunk] = -torch.log_softmax(logits, 1).gather(1, t)[:, 0]
    return out


def last_target(loss_mask: np.ndarray) -> np.ndarray:
    """int64 (R,): index of each row's last target position, 0 for a row without targets."""
    L = loss_mask.shape[1]
    has = loss_mask.any(1)
    return np.where(has, L - 1 - np.argmax(loss_mask[:, ::-1], 1), 0).astype(np.int64)


@torch.inference_mode()
def row_losses(model: torch.nn.Module, tokens: np.ndarray, loss_mask: np.ndarray,
               batch_size: int = 16, precision: str = "auto") -> np.ndarray:
    """Mean target-token cross-entropy of each row: float64 (R,) (0 for a row without targets).

    tokens int (R, L), loss_mask bool (R, L): position j is a target predicted from tokens
    [:j]. Work is only spent where it counts: rows are sorted by their last target position
    and batched `batch_size` at a time, each batch cut to its longest row (causal attention:
    a row's losses do not depend on the padding after it, nor on its batch mates), and only
    the target positions go through the vocabulary head (`head_nll`). No autograd state
    (inference mode). `precision` as in `s2l.train.resolve_precision` ("auto" decides by
    device, CPU capability and model size).
    """
    device = next(model.parameters()).device
    model.eval()
    precision = resolve_precision(precision, device, non_embedding_params(model), inference=True)
    out = np.zeros(len(tokens), dtype=np.float64)
    last = last_target(loss_mask)
    rows = np.flatnonzero(last > 0)
    order = rows[np.argsort(-last[rows], kind="stable")]          # longest first
    fast = body_and_head(model)
    for lo in range(0, len(order), batch_size):
        idx = order[lo:lo + batch_size]
        width = int(last[idx[0]])                                 # inputs 0..width-1
        ids = torch.from_numpy(tokens[idx, :width + 1].astype(np.int64)).to(device)
        mask = torch.from_numpy(loss_mask[idx, 1:width + 1]).to(device)  # (b, width)
        target = ids[:, 1:][mask]                                  # (K,)
        with autocast(device, precision):
            if fast:
                hidden = final_hidden(model, ids[:, :-1])
                nll = head_nll(hidden[mask], model.lm_head.weight, target)
            else:  # any other causal LM: full logits
                logits = model(input_ids=ids[:, :-1]).logits[mask].float()
                nll = -torch.log_softmax(logits, -1).gather(1, target[:, None])[:, 0]
        row = torch.nonzero(mask)[:, 0]                            # (K,) batch row of each
        sums = torch.zeros(len(idx), dtype=torch.float64, device=device)
        sums.index_add_(0, row, nll.double())
        out[idx] = (sums / mask.sum(1)).cpu().numpy()
    return out


def sample_metrics(row_loss: np.ndarray, row_sample: np.ndarray, row_choice: np.ndarray,
                   answer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row losses (R,) -> (loss float32 (S,), correct float32 (S,), NaN if not multiple choice)."""
    n = len(answer)
    mc = answer >= 0
    # The row that carries a sample's loss: choice 0 for plain samples, the answer for MC.
    wanted = np.where(mc[row_sample], answer[row_sample], 0)
    pick = row_choice == wanted
    loss = np.full(n, np.nan, dtype=np.float32)
    loss[row_sample[pick]] = row_loss[pick]
    # Best (lowest-loss) choice per sample: sort rows by (sample, loss) and take the first.
    order = np.lexsort((row_loss, row_sample))
    first = np.ones(len(order), dtype=bool)
    first[1:] = row_sample[order][1:] != row_sample[order][:-1]
    best = np.full(n, -1)
    best[row_sample[order][first]] = row_choice[order][first]
    correct = np.where(mc, (best == answer).astype(np.float32), np.nan).astype(np.float32)
    return loss, correct


def evaluate(model: torch.nn.Module, suite, batch_size: int = 16,
             precision: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Per-sample (loss, correct), each float32 (S,), for a `s2l.data.TestSuite`."""
    rl = row_losses(model, suite.tokens, suite.loss_mask, batch_size, precision)
    return sample_metrics(rl, suite.row_sample, suite.row_choice, suite.answer)
