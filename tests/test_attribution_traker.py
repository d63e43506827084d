"""Agreement with the reference library traker 0.3.2 (CPU path) on the same models and data:
same projection matrices -> same scores; and both LDS on one ground truth."""
import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

pytest.importorskip("trak")

from s2l.attribution.lds import lds_per_target, subset_masks  # noqa: E402
from s2l.attribution.reference import traker_projection, traker_scores  # noqa: E402
from s2l.attribution.train import Recipe, margins, train_classifier  # noqa: E402
from s2l.attribution.vision import load_images, split_indices  # noqa: E402
from s2l.trak import MatrixProjector, grad_dim, trak_scores  # noqa: E402


def _mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    x, y = load_images("digits")  # 1,797 real 8x8 digits from sklearn
    tr, tg = split_indices(len(x), 400, 40, seed=0)
    train, targets = (x[tr], y[tr]), (x[tg], y[tg])
    recipe = Recipe(epochs=10, batch_size=64, lr=0.05)
    models = []
    for s in range(3):
        m = _mlp(s)
        train_classifier(m, *train, recipe, seed=s)
        models.append(m)
    masks = subset_masks(400, 30, 0.5, seed=0)
    actual = []
    for i, mask in enumerate(masks):
        m = _mlp(100 + i)
        train_classifier(m, train[0][mask], train[1][mask], recipe, seed=100 + i)
        actual.append(margins(m, *targets).numpy())
    return models, train, targets, masks, np.stack(actual)


def test_same_projection_same_scores_as_traker(setup):
    models, train, targets, _, _ = setup
    k = 64
    ref = traker_scores(models[:1], train, targets, proj_dim=k, seed=0)
    P = traker_projection(grad_dim(models[0]), k, seed=0, model_id=0)
    ours = trak_scores(models[:1], train, targets, projectors=[MatrixProjector(P)])
    assert ours.shape == ref.shape == (400, 40)
    rho = scipy.stats.spearmanr(ours.ravel(), ref.ravel()).statistic
    assert rho > 0.999, rho
    # one model: the two differ only by traker's constant 1/mean|K^-1| scaling
    scale = (ours.ravel() @ ref.ravel()) / (ref.ravel() @ ref.ravel())
    torch.testing.assert_close(ours, ref * scale, rtol=1e-3, atol=1e-3 * ours.abs().max().item())


def test_ensemble_and_lds_agree_with_traker(setup):
    models, train, targets, masks, actual = setup
    k = 64
    ref = traker_scores(models, train, targets, proj_dim=k, seed=0)
    Ps = [traker_projection(grad_dim(m), k, seed=0, model_id=i) for i, m in enumerate(models)]
    ours = trak_scores(models, train, targets, projectors=[MatrixProjector(P) for P in Ps])
    rho = scipy.stats.spearmanr(ours.ravel(), ref.ravel()).statistic
    # traker weights ensemble members by 1/mean|K_m^-1|; we average them equally
    assert rho > 0.95, rho
    lds_ref = np.nanmean(lds_per_target(ref.numpy(), masks, actual))
    lds_ours = np.nanmean(lds_per_target(ours.numpy(), masks, actual))
    lds_own_proj = np.nanmean(lds_per_target(
        trak_scores(models, train, targets, proj_dim=k, seed=0).numpy(), masks, actual))
    print(f"LDS traker {lds_ref:.3f}  ours (same P) {lds_ours:.3f}  ours (own P) {lds_own_proj:.3f}")
    assert lds_ref > 0.05  # the ground truth carries signal at all
    assert lds_ours >= lds_ref - 0.03 and lds_own_proj >= lds_ref - 0.05
