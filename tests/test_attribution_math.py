"""TRAK and LDS math against brute force on tiny models (CPU, seconds)."""
import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from s2l.attribution.lds import bootstrap_ci, lds_per_target, subset_masks
from s2l.attribution.vision import build_model
from s2l.trak import (ChunkedProjector, ClassificationMargin, LMOddsOutput, MatrixProjector,
                      flat_grads, grad_dim, kernel_inverse, margin_from_logits, score_blockwise,
                      score_single, trak_scores)


def _mlp(seed=0, d=6, h=5, c=4):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, c))


def _loop_grads(model, x, y):
    """Brute force: one autograd backward per example, gradients flattened in parameter order."""
    rows = []
    for i in range(len(x)):
        model.zero_grad()
        logits = model(x[i:i + 1])[0]
        p = torch.softmax(logits, -1)[y[i]]
        torch.log(p / (1 - p)).backward()
        rows.append(torch.cat([q.grad.reshape(-1) for q in model.parameters()]))
    return torch.stack(rows)


def test_margin_is_log_odds():
    logits = torch.randn(7, 5)
    y = torch.randint(0, 5, (7,))
    p = torch.softmax(logits, -1)[torch.arange(7), y]
    torch.testing.assert_close(margin_from_logits(logits, y), torch.log(p / (1 - p)))


@pytest.mark.parametrize("kind", ["mlp", "resnet"])
def test_per_example_grads_match_autograd_loop(kind):
    torch.manual_seed(1)
    if kind == "mlp":
        model, x = _mlp().double(), torch.randn(9, 6, dtype=torch.float64)
        y = torch.randint(0, 4, (9,))
    else:  # BatchNorm in eval mode, residual blocks, max pools
        model = build_model(1 / 32, in_channels=1).double()
        model.train()
        model(torch.randn(16, 1, 8, 8, dtype=torch.float64))  # non-trivial running stats
        x, y = torch.randn(5, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (5,))
    model.eval()
    G = flat_grads(model, ClassificationMargin(), (x, y))
    assert G.shape == (len(x), grad_dim(model))
    torch.testing.assert_close(G, _loop_grads(model, x, y), rtol=1e-7, atol=1e-9)


def test_chunked_projection_is_exact_and_reproducible():
    p, k = 1000, 24
    proj = ChunkedProjector(p, k, seed=3, dtype=torch.float32, chunk_rows=333)  # ragged chunks
    P = proj.matrix()
    assert P.shape == (p, k) and set(P.unique().tolist()) == {-1.0, 1.0}
    assert abs(P.mean().item()) < 0.05
    G = torch.randn(10, p)
    torch.testing.assert_close(proj.project(G), G @ P, rtol=1e-5, atol=1e-4)
    # no cache: chunks regenerated per call give the same matrix; another seed does not
    again = ChunkedProjector(p, k, seed=3, dtype=torch.float32, chunk_rows=333, cache_bytes=0)
    torch.testing.assert_close(again.project(G), G @ P, rtol=1e-5, atol=1e-4)
    assert not torch.equal(ChunkedProjector(p, k, seed=4, dtype=torch.float32).matrix(), P)
    # bf16 materialisation: same signs, only the gradient rounding differs
    bf = ChunkedProjector(p, k, seed=3, dtype=torch.bfloat16, chunk_rows=333)
    assert torch.equal(bf.matrix(), P)
    rel = (bf.project(G) - G @ P).norm() / (G @ P).norm()
    assert rel < 1e-2
    normal = ChunkedProjector(p, k, seed=3, kind="normal", dtype=torch.float32).matrix()
    assert abs(normal.std().item() - 1) < 0.05


@pytest.mark.parametrize("n,k,ridge", [(40, 8, 0.0), (40, 8, 0.5), (6, 10, 0.0)])
def test_kernel_solve_matches_numpy(n, k, ridge):
    rng = np.random.default_rng(0)
    Phi, phi = rng.normal(size=(n, k)), rng.normal(size=(3, k))
    K = Phi.T @ Phi + ridge * np.eye(k)
    # n < k without ridge: singular kernel, the pseudo-inverse is the right reading
    inv = np.linalg.inv(K) if n >= k or ridge else np.linalg.pinv(K)
    expected = Phi @ inv @ phi.T
    got = score_single(torch.tensor(Phi), torch.tensor(phi), ridge).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(kernel_inverse(torch.tensor(K - ridge * np.eye(k)), ridge).numpy(),
                               inv, rtol=1e-6, atol=1e-8)


