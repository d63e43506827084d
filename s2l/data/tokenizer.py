"""Tokenizer: a ByteLevel BPE trained with `tokenizers`, or a named pretrained one.

Either way it is saved with `PreTrainedTokenizerFast.save_pretrained` into the prepared-data
directory, so every cell loads the same files with `AutoTokenizer.from_pretrained(dir)` and
nothing depends on a hub at training time.
"""
from __future__ import annotations

from pathlib import Path

EOS = "<|endoftext|>"


def train_bpe(texts: list[str], vocab_size: int):
    """A GPT-2-style ByteLevel BPE (any byte sequence encodes; no unknown token) with one
    special token, EOS, used as the document separator and for padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS,
                                   pad_token=EOS, unk_token=None, model_max_length=1 << 30)


def load_pretrained(name: str):
    """A transformers tokenizer by name or directory (offline if HF_HUB_OFFLINE is set).
    It must be a fast tokenizer with an EOS token: EOS separates documents."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name, use_fast=True)
    if not tok.is_fast:
        raise ValueError(f"tokenizer {name!r} has no fast (Rust) version; s2l needs one")
    if tok.eos_token_id is None:
        raise ValueError(f"tokenizer {name!r} has no eos_token; s2l separates documents with it")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load(path: Path):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(path))


class TokenIds:
    """The Rust tokenizer of a saved tokenizer directory, without transformers: what a shard
    worker needs to turn text into ids (`encode_batch`, `eos_token_id`, `len`). Importing
    transformers costs a worker process ~2.5 CPU-seconds, more than tokenizing a small shard.
    tests/test_data_shards.py checks that its ids equal those of `load(path)`."""

    def __init__(self, path: Path):
        import json

        from tokenizers import Tokenizer

        path = Path(path)
        self.backend_tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        eos = json.loads((path / "tokenizer_config.json").read_text()).get("eos_token")
        eos = eos.get("content") if isinstance(eos, dict) else eos
        self.eos_token_id = self.backend_tokenizer.token_to_id(eos) if eos else None
        if self.eos_token_id is None:
            raise ValueError(f"{path}: the tokenizer names no eos_token in its vocabulary; "
                             "s2l separates documents with it")

    def __len__(self) -> int:
        return self.backend_tokenizer.get_vocab_size(with_added_tokens=True)


def encode_batch(tok, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, with no special tokens added. Uses the Rust tokenizer's
    parallel batch encoder directly (the Python wrapper adds ~2x overhead on big batches)."""
    return [e.ids for e in tok.backend_tokenizer.encode_batch(texts, add_special_tokens=False)]
