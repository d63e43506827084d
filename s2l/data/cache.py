"""Prepare the data once per config (`prepare_data`) and open it cheaply (`PreparedData.load`).

Layout of `<cache_dir>/<fingerprint>/`:

    config.json          DataConfig.to_dict()
    tokenizer/           PreTrainedTokenizerFast.save_pretrained
    train/<domain>.bin   flat token stream of the domain's train documents, EOS after each
    test.npz, test.json  the TestSuite
    stats.json           bytes / documents / tokens per domain and split, build time
    COMPLETE             written last

The directory is built under a temporary name and renamed into place, so a reader never sees a
half-built one; a file lock (`<fingerprint>.lock`) makes concurrent callers (array tasks
starting together) wait for the first builder instead of building again.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from s2l.data import tokenizer as toklib
from s2l.data.config import DataConfig
from s2l.data.corpus import MB, cap_documents, doc_key
from s2l.data.sources import domain_documents
from s2l.data.suite import build_suite
from s2l.data.testsets import TestSuite

COMPLETE = "COMPLETE"


def split_documents(docs: list[str], heldout_frac: float, salt: str) -> tuple[list[str], list[str]]:
    """(train, heldout) by document, keyed on a hash of the text: identical documents fall on
    the same side, so no held-out text is in training data even when a source repeats itself."""
    cut = int(heldout_frac * 2 ** 64)
    held = [doc_key(d, "heldout" + salt) < cut for d in docs]
    if all(held) or not any(held):  # tiny domains: force one document to each side
        held = [i == len(docs) - 1 for i in range(len(docs))]
    return ([d for d, h in zip(docs, held) if not h], [d for d, h in zip(docs, held) if h])


def prepare_data(cfg: DataConfig, log=print) -> Path:
    """Build the prepared data for `cfg` unless it exists; return its directory. Safe to call
    from many processes at once: one builds, the others wait on the lock and then return."""
    root = cfg.cache_root
    root.mkdir(parents=True, exist_ok=True)
    final = root / cfg.fingerprint()
    if (final / COMPLETE).exists():
        return final
    with open(root / f"{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # blocks until the builder (if any) is done
        if (final / COMPLETE).exists():
            return final
        tmp = root / f"{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        if final.exists():  # an incomplete dir from a crashed build (before the rename)
            shutil.rmtree(final)
        t0, c0 = time.time(), time.process_time()
        _build(cfg, tmp, log)
        # CPU seconds too: wall time on a shared login node says little about the work
        (tmp / COMPLETE).write_text(json.dumps({"seconds": round(time.time() - t0, 2),
                                                "cpu_seconds": round(time.process_time() - c0, 2)}))
        os.replace(tmp, final)
        log(f"[s2l.data] prepared {final} in {time.time() - t0:.1f} s")
    return final


def _build(cfg: DataConfig, out: Path, log) -> None:
    (out / "train").mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    stats: dict = {"domains": {}}
    t = time.time()
    train_docs, held_docs = {}, {}
    for dc in cfg.domain_configs:
        docs = domain_documents(cfg, dc)
        if len(docs) < 2:
            raise ValueError(f"domain {dc.name!r} has {len(docs)} document(s); need >= 2 "
                             "to split off held-out text")
        train_docs[dc.name], held_docs[dc.name] = split_documents(docs, cfg.heldout_frac, dc.name)
    stats["extract_s"] = round(time.time() - t, 2)

    t = time.time()
    if cfg.pretrained:
        tok = toklib.load_pretrained(cfg.pretrained)
    else:
        # each domain contributes equally (up to tokenizer_mb_per_domain) so the vocabulary is
        # not dominated by the biggest domain, and training stays a few seconds
        sample = [d for name in cfg.domains for d in
                  cap_documents(train_docs[name], int(cfg.tokenizer_mb_per_domain * MB), "tok")]
        tok = toklib.train_bpe(sample, cfg.vocab_size)
    tok.save_pretrained(str(out / "tokenizer"))
    stats["tokenizer_s"] = round(time.time() - t, 2)

    t = time.time()
    vocab = len(tok)
    dtype = np.uint16 if vocab < 65536 else np.uint32
    eos = tok.eos_token_id
    held_ids = {}
    for name in cfg.domains:
        n_tokens = _write_stream(tok, train_docs[name], eos, dtype, out / "train" / f"{name}.bin")
        held_ids[name] = toklib.encode_batch(tok, held_docs[name])
        stats["domains"][name] = {
            "train_docs": len(train_docs[name]), "heldout_docs": len(held_docs[name]),
            "train_bytes": sum(len(d.encode("utf-8", "replace")) for d in train_docs[name]),
            "heldout_bytes": sum(len(d.encode("utf-8", "replace")) for d in held_docs[name]),
            "train_tokens": n_tokens, "heldout_tokens": sum(map(len, held_ids[name]))}
    stats["tokenize_s"] = round(time.time() - t, 2)

    t = time.time()
    suite = build_suite(cfg, tok, held_docs, held_ids)
    suite.save(out)
    stats["test_s"] = round(time.time() - t, 2)
    stats.update(vocab_size=vocab, dtype=np.dtype(dtype).name, eos=eos,
                 test_samples={n: int((suite.sample_test_set == n).sum()) for n in suite.test_sets})
    (out / "stats.json").write_text(json.dumps(stats, indent=1))


def _write_stream(tok, docs: list[str], eos: int, dtype, path: Path, chunk: int = 2000) -> int:
    """Tokenize documents in chunks and append them, EOS after each, to a flat binary file."""
    n = 0
    with open(path, "wb") as f:
        for i in range(0, len(docs), chunk):
            ids = toklib.encode_batch(tok, docs[i:i + chunk])
            flat = np.fromiter((t for doc in ids for t in (*doc, eos)), dtype=dtype)
            f.write(flat.tobytes())
            n += len(flat)
    return n


@dataclasses.dataclass
class PreparedData:
    """An opened prepared-data directory. `train[d]` is a read-only 1-D memmap of token ids
    (uint16 when the vocabulary fits), so opening is cheap and processes share the pages."""

    path: Path
    tokenizer: object  # transformers.PreTrainedTokenizerFast
    vocab_size: int
    domains: list[str]
    train: dict[str, np.ndarray]
    test: TestSuite
    stats: dict

    @classmethod
    def load(cls, path: str | Path) -> "PreparedData":
        path = Path(path)
        if not (path / COMPLETE).exists():
            raise FileNotFoundError(f"{path} is not a complete prepared-data directory; "
                                    "run s2l.data.prepare_data(cfg) first")
        stats = json.loads((path / "stats.json").read_text())
        domains = list(stats["domains"])
        train = {d: np.memmap(path / "train" / f"{d}.bin", dtype=stats["dtype"], mode="r")
                 for d in domains}
        return cls(path=path, tokenizer=toklib.load(path / "tokenizer"),
                   vocab_size=stats["vocab_size"], domains=domains, train=train,
                   test=TestSuite.load(path), stats=stats)
