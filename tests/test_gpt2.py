"""s2l's GPT-2 (s2l.gpt2) against transformers' GPT2LMHeadModel, the reference it replaces in
the cell jobs: the same init for a seed, the same state dict, the same forward bit for bit
(fp32 and bf16, training and evaluation mode), weights that from_pretrained loads, and the
eager attention path equal to transformers' eager one."""
from __future__ import annotations

import pytest
import torch
from transformers import GPT2LMHeadModel

from s2l.gpt2 import set_attention
from s2l.model import ModelShape, build_model
from s2l.train import non_embedding_params

VOCAB, SEQ = 300, 40


def transformers_model(shape: ModelShape, seed: int) -> GPT2LMHeadModel:
    """transformers' own model for the same config, initialised from the same seed."""
    cfg = build_model(shape, VOCAB, SEQ, 0).config.to_transformers()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(cfg)


@pytest.mark.parametrize("shape,seed", [(ModelShape(32, 2, 2), 7), (ModelShape(48, 3, 4), 0),
                                        (ModelShape(16, 1, 2), 123)])
def test_init_and_state_dict_are_transformers_for_the_same_seed(shape, seed):
    ours, ref = build_model(shape, VOCAB, SEQ, seed), transformers_model(shape, seed)
    a, b = ours.state_dict(), ref.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert a[k].shape == b[k].shape and torch.equal(a[k], b[k]), k
    assert ours.lm_head.weight is ours.transformer.wte.weight  # tied, as there
    # the size precision "auto" decides on: embeddings told apart as on transformers' model
    assert non_embedding_params(ours) == non_embedding_params(ref) == shape.non_embedding_params()
    other = build_model(shape, VOCAB, SEQ, seed + 1)
    assert not torch.equal(other.transformer.wte.weight, ours.transformer.wte.weight)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("bf16", [False, True])
def test_forward_is_bit_identical_to_transformers(training, bf16):
    model = build_model(ModelShape(48, 3, 4), VOCAB, SEQ, 0).train(training)
    with torch.no_grad():  # trained-looking weights: LayerNorms and biases off their init
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ref = model.to_transformers().train(training)
    ids = torch.randint(0, VOCAB, (3, SEQ - 5))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        ours, theirs = model(ids).logits, ref(input_ids=ids).logits
    assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)


def test_eager_attention_matches_transformers_eager_and_sdpa():
    model = build_model(ModelShape(32, 2, 2), VOCAB, SEQ, 1).eval()
    ids = torch.randint(0, VOCAB, (2, SEQ))
    sdpa = model(ids).logits
    set_attention(model, "eager")
    ref = model.to_transformers().eval()
    assert ref.config._attn_implementation == "eager"
    with torch.no_grad():
        ours, theirs = model(ids).logits, ref(input_ids=ids).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours, sdpa, rtol=0, atol=1e-5)


def test_save_pretrained_loads_with_transformers_from_pretrained(tmp_path):
    model = build_model(ModelShape(32, 2, 2), VOCAB, SEQ, 5)
    model.save_pretrained(tmp_path / "m")
    loaded = GPT2LMHeadModel.from_pretrained(tmp_path / "m").eval()
    ids = torch.randint(0, VOCAB, (2, SEQ))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model.eval()(ids).logits)
    # and a checkpoint's state dict loads into transformers' model as is
    hf = transformers_model(ModelShape(32, 2, 2), 99)
    hf.load_state_dict(model.state_dict())
    assert torch.equal(hf.transformer.h[1].mlp.c_proj.weight, model.transformer.h[1].mlp.c_proj.weight)
