"""Prepare the data once per config (`prepare_data`) and open it cheaply (`PreparedData.load`).

Layout of `<cache_dir>/<fingerprint>/`:

    config.json          DataConfig.to_dict()
    tokenizer/           PreTrainedTokenizerFast.save_pretrained
    train/<domain>.bin   flat token stream of the domain's train documents, EOS after each
    test.npz, test.json  the TestSuite
    stats.json           bytes / documents / tokens per domain and split, build time
    COMPLETE             written last

Every source (hub datasets, local files, real benchmarks, a pretrained tokenizer) is read
before anything is written, so a source that cannot be read is a `ConfigError` naming its key
(`data.domains.mine.path: cannot read ...`) and leaves the cache as it was. The directory is
then built under a temporary name (`<fingerprint>.tmp-<pid>`, removed if the build fails) and
renamed into place, so a reader never sees a half-built one; a file lock (`<fingerprint>.lock`)
makes concurrent callers (array tasks starting together) wait for the first builder instead of
building again. A failed write (disk full, ...) is an OSError naming the directory.
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

from s2l.config import ConfigError
from s2l.data import tokenizer as toklib
from s2l.data.config import DataConfig
from s2l.data.corpus import MB, cap_documents, doc_key
from s2l.data.sources import domain_documents, reading
from s2l.data.suite import build_suite
from s2l.data.testsets import Sample, TestSuite

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
class _Extracted:
    """Everything read from the sources, before anything is written."""

    train_docs: dict[str, list[str]]  # domain -> training documents
    held_docs: dict[str, list[str]]  # domain -> held-out documents
    benchmarks: dict[str, list[Sample]]  # real test set name -> its samples
    tokenizer: object | None  # the pretrained tokenizer, if the config names one
    seconds: float


def prepare_data(cfg: DataConfig, log=print) -> Path:
    """Build the prepared data for `cfg` unless it exists; return its directory. Safe to call
    from many processes at once: one builds, the others wait on the lock and then return.

    Raises ConfigError (nothing written) when a source cannot be read, OSError when writing
    fails (the partial build is removed)."""
    root = cfg.cache_root
    final = root / cfg.fingerprint()
    if (final / COMPLETE).exists():
        return final
    t0, c0 = time.time(), time.process_time()
    sources = _extract(cfg)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # blocks until the builder (if any) is done
        if (final / COMPLETE).exists():
            return final
        tmp = root / f"{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        if final.exists():  # an incomplete dir from a crashed build (before the rename)
            shutil.rmtree(final)
        try:
            _build(cfg, sources, tmp)
            # CPU seconds too: wall time on a shared login node says little about the work
            (tmp / COMPLETE).write_text(json.dumps({"seconds": round(time.time() - t0, 2),
                                                    "cpu_seconds": round(time.process_time() - c0, 2)}))
            os.replace(tmp, final)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError) and e.filename is None:  # e.g. ENOSPC from a write
                raise OSError(e.errno, f"{e.strerror} (preparing data)", str(tmp)) from e
            raise
        log(f"[s2l.data] prepared {final} in {time.time() - t0:.1f} s")
    return final


def _extract(cfg: DataConfig) -> _Extracted:
    """Read every source the config names; a source that cannot be read is a ConfigError."""
    t = time.time()
    train_docs, held_docs = {}, {}
    for dc in cfg.domain_configs:
        where = f"data.domains.{dc.name}"
        if dc.source == "builtin":  # installed with the package: a failure here is a bug
            docs = domain_documents(cfg, dc)
        else:
            with reading(f"{where}.path", f"{dc.source} source {dc.path!r}"):
                docs = domain_documents(cfg, dc)
        if len(docs) < 2:
            raise ConfigError(where, f"has {len(docs)} document(s); need >= 2 to split off "
                                     "held-out text")
        train_docs[dc.name], held_docs[dc.name] = split_documents(docs, cfg.heldout_frac, dc.name)
    benchmarks = {}
    for ts in cfg.test_sets:
        if ts.path is not None:  # a real benchmark (synthetic kinds read held-out text)
            from s2l.data.benchmarks import load_benchmark  # lazy: needs `datasets`

            key = "data_files" if ts.data_files else "path"
            with reading(f"test_sets.{ts.name}.{key}", f"{ts.kind} test set {ts.path!r}"):
                benchmarks[ts.name] = load_benchmark(ts)
    tok = None
    if cfg.pretrained:
        with reading("data.tokenizer.pretrained", f"tokenizer {cfg.pretrained!r}"):
            tok = toklib.load_pretrained(cfg.pretrained)
    return _Extracted(train_docs, held_docs, benchmarks, tok, round(time.time() - t, 2))


def _build(cfg: DataConfig, src: _Extracted, out: Path) -> None:
    (out / "train").mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    stats: dict = {"domains": {}, "extract_s": src.seconds}
    train_docs, held_docs = src.train_docs, src.held_docs

    t = time.time()
    if src.tokenizer is not None:
        tok = src.tokenizer
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
    suite = build_suite(cfg, tok, held_docs, held_ids, src.benchmarks)
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
