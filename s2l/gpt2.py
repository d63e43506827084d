"""The GPT-2 that s2l trains, written out in torch: transformers' `GPT2LMHeadModel`, same
parameters, same names, same init, without importing transformers.

Why: a cell job spent 5.2 CPU-s importing transformers' GPT-2 before its first cell
(transformers 5 scans ~1,700 source files for its lazy import table, and its GPT-2 module pulls
torch.distributed.tensor and torch._dynamo), 4 x 5.2 of the default grid's ~90 CPU-s of
overhead. The model itself is a few lines of torch.

What stays the transformers family:
- the state dict: the names and shapes of `GPT2LMHeadModel`'s (`transformer.h.{i}.attn.c_attn`
  is a Conv1D, weight (in, out)), so a checkpoint loads into `GPT2LMHeadModel` as is, and
  `save_pretrained(dir)` writes what `GPT2LMHeadModel.from_pretrained(dir)` reads (it imports
  transformers, once, only then);
- the init: for a seed, every weight is the one `GPT2LMHeadModel(config)` draws (same draws in
  the same order: the constructors' default inits, then `post_init`'s), so results are those
  of the transformers model bit for bit (tests/test_gpt2.py);
- the forward: the operations of transformers' SDPA GPT-2 (checked bit for bit, fp32 and bf16,
  in training and evaluation), with dropout off (s2l never uses it) and the exact-erf GELU.

Shapes: input_ids int64 (B, T), T <= n_positions; hidden (B, T, d); logits (B, T, V).
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

INIT_STD = 0.02  # transformers' GPT2Config.initializer_range


@dataclasses.dataclass
class GPT2Config:
    """The fields of transformers' GPT2Config that this model has (names as there)."""

    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    n_inner: int
    layer_norm_epsilon: float = 1e-5
    # "sdpa": fused causal attention; "eager": scores, softmax, weighted sum written out (the
    # per-example gradient loop of DsDm runs faster with it on CPU: s2l.selection.dsdm)
    attn_implementation: str = "sdpa"

    def to_transformers(self):
        """The equivalent `transformers.GPT2Config` (imports transformers)."""
        from transformers import GPT2Config as HFConfig

        return HFConfig(vocab_size=self.vocab_size, n_positions=self.n_positions,
                        n_embd=self.n_embd, n_layer=self.n_layer, n_head=self.n_head,
                        n_inner=self.n_inner, layer_norm_epsilon=self.layer_norm_epsilon,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        tie_word_embeddings=True, activation_function="gelu",
                        attn_implementation=self.attn_implementation, bos_token_id=0,
                        eos_token_id=0)


@dataclasses.dataclass
class LMOutput:
    logits: torch.Tensor  # (B, T, V)


# The submodules below hold the parameters under transformers' names; the computation is
# `hidden_states`, one function over all of them (no per-module forward to keep in step).

class Conv1D(nn.Module):
    """transformers' Conv1D: a linear layer with its weight stored (in, out)."""

    def __init__(self, n_out: int, n_in: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out).normal_(std=INIT_STD))
        self.bias = nn.Parameter(torch.zeros(n_out))


