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

from s2l.train import autocast


@torch.inference_mode()
def row_losses(model: torch.nn.Module, tokens: np.ndarray, loss_mask: np.ndarray,
               batch_size: int = 16, precision: str = "auto") -> np.ndarray:
    """Mean target-token cross-entropy of each row: float64 (R,).

    Small batches keep the logits (B, L, V) in cache on CPU (faster than large ones there).
    The cross-entropy is logsumexp(logits) - logit[target], computed in fp32.
    """
    device = next(model.parameters()).device
    model.eval()
    out = np.empty(len(tokens), dtype=np.float64)
    for lo in range(0, len(tokens), batch_size):
        ids = torch.from_numpy(tokens[lo:lo + batch_size].astype(np.int64)).to(device)
        mask = torch.from_numpy(loss_mask[lo:lo + batch_size]).to(device)
        # Trim right padding shared by the whole batch: less work for short rows.
        width = int(mask.any(0).nonzero().max()) + 1
        ids, mask = ids[:, :width], mask[:, :width]
        with autocast(device, precision):
            logits = model(input_ids=ids[:, :-1]).logits
        logits = logits.float()
        target = ids[:, 1:]
        nll = torch.logsumexp(logits, -1) - logits.gather(-1, target[..., None])[..., 0]
        m = mask[:, 1:].float()
        out[lo:lo + len(ids)] = ((nll * m).sum(1) / m.sum(1).clamp_min(1)).double().cpu().numpy()
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
