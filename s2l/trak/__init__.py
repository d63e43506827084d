"""TRAK (Park et al. 2023): data attribution by projected per-example gradients, the one core
used by the attribution study (image classifiers, scored by LDS) and the selection study
(DsDm datamodels of causal LMs).

    from s2l.trak import trak_scores, from_checkpoints
    S = trak_scores(from_checkpoints(model, ["m0.pt", "m1.pt"]), (x_tr, y_tr), (x_tg, y_tg),
                    proj_dim=2048, seed=0, use_q=False)          # (n_train, n_targets)

Modules, bottom up (tensors documented with shapes per function; CPU/GPU-agnostic torch):
  outputs    model-output functions f: classification margin, LM (log-)odds
  grads      per-example gradients G (B, p): closed forms per layer (Linear/Conv2d/BatchNorm),
             torch.func vmap, or a loop of backward passes
  project    seeded chunked projection P (p, k): Rademacher or normal, fp32 or bf16 ('auto':
             bf16 where bf16 matmuls are fast: AMX, GPUs)
  featurize  Phi (n, k) = G P and Q (n,) of one model
  score      kernel (k, k), Cholesky solves, scores S (n, T): single model, blockwise ensemble
             over stored features, and `trak_scores` (everything in memory)
"""
from s2l.trak.featurize import featurize, from_checkpoints
from s2l.trak.grads import (closed_form_layers, flat_grads, grad_dim, layer_grads, per_example_grads,
                           per_example_grads_loop)
from s2l.trak.outputs import ClassificationMargin, LMOddsOutput, margin_from_logits
from s2l.trak.project import (ChunkedProjector, MatrixProjector, fast_bf16, model_seed, projector_for,
                             rademacher, resolve_dtype)
from s2l.trak.score import (kernel, kernel_inverse, kernel_solve, score_blockwise, score_single,
                            trak_scores)

__all__ = ["featurize", "from_checkpoints", "closed_form_layers", "flat_grads", "grad_dim",
           "layer_grads", "per_example_grads", "per_example_grads_loop", "ClassificationMargin",
           "LMOddsOutput", "margin_from_logits", "ChunkedProjector", "MatrixProjector", "fast_bf16",
           "model_seed", "projector_for", "rademacher", "resolve_dtype", "kernel", "kernel_inverse",
           "kernel_solve", "score_blockwise", "score_single", "trak_scores"]
