"""Training (schedule, determinism, exact resume) and per-sample evaluation vs brute force."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import Killed, dies_at, random_batches

from s2l.config import TrainConfig
from s2l.evaluate import row_losses, sample_metrics
from s2l.model import LADDER, ModelShape, build_model, count_non_embedding
from s2l.train import lr_at, train

VOCAB, SEQ = 64, 16


def batches(seed: int):
    return random_batches(seed, VOCAB, SEQ)


def tiny(seed=0):
    return build_model(ModelShape(16, 2, 2), VOCAB, SEQ, seed)


CFG = TrainConfig(batch_size=8, lr=1e-2, log_every=2, checkpoint_every=3, warmup_frac=0.2)


def test_lr_schedule_warmup_then_cosine_to_floor():
    total = 100
    lrs = [lr_at(s, total, CFG) for s in range(total)]
    assert lrs[0] == pytest.approx(CFG.lr / 20)
    assert max(lrs) == pytest.approx(CFG.lr)
    assert lrs[19] == pytest.approx(CFG.lr) and lrs[18] < lrs[19]  # end of the 20% warmup
    # closed form of the cosine at the midpoint of the decay
    mid = 20 + 40
    floor = CFG.min_lr_ratio * CFG.lr
    assert lrs[mid] == pytest.approx(floor + 0.5 * (CFG.lr - floor) * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b - 1e-12 for a, b in zip(lrs[19:], lrs[20:]))
    assert lrs[-1] >= floor


@pytest.mark.parametrize("name", ["20k", "1M", "125M", "760M"])
def test_non_embedding_count_matches_built_model(name):
    shape = ModelShape(*LADDER[name])
    if shape.d_model > 800:
        shape = ModelShape(shape.d_model // 8, 2, shape.n_heads)  # same formula, cheaper build
    model = build_model(shape, 100, 32, 0)
    assert count_non_embedding(model) == shape.non_embedding_params()


def test_training_reduces_loss_and_is_deterministic():
    torch.set_num_threads(1)
    a, b = tiny(), tiny()
    fixed = lambda step: np.tile(np.arange(SEQ + 1) % 7, (8, 1))  # a learnable pattern
    ha = train(a, fixed, 30, CFG)
    hb = train(b, fixed, 30, CFG)
    assert ha[-1][1] < 0.5 * ha[0][1]
    assert ha == hb
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_resume_from_checkpoint_is_bit_identical(tmp_path):
    torch.set_num_threads(1)
    ref = tiny()
    ref_hist = train(ref, batches(1), 10, CFG)

    good = batches(1)
    ckpt = tmp_path / "ckpt.pt"
    first = tiny()
    with pytest.raises(Killed):
        train(first, dies_at(7, good), 10, CFG, checkpoint=ckpt)
    assert torch.load(ckpt, weights_only=False)["step"] == 6  # checkpoints at 3 and 6
    resumed = tiny(seed=123)  # init is overwritten by the checkpoint
    hist = train(resumed, good, 10, CFG, checkpoint=ckpt)
    assert hist == ref_hist
    for pa, pb in zip(ref.parameters(), resumed.parameters()):
        assert torch.equal(pa, pb)


def test_row_losses_match_a_per_row_cross_entropy_loop():
    torch.set_num_threads(1)
    model = tiny()
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, VOCAB, size=(11, SEQ)).astype(np.int32)
    mask = rng.random((11, SEQ)) < 0.4
    mask[:, 0] = False
    mask[3] = False
    mask[3, -1] = True  # a row with a single target, the last token
    got = row_losses(model, tokens, mask, batch_size=4, precision="fp32")
    model.eval()
    for r in range(len(tokens)):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor(tokens[r:r + 1], dtype=torch.long)).logits[0]
        targets = [t for t in range(1, SEQ) if mask[r, t]]
        ce = [torch.nn.functional.cross_entropy(logits[t - 1:t], torch.tensor([tokens[r, t]]).long()).item()
              for t in targets]
        assert got[r] == pytest.approx(np.mean(ce), rel=1e-5), r


def test_row_losses_without_targets_anywhere():
    tokens = np.random.default_rng(0).integers(0, VOCAB, size=(5, SEQ)).astype(np.int32)
    mask = np.zeros_like(tokens, dtype=bool)
    np.testing.assert_array_equal(row_losses(tiny(), tokens, mask, 4, "fp32"), np.zeros(5))


def test_training_is_untouched_by_evaluation():
    """Evaluation leaves the model as it found it (inference mode, no parameter writes):
    training after an evaluation continues bit-identically."""
    torch.set_num_threads(1)
    a, b = tiny(), tiny()
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, VOCAB, size=(9, SEQ)).astype(np.int32)
    mask = rng.random((9, SEQ)) < 0.5
    row_losses(a, tokens, mask, 4, "bf16")
    data = rng.integers(0, VOCAB, (6, 8, SEQ + 1))
    ha = train(a, lambda i: data[i], 6, CFG)
    hb = train(b, lambda i: data[i], 6, CFG)
    assert ha == hb
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_sample_metrics_against_a_loop():
    rng = np.random.default_rng(1)
    # samples: 0 plain, 1 MC (4 choices, answer 2), 2 plain, 3 MC (3 choices, answer 0)
    row_sample = np.array([0, 1, 1, 1, 1, 2, 3, 3, 3])
    row_choice = np.array([0, 0, 1, 2, 3, 0, 0, 1, 2])
    answer = np.array([-1, 2, -1, 0])
    rl = rng.random(9) + 1
    rl[3] = 0.5  # sample 1's answer has the lowest loss -> correct
    rl[7] = 0.1  # sample 3's best is choice 1, not its answer -> wrong
    loss, correct = sample_metrics(rl, row_sample, row_choice, answer)
    assert loss.dtype == np.float32 and correct.dtype == np.float32
    np.testing.assert_allclose(loss, np.float32([rl[0], rl[3], rl[5], rl[6]]))
    assert np.isnan(correct[0]) and np.isnan(correct[2])
    assert correct[1] == 1.0 and correct[3] == 0.0


def test_non_finite_loss_stops_training_at_once():
    from s2l.train import Diverged

    torch.set_num_threads(1)
    seen = []

    def counting(step):
        seen.append(step)
        return batches(0)(step)

    model = tiny()
    with torch.no_grad():  # a NaN weight makes every loss NaN from the first step
        model.transformer.wte.weight[0, 0] = float("nan")
    with pytest.raises(Diverged, match=r"step 1/50"):
        train(model, counting, 50, CFG)
    assert seen == [0]


def test_loss_rising_far_above_its_best_fails_the_run():
    from s2l.train import Diverged

    torch.set_num_threads(1)
    fixed = lambda step: np.tile(np.arange(SEQ + 1) % 7, (8, 1))
    cfg = TrainConfig(batch_size=8, lr=30.0, log_every=2, warmup_frac=0.2, grad_clip=0.0)
    seen = []

    def counting(step):
        seen.append(step)
        return fixed(step)

    with pytest.raises(Diverged, match=r"training loss (rose to|is nan)"):
        train(tiny(), counting, 200, cfg)
    assert len(seen) < 200  # stopped, not trained to the end
    # the same recipe at a sane lr trains to the end
    assert len(train(tiny(), fixed, 30, CFG)) == 15


def test_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path, capfd):
    torch.set_num_threads(1)
    ref = tiny()
    ref_hist = train(ref, batches(1), 10, CFG)

    ckpt = tmp_path / "ckpt.pt"
    with pytest.raises(Killed):
        train(tiny(), dies_at(7, batches(1)), 10, CFG, checkpoint=ckpt)
    prev = tmp_path / "ckpt.prev.pt"
    assert torch.load(prev, weights_only=False)["step"] == 3  # the one before step 6's
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # truncated, as by a full disk
    resumed = tiny(seed=123)
    assert train(resumed, batches(1), 10, CFG, checkpoint=ckpt) == ref_hist
    assert "unreadable" in capfd.readouterr().out
    for pa, pb in zip(ref.parameters(), resumed.parameters()):
        assert torch.equal(pa, pb)
    # both unreadable: a fresh start (with a warning), same result again
    ckpt.write_bytes(b"garbage")
    prev.write_bytes(b"garbage")
    again = tiny()
    assert train(again, batches(1), 10, CFG, checkpoint=ckpt) == ref_hist
    assert "from scratch" in capfd.readouterr().out