class Attention(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.head_dim = cfg.n_embd // cfg.n_head
        self.scaling = self.head_dim ** -0.5
        self.c_attn = Conv1D(3 * cfg.n_embd, cfg.n_embd)
        self.c_proj = Conv1D(cfg.n_embd, cfg.n_embd)


class MLP(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.c_fc = Conv1D(cfg.n_inner, cfg.n_embd)
        self.c_proj = Conv1D(cfg.n_embd, cfg.n_inner)
        self.act = nn.GELU()


class Block(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.attn = Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.mlp = MLP(cfg)


class Body(nn.Module):
    """`.transformer` of the model: embeddings, blocks, final LayerNorm."""

    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.n_positions, cfg.n_embd)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)


class GPT2LM(nn.Module):
    """GPT-2 causal LM with the LM head tied to the token embedding.

    forward(input_ids (B, T)) -> LMOutput(logits (B, T, V)), as `GPT2LMHeadModel(input_ids)`.
    Build it with `s2l.model.build_model` (seeded init)."""

    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.config = cfg
        self.transformer = Body(cfg)
        _post_init(self.transformer, cfg.n_layer)  # before the head is built, as transformers
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied: the head's own draw is dropped

    def forward(self, input_ids: torch.Tensor) -> LMOutput:
        return LMOutput(hidden_states(self, input_ids) @ self.lm_head.weight.t())

    # transformers' accessors, which code written for any LM (s2l.train.non_embedding_params)
    # asks to tell the embeddings from the rest
    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.wte

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def to_transformers(self):
        """A `transformers.GPT2LMHeadModel` holding this model's weights (imports transformers)."""
        from transformers import GPT2LMHeadModel

        hf = GPT2LMHeadModel(self.config.to_transformers())
        hf.load_state_dict(self.state_dict())
        return hf.to(next(self.parameters()).device)

    def save_pretrained(self, path) -> None:
        """Write what `transformers.GPT2LMHeadModel.from_pretrained(path)` loads."""
        self.to_transformers().save_pretrained(path)


@torch.no_grad()
def _post_init(tf: Body, L: int) -> None:
    """The draws of transformers' `post_init` of the GPT-2 body, in its order (children before
    parents: embeddings, then per block c_attn, c_proj, the attention's scaled c_proj, c_fc,
    c_proj, the MLP's scaled c_proj). The constructors drew first, as transformers' do; the LM
    head is built after this, as there, and replaced by the tied embedding."""
    scaled = INIT_STD / math.sqrt(2 * L)  # GPT-2's residual projections: 1/sqrt(2 L)
    tf.wte.weight.normal_(0.0, INIT_STD)
    tf.wpe.weight.normal_(0.0, INIT_STD)
    for blk in tf.h:
        for layer in (blk.attn, blk.mlp):
            first = layer.c_attn if layer is blk.attn else layer.c_fc
            first.weight.normal_(0.0, INIT_STD)
            layer.c_proj.weight.normal_(0.0, INIT_STD)
            layer.c_proj.weight.normal_(0.0, scaled)


def set_attention(model, implementation: str) -> str:
    """Switch attention between "sdpa" and "eager" on s2l's GPT-2 or a transformers model;
    returns the implementation it had."""
    if isinstance(model, GPT2LM):
        before, model.config.attn_implementation = model.config.attn_implementation, implementation
        return before
    before = model.config._attn_implementation
    model.set_attn_implementation(implementation)
    return before


def body_and_head(model) -> bool:
    """True for a causal LM whose body (`.transformer`) and tied vocabulary head (`.lm_head`)
    can be run apart, so that the (B, T, V) logits need never be built (s2l.train.LMLoss,
    s2l.evaluate): this module's `GPT2LM`, transformers' GPT-2 and its likes."""
    return hasattr(model, "transformer") and hasattr(model, "lm_head")


def lean_forward_ok(model) -> bool:
    """True when `hidden_states` computes what the model's own forward does: this module's
    `GPT2LM` (always), or a transformers GPT-2 without cross-attention, with SDPA attention,
    no active dropout and the default attention scaling."""
    if isinstance(model, GPT2LM):
        return True
    cfg = getattr(model, "config", None)
    if getattr(cfg, "model_type", None) != "gpt2" or not hasattr(model, "transformer"):
        return False
    dropout = model.training and max(cfg.resid_pdrop, cfg.embd_pdrop, cfg.attn_pdrop) > 0
    return (cfg._attn_implementation == "sdpa" and not cfg.add_cross_attention and not dropout
            and not cfg.reorder_and_upcast_attn and not cfg.scale_attn_by_inverse_layer_idx)


def final_hidden(model, input_ids: torch.Tensor) -> torch.Tensor:
    """The final hidden states (B, T, d) of a `body_and_head` model: `hidden_states` where it
    is exact (`lean_forward_ok`: on a transformers GPT-2 it skips the wrapper's fixed cost of
    ~2 ms per call - output capturing, mask construction, attention dispatch, p=0 dropout
    modules - 20% of an evaluation batch at 20k parameters), else the model's own body."""
    if lean_forward_ok(model):
        return hidden_states(model, input_ids)
    return model.transformer(input_ids=input_ids).last_hidden_state


def hidden_states(model, input_ids: torch.Tensor) -> torch.Tensor:
    """The final hidden states (after ln_f) of a GPT-2 with transformers' parameter names (this
    module's `GPT2LM`, or a `GPT2LMHeadModel` that `lean_forward_ok` accepts):
    input_ids int64 (B, T) -> (B, T, d), without the vocabulary head. Attention: SDPA (causal),
    or written out on a `GPT2LM` whose `config.attn_implementation` is "eager"."""
    tf = model.transformer
    B, T = input_ids.shape
    x = tf.wte(input_ids) + tf.wpe.weight[:T]                  # positions 0..T-1
    d = x.size(-1)
    eager = isinstance(model, GPT2LM) and model.config.attn_implementation == "eager"
    for blk in tf.h:
        attn, mlp = blk.attn, blk.mlp
        h = F.layer_norm(x, (d,), blk.ln_1.weight, blk.ln_1.bias, blk.ln_1.eps)
        qkv = torch.addmm(attn.c_attn.bias, h.view(-1, d), attn.c_attn.weight).view(B, T, 3 * d)
        q, k, v = qkv.split(d, dim=2)
        q, k, v = (t.view(B, T, -1, attn.head_dim).transpose(1, 2) for t in (q, k, v))
        y = (_eager_attention(q, k, v, attn.scaling) if eager else
             F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, scale=attn.scaling))
        y = y.transpose(1, 2).reshape(B * T, d)
        x = x + torch.addmm(attn.c_proj.bias, y, attn.c_proj.weight).view(B, T, d)
        h = F.layer_norm(x, (d,), blk.ln_2.weight, blk.ln_2.bias, blk.ln_2.eps)
        h = mlp.act(torch.addmm(mlp.c_fc.bias, h.view(-1, d), mlp.c_fc.weight))
        x = x + torch.addmm(mlp.c_proj.bias, h, mlp.c_proj.weight).view(B, T, d)
    return F.layer_norm(x, (d,), tf.ln_f.weight, tf.ln_f.bias, tf.ln_f.eps)


def _eager_attention(q, k, v, scale: float) -> torch.Tensor:
    """Causal attention written out as transformers' eager GPT-2 does it (an additive mask of
    the dtype's minimum above the diagonal): q, k, v (B, H, T, hd) -> (B, H, T, hd)."""
    T = q.size(-2)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale        # (B, H, T, T)
    mask = torch.full((T, T), torch.finfo(scores.dtype).min, dtype=scores.dtype,
                      device=q.device).triu(1)
    weights = F.softmax(scores + mask, dim=-1).type(v.dtype)
    return torch.matmul(weights, v)
