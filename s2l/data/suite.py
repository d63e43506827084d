"""Assemble the configured test sets into one `TestSuite` (arrays fixed for all cells)."""
from __future__ import annotations

import numpy as np

from s2l.config import ConfigError
from s2l.data import testsets
from s2l.data.config import DataConfig
from s2l.data.testsets import Sample, TestSuite


def build_suite(cfg: DataConfig, tok, heldout_docs: dict[str, list[str]],
                heldout_ids: dict[str, list[list[int]]],
                benchmarks: dict[str, list[Sample]] | None = None) -> TestSuite:
    """heldout_docs: domain -> held-out documents; heldout_ids: their token ids; benchmarks:
    real test set name -> samples already loaded (others are loaded here)."""
    L = cfg.seq_len + 1
    parts = []  # (test-set name, tokens, mask, row_sample, row_choice, answer (S,), chance)
    for t in cfg.test_sets:
        if t.kind == "heldout":
            for d in cfg.domains:
                rows = testsets.heldout_windows(heldout_ids[d], tok.eos_token_id, t.samples, L)
                mask = np.ones_like(rows, bool)
                mask[:, 0] = False
                n = len(rows)
                parts.append((f"heldout-{d}", rows, mask, np.arange(n), np.zeros(n, np.int64),
                              np.full(n, -1), None))
            continue
        samples = (benchmarks or {}).get(t.name)
        if samples is None:
            samples = _samples(cfg, t, heldout_docs)
        if not samples:
            raise ConfigError(f"test_sets.{t.name}", f"got no samples ({t.kind}): "
                              + (f"its domain {t.domain!r} has too little held-out text (raise "
                                 "data.heldout_frac)" if t.domain else f"{t.path!r} has no usable row"))
        rows, mask, rs, rc = testsets.encode_samples(tok, samples, L)
        answer = np.array([s.answer for s in samples], np.int64)
        n_choices = {len(s.endings) for s in samples}
        chance = 1.0 / n_choices.pop() if answer[0] >= 0 and len(n_choices) == 1 else None
        if answer[0] >= 0 and chance is None:  # hellaswag-like sets with varying choices
            chance = float(np.mean([1.0 / len(s.endings) for s in samples]))
        parts.append((t.name, rows, mask, rs, rc, answer, chance))

    offset, rs_all = 0, []
    for p in parts:
        rs_all.append(p[3] + offset)
        offset += len(p[5])
    return TestSuite(
        tokens=np.concatenate([p[1] for p in parts]).astype(np.int32),
        loss_mask=np.concatenate([p[2] for p in parts]).astype(bool),
        row_sample=np.concatenate(rs_all).astype(np.int64),
        row_choice=np.concatenate([p[4] for p in parts]).astype(np.int64),
        sample_test_set=np.array([p[0] for p in parts for _ in range(len(p[5]))], dtype=str),
        answer=np.concatenate([p[5] for p in parts]).astype(np.int64),
        test_sets=[p[0] for p in parts],
        chance={p[0]: p[6] for p in parts if p[6] is not None},
    )


def _samples(cfg: DataConfig, t, heldout_docs) -> list[Sample]:
    if t.kind == "cloze":
        return testsets.cloze(heldout_docs[t.domain], t.samples, t.name)
    if t.kind == "choice":
        return testsets.choice(heldout_docs[t.domain], t.samples, t.name, t.choices)
    if t.kind == "qa":
        return testsets.qa(heldout_docs[t.domain], t.samples, t.name)
    from s2l.data.benchmarks import load_benchmark  # lazy: needs `datasets`

    return load_benchmark(t)
