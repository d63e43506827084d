"""The decoder-only LM family: shapes, the scale ladder, parameter and FLOP counts.

Models are GPT-2 causal LMs (`s2l.gpt2`: transformers' GPT2LMHeadModel in plain torch, its
weights loadable there) built from a shape (never pretrained weights), with dropout off so
that training is a deterministic function of (seed, data).
Parameter counts follow the scaling-law convention: non-embedding parameters N (token and
position embeddings excluded; the LM head is tied to the token embedding), and the
training compute of one cell is C = 6 * N * D for D training tokens (Kaplan/Chinchilla).
"""
from __future__ import annotations

import dataclasses

#: Named shapes from tiny CPU proxies to the paper's 760M reference (d=1536, 24 layers, 12
#: heads). Names up to 10M give approximate non-embedding parameters; names from 37M on are the
#: paper's model sizes, which count all parameters at the GPT-NeoX vocabulary (~50k tokens).
#: `ModelShape.non_embedding_params` is the exact count used for FLOPs.
LADDER: dict[str, tuple[int, int, int]] = {
    # name: (d_model, n_layers, n_heads)
    "20k": (32, 2, 2),
    "50k": (48, 2, 2),
    "100k": (64, 2, 4),
    "200k": (64, 4, 4),
    "500k": (96, 4, 4),
    "1M": (128, 5, 4),
    "3M": (192, 6, 6),
    "10M": (320, 8, 8),
    "37M": (384, 10, 6),
    "80M": (512, 16, 8),
    "125M": (768, 12, 12),
    "220M": (768, 24, 12),
    "350M": (1024, 24, 16),
    "760M": (1536, 24, 12),
}


@dataclasses.dataclass(frozen=True)
class ModelShape:
    d_model: int
    n_layers: int
    n_heads: int
    mlp_ratio: int = 4

    def non_embedding_params(self) -> int:
        """Exact count for the GPT-2 block: attention (4 d^2 + 4 d), MLP (2 r d^2 + (r+1) d),
        two LayerNorms (4 d) per layer, plus the final LayerNorm (2 d)."""
        d, r = self.d_model, self.mlp_ratio
        per_layer = (4 * d * d + 4 * d) + (2 * r * d * d + (r + 1) * d) + 4 * d
        return self.n_layers * per_layer + 2 * d


def chinchilla_tokens(n_params: int, tokens_per_param: float = 20.0) -> int:
    """Compute-optimal token budget D ~ 20 N (Hoffmann et al. 2022)."""
    return int(round(n_params * tokens_per_param))


def training_flops(n_params: int, tokens: int) -> float:
    return 6.0 * n_params * tokens


def build_model(shape: ModelShape, vocab_size: int, seq_len: int, seed: int):
    """A freshly initialised GPT-2 LM (`s2l.gpt2.GPT2LM`: transformers' `GPT2LMHeadModel`
    written out in torch, same parameter names and, for a seed, the same init bit for bit, so
    checkpoints load into `GPT2LMHeadModel`); init is seeded by `seed`.

    The exact (erf) GELU, as nanoGPT and BERT use, instead of GPT-2's tanh approximation
    "gelu_new" (a python formula: ~7 elementwise passes, 9% of a step at 100k); the two differ
    by < 5e-4 anywhere, and "gelu" is a GPT2Config value (`activation_function`)."""
    import torch

    from s2l.gpt2 import GPT2LM, GPT2Config

    config = GPT2Config(vocab_size=vocab_size, n_positions=seq_len, n_embd=shape.d_model,
                        n_layer=shape.n_layers, n_head=shape.n_heads,
                        n_inner=shape.mlp_ratio * shape.d_model)
    # Seed only the init, in a forked RNG, so building a model never shifts anyone else's stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LM(config)
    return model


def count_non_embedding(model) -> int:
    """Non-embedding parameters of a built model (the cross-check of `ModelShape`)."""
    skip = {id(model.transformer.wte.weight), id(model.transformer.wpe.weight)}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)
