"""Precision by capability: the resolver's decisions, bf16 training's determinism and exact
resume on CPU, and bf16 evaluation within its stated tolerance of fp32 on a trained model."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import Killed, dies_at, random_batches

import s2l.train as st
from s2l.config import TrainConfig
from s2l.evaluate import BF16_EVAL_TOLERANCE, row_losses
from s2l.model import ModelShape, build_model
from s2l.train import cpu_flags, fast_cpu_bf16, resolve_precision, train

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)
AMX = frozenset({"avx512f", "avx512_bf16", "amx_tile", "amx_bf16"})
AVX512_BF16 = frozenset({"avx512f", "avx512_bf16"})  # bf16 dot products, no AMX tiles
OLD = frozenset({"avx2", "fma"})
BIG, SMALL = st.BF16_CPU_MIN_PARAMS, st.BF16_CPU_MIN_PARAMS - 1


@pytest.mark.parametrize("requested,device,n,flags,inference,expected", [
    ("fp32", CPU, BIG, AMX, False, "fp32"),         # explicit choices are taken as they are
    ("bf16", CPU, 10, OLD, False, "bf16"),
    ("auto", CPU, BIG, AMX, False, "bf16"),         # fast bf16 and large enough
    ("auto", CPU, 5_000_000, AMX, False, "bf16"),
    ("auto", CPU, SMALL, AMX, False, "fp32"),       # below the measured break-even
    ("auto", CPU, 100_000, AMX, False, "fp32"),
    ("auto", CPU, 100_000, AMX, True, "bf16"),      # inference pays from smaller sizes
    ("auto", CPU, st.BF16_CPU_MIN_PARAMS_INFERENCE - 1, AMX, True, "fp32"),
    ("auto", CPU, 5_000_000, AVX512_BF16, False, "fp32"),  # no AMX: never by assumption
    ("auto", CPU, 5_000_000, OLD, True, "fp32"),
    ("auto", CPU, 5_000_000, frozenset(), False, "fp32"),  # unreadable flags: fp32
])
def test_resolver_decides_by_capability_and_size(requested, device, n, flags, inference,
                                                 expected):
    assert resolve_precision(requested, device, n, flags=flags, inference=inference) == expected


def test_resolver_on_cuda_follows_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", CUDA, 10, flags=OLD) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", CUDA, 10 ** 9, flags=AMX) == "fp32"
    assert resolve_precision("bf16", CUDA, 10) == "bf16"


def test_resolver_refuses_an_unknown_precision():
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision("fp16", CPU, 10)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu sse2 amx_bf16 amx_tile\n"
                    "\nprocessor\t: 1\nflags\t\t: fpu\n")
    flags = cpu_flags(str(info))
    assert flags == {"fpu", "sse2", "amx_bf16", "amx_tile"}  # the first processor's
    assert fast_cpu_bf16(flags) and not fast_cpu_bf16(frozenset({"avx512_bf16"}))
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()
    # this machine: the decision is a pure function of its flags, the same every time
    assert resolve_precision("auto", CPU, BIG) == resolve_precision("auto", CPU, BIG)
    here = cpu_flags()
    assert fast_cpu_bf16() == ("amx_bf16" in here)


VOCAB, SEQ = 64, 16
CFG = TrainConfig(batch_size=8, lr=1e-2, log_every=2, checkpoint_every=3, warmup_frac=0.2,
                  precision="bf16")


def batches(seed: int):
    return random_batches(seed, VOCAB, SEQ)


def tiny(seed=0):
    return build_model(ModelShape(32, 2, 2), VOCAB, SEQ, seed)


def test_bf16_training_on_cpu_is_deterministic_and_resumes_bit_identically(tmp_path):
    torch.set_num_threads(1)
    ref = tiny()
    ref_hist = train(ref, batches(1), 10, CFG)
    again = tiny()
    assert train(again, batches(1), 10, CFG) == ref_hist
    fp32 = tiny()
    fp32_hist = train(fp32, batches(1), 10, dataclasses.replace(CFG, precision="fp32"))
    assert fp32_hist != ref_hist  # bf16 really ran: not the fp32 numbers
    assert np.allclose([m for _, m in fp32_hist], [m for _, m in ref_hist], atol=0.05)

    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(Killed):
        train(tiny(), dies_at(7, batches(1)), 10, CFG, checkpoint=ckpt)
    resumed = tiny(seed=5)
    assert train(resumed, batches(1), 10, CFG, checkpoint=ckpt) == ref_hist
    for pa, pb in zip(ref.parameters(), resumed.parameters()):
        assert torch.equal(pa, pb)
        assert pa.dtype == torch.float32  # master weights stay fp32 under autocast


def test_bf16_eval_stays_within_its_tolerance_of_fp32_on_a_trained_model():
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    # A learnable language: each token mostly determines the next, so the model ends with
    # peaked predictions (the hard case for bf16 logits), plus 10% noise tokens.
    succ = rng.permutation(VOCAB)

    def text(n_rows, seed):
        r = np.random.default_rng(seed)
        rows = np.empty((n_rows, SEQ + 1), dtype=np.int64)
        rows[:, 0] = r.integers(0, VOCAB, n_rows)
        for j in range(1, SEQ + 1):
            rows[:, j] = np.where(r.random(n_rows) < 0.9, succ[rows[:, j - 1]],
                                  r.integers(0, VOCAB, n_rows))
        return rows

    model = build_model(ModelShape(48, 2, 2), VOCAB, SEQ, 0)
    hist = train(model, lambda step: text(8, step), 150,
                 dataclasses.replace(CFG, precision="fp32", lr=3e-3))
    assert hist[-1][1] < 0.5 * hist[0][1]  # it learned: losses far from uniform
    tokens = text(64, 10 ** 6).astype(np.int32)
    mask = np.ones_like(tokens, dtype=bool)
    mask[:, 0] = False
    mask[::3, 9:] = False  # rows of varying length
    f32 = row_losses(model, tokens, mask, 16, "fp32")
    b16 = row_losses(model, tokens, mask, 16, "bf16")
    err = np.abs(b16 - f32)
    assert 0 < err.max() <= BF16_EVAL_TOLERANCE * np.maximum(1.0, f32).max()
    assert np.corrcoef(f32, b16)[0, 1] > 0.999
