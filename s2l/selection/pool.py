"""The candidate pool (training sequences to select from) and the target task's two halves.

Pool: `per_domain` non-overlapping windows of L = seq_len + 1 tokens from each domain's train
token stream (the same streams the LM sweep trains on), so a selected subset is a set of rows
that a reference model trains on exactly as on any mixture: inputs [:, :-1], targets [:, 1:].
The domain of each row is kept only for reporting (and the planted-pool tests): no method
sees it.

Target: the samples of one test set of the suite (cloze / qa / choice / a real benchmark),
split by a seeded permutation into *target* examples (their loss is what selection optimises)
and *holdout* examples (where the reference model is judged). Selection never sees holdout.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np


@dataclasses.dataclass
class Pool:
    """tokens int32 (N, L); domain int64 (N,) indexing `domains`."""

    tokens: np.ndarray
    domain: np.ndarray
    domains: list[str]

    def __len__(self) -> int:
        return len(self.tokens)

    def composition(self, idx: np.ndarray) -> np.ndarray:
        """float64 (n_domains,): share of each domain among rows `idx`."""
        counts = np.bincount(self.domain[idx], minlength=len(self.domains))
        return counts / max(1, counts.sum())

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, tokens=self.tokens, domain=self.domain, domains=np.array(self.domains))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "Pool":
        z = np.load(path, allow_pickle=False)
        return cls(z["tokens"], z["domain"], [str(d) for d in z["domains"]])


def build_pool(train: dict[str, np.ndarray], per_domain: int, L: int, seed: int) -> Pool:
    """`per_domain` random non-overlapping windows (L tokens) of each domain's stream.

    train: domain -> 1-D token array. Domains with fewer than `per_domain` windows give all
    they have. Row order: domain by domain, windows in stream order (deterministic).
    """
    rows, dom = [], []
    for j, (name, stream) in enumerate(train.items()):
        k = len(stream) // L
        if k == 0:
            raise ValueError(f"domain {name!r} has {len(stream)} tokens, fewer than one window of {L}")
        rng = np.random.default_rng([seed, j])
        starts = np.sort(rng.choice(k, size=min(per_domain, k), replace=False)) * L
        rows.append(np.stack([np.asarray(stream[s:s + L], dtype=np.int32) for s in starts]))
        dom.append(np.full(len(starts), j, dtype=np.int64))
    return Pool(np.concatenate(rows), np.concatenate(dom), list(train))


def split_target(suite, test_set: str, target_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(target, holdout) sample indices (int64, sorted) of `test_set` in the suite."""
    samples = suite.samples_of(test_set)
    perm = np.random.default_rng(seed).permutation(len(samples))
    k = max(1, min(len(samples) - 1, int(round(target_frac * len(samples)))))
    return np.sort(samples[perm[:k]]), np.sort(samples[perm[k:]])


def target_rows(suite, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The row carrying each sample's loss (the true choice for multiple choice):
    tokens int32 (T, L), loss_mask bool (T, L), in the order of `samples`."""
    want = np.where(suite.answer[samples] >= 0, suite.answer[samples], 0)
    rows = []
    for s, c in zip(samples, want):
        r = np.flatnonzero((suite.row_sample == s) & (suite.row_choice == c))
        rows.append(r[0])
    rows = np.array(rows, dtype=np.int64)
    return suite.tokens[rows], suite.loss_mask[rows]


def full_text_mask(loss_mask: np.ndarray) -> np.ndarray:
    """bool (T, L): every token of each target row up to the end of its answer (prompt +
    answer, no right padding), the datamodel target of `trak.target_tokens: full`."""
    loss_mask = np.asarray(loss_mask, dtype=bool)
    out = np.zeros_like(loss_mask)
    for i, m in enumerate(loss_mask):
        end = int(np.flatnonzero(m).max()) + 1 if m.any() else len(m)
        out[i, :end] = True
    return out


def text_tokens(tokens: np.ndarray, loss_mask: np.ndarray) -> list[np.ndarray]:
    """Each target row without its right padding: the prompt and the answer (DSIR's target
    text). tokens/loss_mask (T, L) -> T int arrays."""
    out = []
    for row, m in zip(tokens, loss_mask):
        end = int(np.flatnonzero(m).max()) + 1 if m.any() else len(row)
        out.append(np.asarray(row[:end]))
    return out


def subset_suite(suite, samples: np.ndarray):
    """A TestSuite of only `samples` (sorted sample indices), renumbered 0..len-1."""
    from s2l.data import TestSuite

    samples = np.asarray(samples, dtype=np.int64)
    new_id = np.full(suite.n_samples, -1, dtype=np.int64)
    new_id[samples] = np.arange(len(samples))
    keep = new_id[suite.row_sample] >= 0
    names = suite.sample_test_set[samples]
    sets = [t for t in suite.test_sets if t in set(names.tolist())]
    return TestSuite(tokens=suite.tokens[keep], loss_mask=suite.loss_mask[keep],
                     row_sample=new_id[suite.row_sample[keep]], row_choice=suite.row_choice[keep],
                     sample_test_set=names, answer=suite.answer[samples], test_sets=sets,
                     chance={k: v for k, v in suite.chance.items() if k in sets})


def eval_samples(suite, test_set: str, holdout: np.ndarray) -> np.ndarray:
    """Samples the reference models are evaluated on: the target set's holdout plus every
    other test set (off-target effects of a selection), never the target examples."""
    other = np.flatnonzero(suite.sample_test_set != test_set)
    return np.sort(np.concatenate([holdout, other]))
