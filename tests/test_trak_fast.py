"""The fast TRAK paths against brute force: closed-form per-layer gradients (Linear outer
products, Conv2d, BatchNorm) vs one autograd backward per example, the bit-expanded Rademacher
signs, the buffered projection, Cholesky solves, and bf16 projections vs fp32 scores."""
import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from s2l.trak import (ChunkedProjector, ClassificationMargin, LMOddsOutput, MatrixProjector,
                      closed_form_layers, fast_bf16, featurize, flat_grads, grad_dim, kernel_solve,
                      layer_grads, per_example_grads_loop, rademacher, resolve_dtype,
                      score_blockwise)


def _loop_grads(model, x, y):
    """Brute force: one backward per example of the margin log(p_y / (1 - p_y))."""
    rows = []
    for i in range(len(x)):
        model.zero_grad()
        p = torch.softmax(model(x[i:i + 1])[0], -1)[y[i]]
        torch.log(p / (1 - p)).backward()
        rows.append(torch.cat([q.grad.reshape(-1) if q.grad is not None else torch.zeros(q.numel(), dtype=q.dtype)
                               for q in model.parameters()]))
    return torch.stack(rows)


class _Shared(nn.Module):
    """One Linear applied twice (gradients add up), one on 3-d input, one never called."""

    def __init__(self):
        super().__init__()
        self.a, self.seq, self.dead, self.head = nn.Linear(4, 4), nn.Linear(4, 3), nn.Linear(2, 2), nn.Linear(3, 5)

    def forward(self, x):  # x (B, 2, 4)
        h = torch.tanh(self.a(torch.tanh(self.a(x))))
        return self.head(torch.relu(self.seq(h)).mean(1))


def _models():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(16, 7), nn.ReLU(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 5))
    cnn = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(3, 4, 2, stride=2, dilation=1, bias=False), nn.Flatten(),
                        nn.BatchNorm1d(4), nn.Linear(4, 5))
    dil = nn.Sequential(nn.Conv2d(1, 2, 3, padding=2, dilation=2), nn.ReLU(inplace=True), nn.Flatten(),
                        nn.Linear(32, 5))  # in-place ReLU: falls back to vmap, still exact
    return {"mlp": (mlp, (9, 1, 4, 4)), "cnn": (cnn, (9, 1, 4, 4)), "dilated": (dil, (9, 1, 4, 4)),
            "shared": (_Shared(), (9, 2, 4))}


@pytest.mark.parametrize("name", ["mlp", "cnn", "dilated", "shared"])
def test_layer_grads_match_autograd_loop(name):
    model, shape = _models()[name]
    model = model.double()
    model.train()
    model(torch.randn(*shape, dtype=torch.float64) * 2 + 0.5)  # non-trivial BatchNorm statistics
    model.eval()
    torch.manual_seed(1)
    x, y = torch.randn(*shape, dtype=torch.float64), torch.randint(0, 5, (shape[0],))
    G = layer_grads(model, ClassificationMargin(), (x, y))
    assert G.shape == (shape[0], grad_dim(model)) and G.dtype == torch.float64
    torch.testing.assert_close(G, _loop_grads(model, x, y), rtol=1e-9, atol=1e-12)
    assert G.abs().sum() > 0
    if name == "shared":  # the never-called module's gradient is exactly zero
        lo = sum(p.numel() for n, p in model.named_parameters() if n.split(".")[0] in ("a", "seq"))
        assert (G[:, lo:lo + 6] == 0).all()


def test_closed_forms_cover_the_attribution_resnet_and_fall_back_elsewhere():
    from s2l.attribution.vision import build_model
    resnet = build_model(1 / 32, in_channels=1).eval()
    assert closed_form_layers(resnet) is not None  # Conv2d + BatchNorm2d + Linear
    emb = nn.Sequential(nn.Embedding(7, 3), nn.Flatten(), nn.Linear(6, 4))
    assert closed_form_layers(emb) is None
    assert closed_form_layers(nn.Sequential(nn.Conv2d(2, 2, 3, groups=2))) is None
    assert closed_form_layers(nn.Sequential(nn.BatchNorm1d(3))) is None  # training mode
    # the LM output through an Embedding model: layer_grads == vmap == the backward loop
    torch.manual_seed(2)
    lm = nn.Sequential(nn.Embedding(11, 5), nn.Tanh(), nn.Linear(5, 11)).double()
    ids, mask = torch.randint(0, 11, (4, 6)), torch.tensor([0, 1, 1, 1, 0, 1]).repeat(4, 1)
    out = LMOddsOutput(log_odds=True)
    G = layer_grads(lm, out, (ids, mask))
    torch.testing.assert_close(G, flat_grads(lm, out, (ids, mask)))
    torch.testing.assert_close(G, per_example_grads_loop(lm, out, (ids, mask)).double())


def test_lm_batched_output_equals_per_example_output():
    torch.manual_seed(3)
    lm = nn.Sequential(nn.Embedding(11, 5), nn.Tanh(), nn.Linear(5, 11))
    ids, mask = torch.randint(0, 11, (4, 6)), torch.tensor([0, 0, 1, 1, 1, 0]).repeat(4, 1)
    for log_odds in (False, True):
        out = LMOddsOutput(log_odds)
        params = dict(lm.named_parameters())
        one = torch.stack([out.output(lm, params, {}, ids[i], mask[i]) for i in range(4)])
        torch.testing.assert_close(out.batched(lm, ids, mask), one)
        one = torch.stack([out.output(lm, params, {}, ids[i]) for i in range(4)])
        torch.testing.assert_close(out.batched(lm, ids), one)


