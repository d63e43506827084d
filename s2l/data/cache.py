"""Open prepared data cheaply (`PreparedData.load`); building it is `s2l.data.shards`.

Layout of `<cache_dir>/<fingerprint>/` (details in s2l.data.shards and docs/data.md):

    config.json          DataConfig.to_dict()
    tokenizer/           PreTrainedTokenizerFast.save_pretrained
    shards/<domain>/<i>.bin  flat token streams of the domain's train documents, EOS after
                         each; a domain's shards concatenate (in index order) to its stream
    test.npz, test.json  the TestSuite
    stats.json           bytes / documents / tokens per domain and split, and "shards": the
                         index {domain: [[file, tokens used], ...]}
    COMPLETE             written last

Directories written before sharding (`train/<domain>.bin`, no "shards" index) still load.

`prepare_data(cfg)` (s2l.data.shards) reads every source (hub datasets, local files, real
benchmarks, a pretrained tokenizer) before anything is written, so a source that cannot be
read is a `ConfigError` naming its key (`data.domains.mine.path: cannot read ...`) and leaves
the cache as it was. A file lock (`<fingerprint>.lock`) makes concurrent callers (array tasks
starting together) wait for the first builder instead of building again; a reader never opens
a directory without COMPLETE. A failed write (disk full, ...) is an OSError naming the
directory, and the partial build is removed.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from s2l.data import tokenizer as toklib
from s2l.data.corpus import doc_key
from s2l.data.testsets import TestSuite
from s2l.data.tokens import open_stream

COMPLETE = "COMPLETE"


def split_documents(docs: list[str], heldout_frac: float, salt: str) -> tuple[list[str], list[str]]:
    """(train, heldout) by document, keyed on a hash of the text: identical documents fall on
    the same side, so no held-out text is in training data even when a source repeats itself."""
    cut = int(heldout_frac * 2 ** 64)
    held = [doc_key(d, "heldout" + salt) < cut for d in docs]
    if all(held) or not any(held):  # tiny domains: force one document to each side
        held = [i == len(docs) - 1 for i in range(len(docs))]
    return ([d for d, h in zip(docs, held) if not h], [d for d, h in zip(docs, held) if h])


@dataclasses.dataclass
class PreparedData:
    """An opened prepared-data directory. `train[d]` is a read-only 1-D token array (uint16
    when the vocabulary fits): the shard's np.memmap when the domain has one shard, else an
    s2l.data.tokens.ConcatTokens over the shards' memmaps (len(x), x[a:b] as on the
    concatenation). Opening is cheap and processes share the pages."""

    path: Path
    vocab_size: int
    domains: list[str]
    train: dict[str, np.ndarray]
    test: TestSuite
    stats: dict
    _tokenizer: object = dataclasses.field(default=None, repr=False)

    @property
    def tokenizer(self):
        """The transformers.PreTrainedTokenizerFast, loaded on first use: a cell job needs
        only token ids, and loading it costs each job ~0.5 s of transformers imports."""
        if self._tokenizer is None:
            self._tokenizer = toklib.load(self.path / "tokenizer")
        return self._tokenizer

    @classmethod
    def load(cls, path: str | Path) -> "PreparedData":
        path = Path(path)
        if not (path / COMPLETE).exists():
            raise FileNotFoundError(f"{path} is not a complete prepared-data directory; "
                                    "run s2l.data.prepare_data(cfg) first")
        stats = json.loads((path / "stats.json").read_text())
        domains = list(stats["domains"])
        if "shards" in stats:
            train = {d: open_stream([(path / f, n) for f, n in stats["shards"][d]], stats["dtype"])
                     for d in domains}
        else:  # a directory from before sharding: one file per domain
            train = {d: np.memmap(path / "train" / f"{d}.bin", dtype=stats["dtype"], mode="r")
                     for d in domains}
        return cls(path=path, vocab_size=stats["vocab_size"], domains=domains, train=train,
                   test=TestSuite.load(path), stats=stats)
