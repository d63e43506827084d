"""Packed training (s2l.packed): K models in one vmapped step train as K separate runs would.

Checked against the independent path, `s2l.train.train` on each model alone: the same loss
curves and weights up to float rounding (the batched kernels sum in another order). On a GPU the
packed step is ~7x the aggregate throughput of training 16 proxies one after another
(benchmarks/gpu_check.py, docs/performance.md); here it is checked for correctness only.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from transformers import GPT2LMHeadModel

from s2l.config import TrainConfig
from s2l.model import ModelShape, build_model
from s2l.packed import _clip_per_model, train_packed
from s2l.train import train

V, T, B = 256, 32, 4


def batches(seed: int):
    def fn(step: int) -> np.ndarray:
        return np.random.default_rng([seed, step]).integers(0, V, (B, T + 1)).astype(np.int64)
    return fn


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_packed_equals_training_each_model_alone(tmp_path):
    cfg = TrainConfig(batch_size=B, lr=3e-3, log_every=5, grad_clip=0.5)
    models = [build_model(ModelShape(32, 2, 2), V, T, seed) for seed in range(3)]
    alone = [copy.deepcopy(m) for m in models]
    # different data per model, as cells of different mixtures / seeds have
    packed_hist = train_packed(models, [batches(10 + i) for i in range(3)], 20, cfg,
                               device=torch.device("cpu"))
    for i, m in enumerate(alone):
        hist = train(m, batches(10 + i), 20, cfg)
        assert [s for s, _ in packed_hist[i]] == [s for s, _ in hist]
        np.testing.assert_allclose([x for _, x in packed_hist[i]], [x for _, x in hist], atol=1e-4)
        for (name, a), b in zip(m.state_dict().items(), models[i].state_dict().values()):
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=2e-4, err_msg=name)
    # the models differ from each other (each slice trained on its own data, not a shared one)
    w = [m.transformer.h[0].attn.c_attn.weight.detach() for m in models]
    assert not torch.allclose(w[0], w[1])
    # still the transformers family: saved, and loaded back with its from_pretrained
    models[1].save_pretrained(tmp_path / "m1")
    loaded = GPT2LMHeadModel.from_pretrained(tmp_path / "m1")
    assert torch.equal(loaded.transformer.wte.weight, models[1].transformer.wte.weight)


def test_per_model_clipping_matches_clip_grad_norm():
    rng = torch.Generator().manual_seed(0)
    k = 5  # models, the leading dimension of every stacked parameter
    grads = [torch.randn(k, *shape, generator=rng) * torch.linspace(0.01, 3.0, k).view(-1, *[1] * len(shape))
             for shape in ((6, 4), (4,))]
    stacked = [torch.zeros_like(g, requires_grad=True) for g in grads]
    for p, g in zip(stacked, grads):
        p.grad = g.clone()
    _clip_per_model(stacked, 1.0)
    clipped = 0
    for i in range(k):  # model i's slices, clipped by torch on their own
        alone = [torch.zeros_like(g[i], requires_grad=True) for g in grads]
        for p, g in zip(alone, grads):
            p.grad = g[i].clone()
        norm = torch.nn.utils.clip_grad_norm_(alone, 1.0)
        clipped += bool(norm > 1.0)
        for p, q in zip(alone, stacked):
            torch.testing.assert_close(p.grad, q.grad[i])
    assert 0 < clipped < k  # some models were clipped, some were not


def test_mismatched_inputs_are_refused():
    m = build_model(ModelShape(32, 2, 2), V, T, 0)
    with pytest.raises(ValueError, match="2 batch functions"):
        train_packed([m], [batches(0), batches(1)], 1, TrainConfig(), device=torch.device("cpu"))


def test_a_sweep_with_pack_mode_vmap_trains_its_packs_as_one_model(tmp_path):
    """The smoke sweep through the local backend, 2 cells per job: `pack_mode: vmap` trains
    each job's two same-scale cells as one packed model (forced here: on a CPU "auto" keeps
    them serial); its store matches the serial sweep's to float rounding."""
    import xarray as xr
    import yaml

    from conftest import ROOT, run_cli

    stores = {}
    for mode in ("serial", "vmap"):
        raw = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())
        raw["slurm"].update(pack=2, pack_mode=mode)
        sweep = tmp_path / f"{mode}.yaml"
        sweep.write_text(yaml.safe_dump(raw))
        out = tmp_path / mode
        proc = run_cli("hpc/submit.py", str(sweep), "--out", str(out), "--cluster", "local")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        logs = "".join(p.read_text() for p in (out / ".s2l" / "logs").rglob("*.out"))
        assert logs.count("as one packed model") == (2 if mode == "vmap" else 0), logs[-3000:]
        stores[mode] = xr.open_zarr(out / "losses.zarr", consolidated=False).load()
    a, b = stores["serial"], stores["vmap"]
    assert b["done"].values.all()
    np.testing.assert_allclose(b["loss"].values, a["loss"].values, rtol=2e-3)
    assert not np.array_equal(b["loss"].values, a["loss"].values)  # really another numerical run