def test_blockwise_scoring_equals_all_at_once_with_q():
    rng = np.random.default_rng(1)
    M, n, T, k = 3, 50, 7, 6
    tr, tg = rng.normal(size=(M, n, k)), rng.normal(size=(M, T, k))
    q = rng.uniform(size=(M, n))
    full = np.mean([Phi @ np.linalg.inv(Phi.T @ Phi) @ phi.T for Phi, phi in zip(tr, tg)], 0)
    full *= q.mean(0)[:, None]
    out = np.zeros((n, T), dtype=np.float32)
    assert score_blockwise(tr, tg, q, block_rows=13, out=out) is None
    np.testing.assert_allclose(out, full, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(score_blockwise(tr, tg, q, block_rows=1000), full, rtol=1e-4, atol=1e-5)


def test_trak_scores_end_to_end_vs_brute_force():
    torch.manual_seed(2)
    models = [_mlp(seed=s) for s in (0, 1)]
    x, y = torch.randn(30, 6), torch.randint(0, 4, (30,))
    xt, yt = torch.randn(4, 6), torch.randint(0, 4, (4,))
    k = 12
    Ps = [torch.randn(grad_dim(models[0]), k) for _ in models]
    S = trak_scores(models, (x, y), (xt, yt), projectors=[MatrixProjector(P) for P in Ps], use_q=True)
    expected, qs = 0, []
    for model, P in zip(models, Ps):
        Phi = (_loop_grads(model, x, y) @ P).double().numpy()
        phi = (_loop_grads(model, xt, yt) @ P).double().numpy()
        expected = expected + Phi @ np.linalg.inv(Phi.T @ Phi) @ phi.T / len(models)
        with torch.no_grad():
            qs.append(1 - torch.softmax(model(x), -1)[torch.arange(30), y].numpy())
    expected *= np.mean(qs, 0)[:, None]
    assert S.shape == (30, 4)
    np.testing.assert_allclose(S.numpy(), expected, rtol=2e-3, atol=1e-4)


class _TinyLM(nn.Module):
    def __init__(self, v=11, d=5):
        super().__init__()
        self.emb, self.head = nn.Embedding(v, d), nn.Linear(d, v)

    def forward(self, ids):  # (B, T) -> (B, T, V); causal because each position sees itself only
        return self.head(torch.tanh(self.emb(ids)))


@pytest.mark.parametrize("log_odds", [False, True])
def test_lm_output_value_and_grads(log_odds):
    torch.manual_seed(3)
    model, ids = _TinyLM(), torch.randint(0, 11, (4, 6))
    mask = torch.tensor([0, 0, 1, 1, 1, 0]).repeat(4, 1)
    out = LMOddsOutput(log_odds=log_odds)

    def brute(i):
        p = torch.softmax(model(ids[i:i + 1])[0, :-1], -1)[torch.arange(5), ids[i, 1:]]
        v = torch.log(p / (1 - p)) if log_odds else p / (1 - p)
        return (v * mask[i, 1:]).sum() / mask[i, 1:].sum()

    G = flat_grads(model, out, (ids, mask))
    for i in range(4):
        model.zero_grad()
        brute(i).backward()
        torch.testing.assert_close(G[i], torch.cat([p.grad.reshape(-1) for p in model.parameters()]))


def test_lds_matches_scipy_spearman_with_ties():
    rng = np.random.default_rng(4)
    n, T, m = 30, 6, 25
    scores = rng.normal(size=(n, T))
    masks = subset_masks(n, m, 0.5, seed=0)
    assert masks.shape == (m, n) and (masks.sum(1) == 15).all()
    actual = rng.normal(size=(m, T))
    actual[:5, 2] = 1.0  # ties in one target
    actual[:, 5] = 3.0  # a constant target: undefined correlation
    got = lds_per_target(scores, masks, actual)
    pred = masks @ scores
    for j in range(5):
        assert got[j] == pytest.approx(scipy.stats.spearmanr(actual[:, j], pred[:, j]).statistic, abs=1e-12)
    assert np.isnan(got[5])
    mean, lo, hi = bootstrap_ci(got, n_boot=500)
    assert lo <= mean <= hi and mean == pytest.approx(np.nanmean(got))
    # perfect linear datamodel: actual outputs are the predicted sums -> LDS 1
    assert np.allclose(lds_per_target(scores, masks, masks @ scores), 1.0)