def test_outer_product_projection_equals_materialised_product():
    """(g a^T) flattened, times P, written through a bf16 buffer: one rounding per entry."""
    torch.manual_seed(4)
    lin = nn.Linear(300, 40)  # O*I = 12,000: the writer goes 21 examples at a time
    x, y = torch.randn(50, 300), torch.randint(0, 40, (50,))
    G = layer_grads(lin, ClassificationMargin(), (x, y))
    brute = _loop_grads(lin.double(), x.double(), y).float()
    lin.float()
    torch.testing.assert_close(G, brute, rtol=1e-4, atol=1e-6)
    buf = torch.empty(50, grad_dim(lin), dtype=torch.bfloat16)
    layer_grads(lin, ClassificationMargin(), (x, y), out=buf)
    assert torch.equal(buf, G.bfloat16())
    P = rademacher(grad_dim(lin), 16, torch.Generator().manual_seed(0), torch.float32)
    torch.testing.assert_close(G @ P, (brute.double() @ P.double()).float(), rtol=1e-4, atol=1e-4)


def test_rademacher_signs_are_fair_independent_and_seeded():
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    P = rademacher(4001, 97, g(5), torch.float32)  # sizes not multiples of 32
    assert P.shape == (4001, 97) and set(P.unique().tolist()) == {-1.0, 1.0}
    n = P.numel()
    assert abs(P.mean().item()) < 4 / n ** 0.5  # 4 sigma
    # neighbouring entries (bits of one byte / word) are uncorrelated
    flat = P.reshape(-1)
    for lag in (1, 8, 32, 97):
        assert abs((flat[:-lag] * flat[lag:]).mean().item()) < 4 / n ** 0.5
    col = (P[:, :10].T @ P[:, :10]) / 4001  # columns nearly orthogonal
    assert (col - torch.eye(10)).abs().max() < 4.5 / 4001 ** 0.5
    assert torch.equal(P, rademacher(4001, 97, g(5), torch.float32))
    assert torch.equal(P.bfloat16(), rademacher(4001, 97, g(5), torch.bfloat16))
    assert not torch.equal(P, rademacher(4001, 97, g(6), torch.float32))


@pytest.mark.parametrize("cache", [True, False])
def test_featurize_buffered_projection_equals_brute_force(cache):
    torch.manual_seed(5)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(37, 1, 4, 4), torch.randint(0, 3, (37,))
    p = grad_dim(model)
    proj = ChunkedProjector(p, 12, seed=1, chunk_rows=50, cache_bytes=1e9 if cache else 0)
    P = proj.matrix()
    G = _loop_grads(model.double(), x.double(), y)
    model.float()
    # ragged batches (37 = 4 x 8 + 5), buffer of 16 rows: two batches per projection
    phi, q = featurize(model, (x, y), proj, batch_size=8, proj_rows=16)
    torch.testing.assert_close(phi.double(), G @ P.double(), rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(q, 1 - torch.softmax(model(x), -1)[torch.arange(37), y])
    for grads in (flat_grads, per_example_grads_loop):  # the copy-into-buffer path
        phi2, _ = featurize(model, (x, y), MatrixProjector(P), batch_size=8, proj_rows=16, grads=grads)
        torch.testing.assert_close(phi2, phi, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("n,k,ridge", [(60, 10, 0.0), (60, 10, 1.0), (8, 12, 0.0)])
def test_kernel_solve_matches_numpy(n, k, ridge):
    rng = np.random.default_rng(6)
    Phi, B = rng.normal(size=(n, k)), rng.normal(size=(k, 4))
    K = Phi.T @ Phi
    expected = (np.linalg.pinv(K) if n < k and not ridge else np.linalg.inv(K + ridge * np.eye(k))) @ B
    got = kernel_solve(torch.tensor(K), torch.tensor(B), ridge).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-8)


def test_projection_precision_by_capability():
    assert isinstance(fast_bf16(), bool)
    assert resolve_dtype("auto") == (torch.bfloat16 if fast_bf16() else torch.float32)
    assert resolve_dtype("fp32") == torch.float32 and resolve_dtype(torch.bfloat16) == torch.bfloat16
    with pytest.raises(ValueError):
        resolve_dtype("fp8")


def test_bf16_projection_scores_match_fp32_scores():
    """The stated tolerance of a bf16 projection: Spearman >= 0.99 of the score matrices vs
    fp32 under the same P, here with k = 256 << n = 700 (the benchmark measured 0.992-0.999
    for k <= 0.7 n, but 0.986 at k = 2048, n = 2500: why bf16 is opt-in)."""
    from s2l.attribution.train import Recipe, train_classifier
    from s2l.attribution.vision import load_images, split_indices

    torch.set_num_threads(1)
    x, y = load_images("digits")
    tr, tg = split_indices(len(x), 700, 60, seed=0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
    train_classifier(model, x[tr], y[tr], Recipe(epochs=5, batch_size=64, lr=0.05), seed=0)
    P = ChunkedProjector(grad_dim(model), 256, seed=0).matrix()
    S = {}
    for dt in (torch.float32, torch.bfloat16):
        proj = MatrixProjector(P.to(dt))
        phi, q = featurize(model, (x[tr], y[tr]), proj, batch_size=128)
        phi_t, _ = featurize(model, (x[tg], y[tg]), proj, batch_size=128)
        S[dt] = score_blockwise(phi.numpy()[None], phi_t.numpy()[None], q.numpy()[None])
    rho = scipy.stats.spearmanr(S[torch.float32].ravel(), S[torch.bfloat16].ravel()).statistic
    assert 0.99 <= rho < 1.0, rho  # < 1: bf16 really ran
