"""Adapter to the reference library `traker` 0.3.2 (CPU path), for agreement tests and
benchmarks only (`pip install traker==0.3.2`; imported lazily).

On CPU only its BasicProjector works; `use_half_precision=False`. With block_size = proj_dim
the projection matrix is generated once per model, but `finalize_features()` frees it and a
later `score()` fails with AttributeError ('proj_matrix'): we regenerate it before scoring.
`traker_projection` rebuilds the exact matrix traker uses for a
model id, so our implementation can be run on the same P.
"""
from __future__ import annotations

import copy
import tempfile
import time

import torch


def traker_projection(grad_dim: int, proj_dim: int, seed: int, model_id: int,
                      kind: str = "rademacher") -> torch.Tensor:
    """The (grad_dim, proj_dim) float32 matrix traker's BasicProjector (one block) uses."""
    g = torch.Generator().manual_seed(seed + int(1e5) * model_id)
    P = torch.empty(grad_dim, proj_dim)
    if kind == "rademacher":
        P.bernoulli_(p=0.5, generator=g)
        return P * 2.0 - 1.0
    return P.normal_(generator=g)


def traker_scores(models, train, targets, proj_dim: int, seed: int = 0, batch_size: int = 64,
                  block_size: int | None = None, save_dir: str | None = None,
                  ridge: float = 0.0, dtype: torch.dtype = torch.float32,
                  timings: dict | None = None) -> torch.Tensor:
    """traker's scores (n_train, n_targets) for an ensemble of models (list of nn.Module, all of
    one architecture), train/targets = (x, y) tensors. block_size None: = proj_dim (fastest).
    dtype: the BasicProjector's matrix and product dtype (bf16: traker's only reduced precision
    on CPU). timings: if a dict, receives 'featurize' (train gradients, projection, finalize)
    and 'score' (target gradients, projection, scores) in CPU-seconds of this process."""
    import logging

    from trak import TRAKer
    from trak.projectors import BasicProjector, ProjectionType

    from s2l.trak.grads import grad_dim

    base = copy.deepcopy(models[0]).eval()
    n, T = len(train[0]), len(targets[0])
    proj = BasicProjector(grad_dim(base), proj_dim, seed, ProjectionType.rademacher,
                          device="cpu", block_size=block_size or proj_dim, dtype=dtype)
    with tempfile.TemporaryDirectory() as tmp:
        tr = TRAKer(model=base, task="image_classification", train_set_size=n,
                    save_dir=save_dir or tmp, device="cpu", projector=proj, proj_dim=proj_dim,
                    use_half_precision=False, projector_seed=seed, lambda_reg=ridge,
                    logging_level=logging.ERROR)
        t0 = time.process_time()
        for mid, model in enumerate(models):
            tr.load_checkpoint(model.state_dict(), model_id=mid)
            for i in range(0, n, batch_size):
                tr.featurize(batch=(train[0][i:i + batch_size], train[1][i:i + batch_size]),
                             num_samples=len(train[0][i:i + batch_size]))
        tr.finalize_features()
        t1 = time.process_time()
        for mid, model in enumerate(models):
            # the freed matrix must exist again before scoring (traker 0.3.2 quirk)
            proj.model_id = mid
            proj.get_generator_states()
            proj.generate_sketch_matrix(proj.generator_states[0])
            tr.start_scoring_checkpoint("targets", model.state_dict(), model_id=mid, num_targets=T)
            for i in range(0, T, batch_size):
                tr.score(batch=(targets[0][i:i + batch_size], targets[1][i:i + batch_size]),
                         num_samples=len(targets[0][i:i + batch_size]))
        S = torch.as_tensor(tr.finalize_scores("targets")[:]).float().clone()
        if timings is not None:
            timings.update(featurize=t1 - t0, score=time.process_time() - t1)
        return S
