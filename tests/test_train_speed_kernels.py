"""The pieces that make s2l's training and evaluation fast, each against an independent
computation: the fused vocabulary head + cross-entropy vs torch's F.cross_entropy on full
logits, the lean GPT-2 forward vs transformers' own, and the sorted, trimmed, head-on-targets
evaluation vs a plain per-row loop on full-width logits."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import brute_force_row_losses

from s2l.evaluate import row_losses
from s2l.model import ModelShape, build_model
from s2l.gpt2 import hidden_states, lean_forward_ok
from s2l.train import LMLoss, linear_cross_entropy

VOCAB, SEQ = 97, 24


@pytest.mark.parametrize("chunk", [None, 7, 1000])
def test_linear_cross_entropy_matches_cross_entropy_on_full_logits(chunk):
    torch.manual_seed(0)
    h = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)  # 50: not a chunk multiple
    w = (torch.randn(VOCAB, 16, dtype=torch.float64) * 0.5).requires_grad_()
    t = torch.randint(0, VOCAB, (50,))
    got = linear_cross_entropy(h.float(), w.float(), t, chunk)
    (2.5 * got).backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    want = F.cross_entropy(h @ w.t(), t)  # float64 reference
    (2.5 * want).backward()
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    torch.testing.assert_close(gh, h.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gw, w.grad, rtol=1e-5, atol=1e-7)


def test_linear_cross_entropy_in_bf16_autocast_is_close_to_fp32():
    torch.manual_seed(1)
    h = torch.randn(300, 32, requires_grad=True)
    w = (torch.randn(VOCAB, 32) * 0.3).requires_grad_()
    t = torch.randint(0, VOCAB, (300,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_cross_entropy(h, w, t)
    got.backward()
    assert got.dtype == torch.float32 and h.grad.dtype == w.grad.dtype == torch.float32
    ref = F.cross_entropy(h.detach() @ w.detach().t(), t)
    assert got.item() == pytest.approx(ref.item(), rel=1e-2)


def test_lm_loss_equals_the_transformers_models_own_loss():
    torch.manual_seed(0)
    model = build_model(ModelShape(32, 2, 2), VOCAB, SEQ, 0)
    batch = torch.randint(0, VOCAB, (4, SEQ + 1))
    ours = LMLoss(model)(batch[:, :-1], batch[:, 1:])
    logits = model.to_transformers()(input_ids=batch[:, :-1]).logits
    ref = F.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))
    assert ours.item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("bf16", [False, True])
def test_lean_gpt2_forward_is_bit_identical_to_transformers(training, bf16):
    model = build_model(ModelShape(48, 3, 4), VOCAB, SEQ, 0).to_transformers().train(training)
    assert lean_forward_ok(model)  # on transformers' own GPT-2 too
    ids = torch.randint(0, VOCAB, (3, SEQ - 5))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        ours = hidden_states(model, ids)
        ref = model.transformer(input_ids=ids).last_hidden_state
    assert torch.equal(ours, ref)


def test_lean_forward_is_refused_where_it_would_differ():
    ours = build_model(ModelShape(32, 2, 2), VOCAB, SEQ, 0)
    assert lean_forward_ok(ours)  # s2l's GPT-2 is its own lean forward, eager or not
    model = ours.to_transformers()
    model.config._attn_implementation = "eager"
    assert not lean_forward_ok(model)
    model = ours.to_transformers()
    model.config.resid_pdrop = 0.1
    assert not lean_forward_ok(model.train()) and lean_forward_ok(model.eval())
    assert not lean_forward_ok(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("eager", [False, True])
def test_row_losses_sorted_and_trimmed_equal_a_plain_loop(eager):
    torch.set_num_threads(1)
    model = build_model(ModelShape(32, 2, 2), VOCAB, SEQ, 3)
    if eager:  # transformers' model, eager: the path without a lean forward, same losses
        model = model.to_transformers()
        model.config._attn_implementation = "eager"
    rng = np.random.default_rng(0)
    R = 23
    tokens = rng.integers(0, VOCAB, size=(R, SEQ + 1)).astype(np.int32)
    lengths = rng.integers(2, SEQ + 2, R)
    mask = np.zeros_like(tokens, dtype=bool)
    for r, n in enumerate(lengths):
        tokens[r, n:] = 0                             # right padding
        mask[r, 1:n] = rng.random(n - 1) < 0.6        # targets only inside the row
        mask[r, n - 1] = True
    mask[5] = False                                   # a row without targets: loss 0
    mask[6] = False
    mask[6, 1] = True                                 # a single target at position 1
    got = row_losses(model, tokens, mask, batch_size=4, precision="fp32")
    want = brute_force_row_losses(model, tokens, mask)
    assert got[5] == 0.0
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
    # batch composition does not matter beyond rounding: causal attention, no padding leak
    np.testing.assert_allclose(row_losses(model, tokens, mask, 1, "fp32"), got, rtol=2e-5)


def _ddp_rank(rank: int, port: int, out: str) -> None:
    import os
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from s2l.config import TrainConfig
    from s2l.train import train
    model = build_model(ModelShape(32, 2, 2), VOCAB, SEQ, 0)
    cfg = TrainConfig(batch_size=8, lr=1e-2, log_every=2, warmup_frac=0.2, precision="fp32")
    train(model, _ddp_batches, 4, cfg)
    torch.save(model.state_dict(), f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def _ddp_batches(step):
    return np.random.default_rng([7, step]).integers(0, VOCAB, size=(8, SEQ + 1))


def test_ddp_through_the_fused_loss_matches_one_process(tmp_path):
    """Two gloo ranks, each on its half of the global batch, through LMLoss in DDP: both end
    with the same weights, equal (to rounding) to one process training on the whole batch."""
    import socket

    import torch.multiprocessing as mp

    from s2l.config import TrainConfig
    from s2l.train import train

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_rank, args=(port, str(tmp_path)), nprocs=2, start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    torch.set_num_threads(1)
    single = build_model(ModelShape(32, 2, 2), VOCAB, SEQ, 0)
    train(single, _ddp_batches, 4, TrainConfig(batch_size=8, lr=1e-2, log_every=2,
                                                warmup_frac=0.2, precision="fp32"))
    moved = 0
    for name, p in single.state_dict().items():
        assert torch.equal(r0[name], r1[name]), name
        # rounding only (the all-reduce sums in another order; Adam amplifies it near 0)
        torch.testing.assert_close(r0[name], p, rtol=1e-3, atol=1e-4)
        moved += int(not torch.equal(p, build_model(ModelShape(32, 2, 2), VOCAB, SEQ,
                                                    0).state_dict()[name]))
    assert moved > 0
