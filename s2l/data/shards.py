"""Data preparation as stages: plan -> tokenizer -> shards (one task each) -> finalize.

The plan is s2l.data.plan's; this module carries it out:

    plan = plan_preparation(cfg)            # cheap: lists files, reads no document text
    build_tokenizer(cfg, plan)              # one task: BPE on a bounded sample, or pretrained
    for spec in plan.shards:                # an array of tasks, any order, any machine
        if not shard_done(plan, spec):
            tokenize_shard(cfg, plan, spec)
    finalize(cfg, plan)                     # test suite, stats (the index), COMPLETE

`prepare_data(cfg)` runs all of it serially in-process (under the file lock of s2l.data.cache).
Layout of `plan.root` (= cfg.cache_root / cfg.fingerprint()), docs/data.md has the details:

    config.json                    DataConfig.to_dict()
    tokenizer/, TOKENIZER          the tokenizer; TOKENIZER (written last) = its fingerprints
    builtin/<domain>.json          a builtin domain's documents and held-out flags, as the
                                   tokenizer's pass extracted them: the shard tasks read them
                                   instead of extracting again; removed by finalize
    shards/<domain>/<i>.bin        flat token stream of the shard's train documents, EOS after
                                   each (uint16 when the vocabulary fits, else uint32)
    shards/<domain>/<i>.held.jsonl its held-out documents ({"text": ...} per line)
    shards/<domain>/<i>.last.txt   its last train document (the tiny-domain fallback needs it)
    shards/<domain>/<i>.json       its stats and fingerprints: written last = the shard is done
    test.npz, test.json            the TestSuite
    stats.json                     per-domain stats + "shards": the index PreparedData opens
    COMPLETE                       written last; a COMPLETE directory is never modified again

Every file is written under a temporary name and renamed into place, so a killed task leaves
at most a `*.tmp-<pid>` file that is never taken for a result and is overwritten by the rerun.
A shard is done when its `.json` names the shard's fingerprint (the source slice and all that
changes its tokens) and the sha256 of the tokenizer; a shard whose source changed gets a new
fingerprint and is redone. Since a changed file also changes cfg.fingerprint() (a new root),
`tokenize_shard` first looks for a finished shard with the same (fingerprint, tokenizer) in the
sibling roots of the cache and hard-links it (copies across filesystems): only changed shards
are tokenized again.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import heapq
import itertools
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np

from s2l.config import ConfigError
from s2l.data import tokenizer as toklib
from s2l.data.cache import COMPLETE
from s2l.data.config import DataConfig
from s2l.data.corpus import MB, cap_documents, doc_key
from s2l.data.plan import DataPlan, ShardSpec, plan_preparation, short_hash
from s2l.data.sources import reading
from s2l.data.streams import builtin_split, shard_documents
from s2l.data.suite import build_suite

TOKENIZER_MARK = "TOKENIZER"
BUILTIN_DIR = "builtin"
HELDOUT_SUITE_MB = 64  # held-out text per domain read into the test suite (the rest unused)
SAMPLE_DOC_FRACTION = 16  # streamed sample: a document gives at most 1/16 of the budget
# documents tokenized together: bounds a worker's memory (the Rust Encoding objects of a
# chunk take tens of bytes per byte of text) while keeping the batch encoder busy
CHUNK_DOCS, CHUNK_BYTES = 2000, 1 * MB


# ----------------------------------------------------------------------------- tokenizer

@dataclasses.dataclass
class _Scan:
    """What one pass over the sources tells before anything is written."""

    sample: list[str]  # the tokenizer's training text, domains in config order
    docs: dict[str, tuple[int, int]]  # domain -> (train docs, held-out docs) before fallback


def _scan(cfg: DataConfig, plan: DataPlan, sample: bool) -> _Scan:
    """Read every source once: check it (a ConfigError at its key path), count documents and,
    if `sample`, pick the tokenizer sample (bounded: tokenizer_mb_per_domain per domain).

    Builtin domains: today's sample exactly (cap_documents over the train documents).
    Streamed domains: the train documents with the lowest doc_key(text, "tok") whose total
    size fits the budget (each cut to budget/16 bytes), kept in a max-heap during one pass,
    then put back in source order; for a domain that fits whole this equals cap_documents."""
    budget = int(cfg.tokenizer_mb_per_domain * MB)
    texts, docs = [], {}
    for dc in cfg.domain_configs:
        where = f"data.domains.{dc.name}"
        if dc.source == "builtin":
            all_docs, held = builtin_split(cfg, dc.name)
            if len(all_docs) < 2:
                raise ConfigError(where, f"has {len(all_docs)} document(s); need >= 2 to split "
                                         "off held-out text")
            train = [d for d, h in zip(all_docs, held) if not h]
            docs[dc.name] = (len(train), len(all_docs) - len(train))
            if sample:
                texts += cap_documents(train, budget, "tok")
            continue
        heap: list = []  # (-key, -position, text, size): the max key on top
        total = n_train = n_held = pos = 0
        pending = None  # the previous train document: the last one may move to held-out
        limit = max(1, budget // SAMPLE_DOC_FRACTION)

        def push(item):
            nonlocal total
            text, p = item
            b = text.encode("utf-8", "replace")
            if len(b) > limit:
                b = b[:limit]
                text = b.decode("utf-8", "ignore")
            heapq.heappush(heap, (-doc_key(item[0], "tok"), -p, text, len(b)))
            total += len(b)
            while total > budget:
                total -= heapq.heappop(heap)[3]

        with reading(f"{where}.path", f"{dc.source} source {dc.path!r}"):
            for spec in plan.of_domain(dc.name):
                for text, is_held in shard_documents(cfg, spec):
                    if is_held:
                        n_held += 1
                        continue
                    n_train += 1
                    if sample and pending is not None:
                        push(pending)
                    pending = (text, pos)
                    pos += 1
        if n_train + n_held < 2:
            raise ConfigError(where, f"has {n_train + n_held} document(s); need >= 2 to split "
                                     "off held-out text")
        if n_train == 0:
            raise ConfigError(where, f"all {n_held} documents fall in the held-out split; "
                                     "lower data.heldout_frac or add documents")
        if sample and pending is not None and n_held > 0:  # else it moves to held-out
            push(pending)
        docs[dc.name] = (n_train, n_held)
        texts += [t for _, _, t, _ in sorted(heap, key=lambda x: -x[1])]
    return _Scan(texts, docs)


def _make_tokenizer(cfg: DataConfig, plan: DataPlan):
    """(tokenizer, scan): the pretrained one (sources still checked) or a BPE on the sample."""
    if cfg.pretrained:
        with reading("data.tokenizer.pretrained", f"tokenizer {cfg.pretrained!r}"):
            tok = toklib.load_pretrained(cfg.pretrained)
        return tok, _scan(cfg, plan, sample=False)
    scan = _scan(cfg, plan, sample=True)
    return toklib.train_bpe(scan.sample, cfg.vocab_size), scan


def tokenizer_done(cfg: DataConfig, plan: DataPlan) -> bool:
    if (plan.root / COMPLETE).exists():
        return True
    try:
        mark = json.loads((plan.root / TOKENIZER_MARK).read_text())
    except (OSError, ValueError):
        return False
    return (mark.get("fingerprint") == plan.tokenizer_fingerprint
            and (plan.root / "tokenizer" / "tokenizer.json").exists())


def build_tokenizer(cfg: DataConfig, plan: DataPlan, tok=None, scan: _Scan | None = None) -> None:
    """Write `<root>/tokenizer/` and then the TOKENIZER mark (idempotent, atomic). `tok`: an
    already built tokenizer (prepare_data builds it before writing anything)."""
    if tokenizer_done(cfg, plan):
        return
    t0 = time.time()
    if tok is None:
        tok, scan = _make_tokenizer(cfg, plan)
    plan.root.mkdir(parents=True, exist_ok=True)
    _write_text(plan.root / "config.json", json.dumps(cfg.to_dict(), indent=1))
    tmp = plan.root / f"tokenizer.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(str(tmp))
    final = plan.root / "tokenizer"
    if final.exists():  # from another tokenizer fingerprint, or a crash before the mark
        shutil.rmtree(final)
    os.replace(tmp, final)
    _save_builtin_splits(cfg, plan)
    mark = {"fingerprint": plan.tokenizer_fingerprint, "sha256": _hash_tokenizer(plan.root),
            "seconds": round(time.time() - t0, 2), "vocab_size": len(tok),
            "sample_bytes": sum(len(t.encode("utf-8", "replace")) for t in scan.sample)
            if scan else 0}
    _write_text(plan.root / TOKENIZER_MARK, json.dumps(mark, indent=1))


def _split_path(plan: DataPlan, domain: str) -> Path:
    return plan.root / BUILTIN_DIR / f"{domain}.json"


def _save_builtin_splits(cfg: DataConfig, plan: DataPlan) -> None:
    """Each builtin domain's `builtin_split` (documents, held-out flags), which the tokenizer's
    pass has just computed in this process, as JSON for the shard tasks: they run in other
    processes and would otherwise extract, cap and hash the source again (4.7 of the default
    grid's ~42 data-preparation CPU-seconds, gcide's 126k entries most of it)."""
    for dc in cfg.domain_configs:
        if dc.source == "builtin":
            docs, held = builtin_split(cfg, dc.name)
            path = _split_path(plan, dc.name)
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_text(path, json.dumps({"docs": docs, "held": held}))


def _load_builtin_split(plan: DataPlan, domain: str) -> tuple[tuple, tuple] | None:
    """The saved split of a builtin domain, or None (not saved, e.g. by an older version, or
    not readable as one: then the caller extracts the source itself)."""
    try:
        d = json.loads(_split_path(plan, domain).read_text(encoding="utf-8"))
        docs, held = d["docs"], d["held"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not (isinstance(docs, list) and isinstance(held, list) and len(docs) == len(held)
            and all(isinstance(t, str) for t in docs) and all(isinstance(h, bool) for h in held)):
        return None
    return tuple(docs), tuple(held)


def _hash_tokenizer(root: Path) -> str:
    """What the token ids depend on: tokenizer.json (vocabulary, merges, normalizer, ...)."""
    return hashlib.sha256((root / "tokenizer" / "tokenizer.json").read_bytes()).hexdigest()[:16]


def _tokenizer_sha(root: Path) -> str:
    """The hash recorded in the TOKENIZER mark: shard_done is called once per shard by a
    driver, and a pretrained tokenizer.json is megabytes. OSError when there is no mark."""
    try:
        return json.loads((root / TOKENIZER_MARK).read_text())["sha256"]
    except (ValueError, KeyError) as e:
        raise OSError(f"{root / TOKENIZER_MARK}: unreadable ({e})") from None


def _load_tokenizer(plan: DataPlan) -> toklib.TokenIds:
    """The prepared tokenizer as the bare Rust one: shard and finalize workers only turn text
    into ids, and so never import transformers."""
    if not (plan.root / TOKENIZER_MARK).exists():
        raise RuntimeError(f"{plan.root}: no tokenizer yet; run build_tokenizer first")
    return toklib.TokenIds(plan.root / "tokenizer")


# ----------------------------------------------------------------------------- shards

def _shard_dir(plan: DataPlan, spec: ShardSpec) -> Path:
    return plan.root / "shards" / spec.domain


def _meta_path(plan: DataPlan, spec: ShardSpec) -> Path:
    return _shard_dir(plan, spec) / f"{spec.index:05d}.json"


def _key_file(d: Path, content: str) -> Path:
    """An empty-named pointer `<content>.key` (holding the shard index): lets another root
    find a finished identical shard with one glob, without reading every shard's .json."""
    return d / f"{content}.key"


def _files(d: Path, index: int) -> dict[str, Path]:
    return {ext: d / f"{index:05d}.{ext}" for ext in ("bin", "held.jsonl", "last.txt")}


def _read_meta(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _valid(meta: dict | None, d: Path, index: int, content: str) -> bool:
    if not meta or meta.get("content") != content:
        return False
    f = _files(d, index)
    try:
        return (f["bin"].stat().st_size == meta["train_tokens"] * np.dtype(meta["dtype"]).itemsize
                and f["held.jsonl"].exists() and f["last.txt"].exists())
    except OSError:
        return False


def _content(spec: ShardSpec, tok_sha: str) -> str:
    return short_hash({"shard": spec.fingerprint, "tokenizer": tok_sha})


def shard_done(plan: DataPlan, spec: ShardSpec) -> bool:
    """The shard's files exist, complete, for this source slice and this tokenizer."""
    if (plan.root / COMPLETE).exists():
        return True
    try:
        sha = _tokenizer_sha(plan.root)
    except OSError:
        return False
    return _valid(_read_meta(_meta_path(plan, spec)), _shard_dir(plan, spec), spec.index,
                  _content(spec, sha))


def tokenize_shard(cfg: DataConfig, plan: DataPlan, spec: ShardSpec,
                   progress: Callable[[dict], None] | None = None) -> dict:
    """Tokenize one shard into `<root>/shards/<domain>/<index>.*` (each file written under a
    temporary name, renamed; the .json last). Returns its stats (the .json's content). Memory:
    one chunk of documents (CHUNK_BYTES of text) plus, for builtins, the domain's list.

    progress: called after every chunk with {"key", "tokens", "docs", "bytes", "seconds",
    "tokens_per_s", "approx_bytes"} (bytes: source text done so far, for an ETA).
    A source that cannot be read is a ConfigError at its key path."""
    if (plan.root / COMPLETE).exists():
        meta = _read_meta(_meta_path(plan, spec))
        return meta or {"key": spec.key, "reused": True}
    tok = _load_tokenizer(plan)
    sha = _tokenizer_sha(plan.root)
    content = _content(spec, sha)
    d = _shard_dir(plan, spec)
    meta = _read_meta(_meta_path(plan, spec))
    if _valid(meta, d, spec.index, content):
        return meta
    d.mkdir(parents=True, exist_ok=True)
    if _reuse(cfg, plan, spec, content):
        return _read_meta(_meta_path(plan, spec))

    t0, c0 = time.time(), time.process_time()
    eos = tok.eos_token_id
    dtype = np.uint16 if len(tok) < 65536 else np.uint32
    final = _files(d, spec.index)
    tmp = {k: p.with_name(f"{p.name}.tmp-{os.getpid()}") for k, p in final.items()}
    st = dict(train_docs=0, heldout_docs=0, train_bytes=0, heldout_bytes=0, train_tokens=0,
              heldout_tokens=0, last_doc_tokens=0)
    last = ""
    where = f"data.domains.{spec.domain}.path"

    def flush(train: list[str], held: list[str]):
        nonlocal last
        if train:
            ids = toklib.encode_batch(tok, train)
            st["last_doc_tokens"] = len(ids[-1])
            for doc in ids:  # EOS after each document; chain() keeps the loop in C (2x)
                doc.append(eos)
            flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype,
                               count=sum(map(len, ids)))
            fbin.write(flat.tobytes())
            st["train_tokens"] += len(flat)
            last = train[-1]
        if held:
            st["heldout_tokens"] += sum(map(len, toklib.encode_batch(tok, held)))
            fheld.write("".join(json.dumps({"text": h}) + "\n" for h in held))
        if progress is not None:
            s = time.time() - t0
            progress({"key": spec.key, "tokens": st["train_tokens"] + st["heldout_tokens"],
                      "docs": st["train_docs"] + st["heldout_docs"],
                      "bytes": st["train_bytes"] + st["heldout_bytes"], "seconds": round(s, 3),
                      "tokens_per_s": (st["train_tokens"] + st["heldout_tokens"]) / max(s, 1e-9),
                      "approx_bytes": spec.approx_bytes})

    try:
        with open(tmp["bin"], "wb") as fbin, open(tmp["held.jsonl"], "w") as fheld:
            train, held, size = [], [], 0
            split = _load_builtin_split(plan, spec.domain) if spec.kind == "builtin" else None
            docs = shard_documents(cfg, spec, split)
            with reading(where, f"source of shard {spec.key}") if spec.streamed else _nothing():
                for text, is_held in docs:
                    b = len(text.encode("utf-8", "replace"))
                    if is_held:
                        held.append(text)
                        st["heldout_docs"] += 1
                        st["heldout_bytes"] += b
                    else:
                        train.append(text)
                        st["train_docs"] += 1
                        st["train_bytes"] += b
                    size += b
                    if len(train) + len(held) >= CHUNK_DOCS or size >= CHUNK_BYTES:
                        flush(train, held)
                        train, held, size = [], [], 0
            flush(train, held)
        tmp["last.txt"].write_text(last, encoding="utf-8")
        for k in ("bin", "held.jsonl", "last.txt"):
            os.replace(tmp[k], final[k])
    except BaseException:
        for p in tmp.values():
            p.unlink(missing_ok=True)
        raise
    s, cpu = time.time() - t0, time.process_time() - c0
    meta = {"key": spec.key, "fingerprint": spec.fingerprint, "tokenizer_sha": sha,
            "content": content, "dtype": np.dtype(dtype).name, **st,
            "seconds": round(s, 3), "cpu_seconds": round(cpu, 3),
            "tokens_per_s": round((st["train_tokens"] + st["heldout_tokens"]) / max(s, 1e-9)),
            "reused": False}
    _write_text(_meta_path(plan, spec), json.dumps(meta, indent=1))
    _write_text(_key_file(d, content), str(spec.index))
    return meta


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _reuse(cfg: DataConfig, plan: DataPlan, spec: ShardSpec, content: str) -> bool:
    """Link a finished identical shard of a sibling root (another fingerprint of the cache, e.g.
    before one file of the domain changed) into place. True if one was found."""
    here = _shard_dir(plan, spec)
    for key in sorted(plan.root.parent.glob(f"*/shards/{spec.domain}/{content}.key")):
        if key.parent == here:
            continue
        try:
            index = int(key.read_text())
        except (OSError, ValueError):
            continue
        meta_path = key.parent / f"{index:05d}.json"
        meta = _read_meta(meta_path)
        if not _valid(meta, meta_path.parent, index, content):  # overwritten since: stale
            continue
        src, dst = _files(meta_path.parent, index), _files(here, spec.index)
        for k in src:
            tmp = dst[k].with_name(f"{dst[k].name}.tmp-{os.getpid()}")
            tmp.unlink(missing_ok=True)
            try:
                os.link(src[k], tmp)
            except OSError:
                shutil.copyfile(src[k], tmp)
            os.replace(tmp, dst[k])
        meta = {**meta, "key": spec.key, "reused": str(meta_path.parent.parent.parent.name)}
        _write_text(_meta_path(plan, spec), json.dumps(meta, indent=1))
        _write_text(_key_file(here, content), str(spec.index))
        return True
    return False


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- finalize

def finalize(cfg: DataConfig, plan: DataPlan, benchmarks: dict | None = None,
             started: tuple[float, float] | None = None) -> Path:
    """Test suite, stats.json (with the shard index) and COMPLETE, once every shard is done.

    A streamed domain whose documents all fell on the training side gets today's fallback: its
    last training document (the last of its last non-empty shard) moves to held-out; the index
    then uses that shard's file only up to before it. benchmarks: real test set name ->
    samples, if already loaded (prepare_data loads them before writing anything); started:
    (time.time(), time.process_time()) when the whole preparation began, for COMPLETE."""
    root = plan.root
    if (root / COMPLETE).exists():
        return root
    missing = [s.key for s in plan.shards if not shard_done(plan, s)]
    if missing:
        raise RuntimeError(f"{root}: {len(missing)} shard(s) not done, e.g. {missing[:3]}")
    t0 = time.time()
    # temporary files of killed tasks (another pid, maybe another host): every shard is done
    # now, so no task of this plan is still writing one
    for tmp in root.glob("shards/*/*.tmp-*"):
        tmp.unlink(missing_ok=True)
    shutil.rmtree(root / BUILTIN_DIR, ignore_errors=True)  # the shards' input: read by now
    tok = _load_tokenizer(plan)
    metas = {s.key: _read_meta(_meta_path(plan, s)) for s in plan.shards}
    stats: dict = {"domains": {}, "shards": {}}
    held_docs: dict[str, list[str]] = {}
    for name in cfg.domains:
        specs = plan.of_domain(name)
        ms = [metas[s.key] for s in specs]
        dom = {k: sum(m[k] for m in ms) for k in ("train_docs", "heldout_docs", "train_bytes",
                                                  "heldout_bytes", "train_tokens", "heldout_tokens")}
        used = [m["train_tokens"] for m in ms]
        moved = None
        if specs and specs[0].streamed and dom["heldout_docs"] == 0:
            if dom["train_docs"] < 2:
                raise ConfigError(f"data.domains.{name}", f"has {dom['train_docs']} document(s); "
                                  "need >= 2 to split off held-out text")
            k = max(i for i, m in enumerate(ms) if m["train_docs"] > 0)
            moved = (_files(_shard_dir(plan, specs[k]), specs[k].index)["last.txt"]
                     .read_text(encoding="utf-8"))
            used[k] -= ms[k]["last_doc_tokens"] + 1
            b = len(moved.encode("utf-8", "replace"))
            dom.update(train_docs=dom["train_docs"] - 1, heldout_docs=1,
                       train_bytes=dom["train_bytes"] - b, heldout_bytes=b,
                       train_tokens=sum(used), heldout_tokens=ms[k]["last_doc_tokens"])
        if dom["train_docs"] == 0:
            raise ConfigError(f"data.domains.{name}", "has no training document left; lower "
                              "data.heldout_frac or add documents")
        stats["domains"][name] = {**dom, "shards": len(specs)}
        stats["shards"][name] = [[f"shards/{name}/{s.index:05d}.bin", n]
                                 for s, n in zip(specs, used)]
        held_docs[name] = [moved] if moved is not None else _read_held(plan, specs)
    stats["dtype"] = next(iter(metas.values()))["dtype"] if metas else "uint16"
    held_ids = {n: _encode_compact(tok, docs) for n, docs in held_docs.items()}
    if benchmarks is None:
        benchmarks = load_benchmarks(cfg)
    suite = build_suite(cfg, tok, held_docs, held_ids, benchmarks)
    suite.save(root)
    tok_mark = _read_meta(root / TOKENIZER_MARK) or {}
    stats.update(tokenizer_s=tok_mark.get("seconds"),
                 tokenize_s=round(sum(m["seconds"] for m in metas.values()), 2),
                 tokenize_cpu_s=round(sum(m["cpu_seconds"] for m in metas.values()), 2),
                 test_s=round(time.time() - t0, 2), vocab_size=len(tok), eos=tok.eos_token_id,
                 test_samples={n: int((suite.sample_test_set == n).sum())
                               for n in suite.test_sets})
    _write_text(root / "config.json", json.dumps(cfg.to_dict(), indent=1))
    _write_text(root / "stats.json", json.dumps(stats, indent=1))
    t, c = started or (t0, time.process_time())
    # CPU seconds too: wall time on a shared login node says little about the work
    _write_text(root / COMPLETE, json.dumps({"seconds": round(time.time() - t, 2),
                                             "cpu_seconds": round(time.process_time() - c, 2)}))
    return root


def _encode_compact(tok, docs: list[str], chunk: int = 256) -> list[np.ndarray]:
    """Token ids of each document as int32 arrays, encoded a chunk at a time: the tokenizer's
    per-token objects of one chunk at most live at once (encoding 51 MB of held-out text in
    one call peaked at 1.9 GB), and the ids take 4 bytes a token instead of a Python int's 28."""
    out: list[np.ndarray] = []
    for i in range(0, len(docs), chunk):
        out += [np.asarray(ids, dtype=np.int32) for ids in toklib.encode_batch(tok, docs[i:i + chunk])]
    return out


# ----------------------------------------------------------------------------- serial

def prepare_data(cfg: DataConfig, log=print) -> Path:
    """Build the prepared data for `cfg` unless it exists; return its directory: every stage
    serially in this process. Safe to call from many processes at once: one builds, the others
    wait on the lock (`<root>.lock`) and then return.

    Every source is read (the tokenizer's pass, the real benchmarks) before anything is
    written, so a source that cannot be read is a ConfigError that leaves the cache as it was.
    A failed write is an OSError naming the directory; a directory this call created is then
    removed. A directory left by a killed build is resumed: finished shards are kept."""
    plan = plan_preparation(cfg)
    root = plan.root
    if (root / COMPLETE).exists():
        return root
    started = time.time(), time.process_time()
    try:
        tok = scan = None
        if not tokenizer_done(cfg, plan):
            tok, scan = _make_tokenizer(cfg, plan)
        else:  # resuming: the sources are still checked before anything is written
            _scan(cfg, plan, sample=False)
        benchmarks = load_benchmarks(cfg)
        root.parent.mkdir(parents=True, exist_ok=True)
        with open(root.parent / f"{root.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # blocks until the builder (if any) is done
            if (root / COMPLETE).exists():
                return root
            created = not root.exists()
            try:
                build_tokenizer(cfg, plan, tok=tok, scan=scan)
                for spec in plan.shards:
                    if not shard_done(plan, spec):
                        tokenize_shard(cfg, plan, spec)
                finalize(cfg, plan, benchmarks=benchmarks, started=started)
            except BaseException as e:
                # a failed write or source: nothing half-built is left; an interrupt (or a
                # bug) keeps the finished shards for the next call to resume from
                if created and isinstance(e, (OSError, ConfigError)):
                    shutil.rmtree(root, ignore_errors=True)
                if isinstance(e, OSError) and e.filename is None:  # e.g. ENOSPC from a write
                    raise OSError(e.errno, f"{e.strerror} (preparing data)", str(root)) from e
                raise
    finally:
        builtin_split.cache_clear()  # the builtin domains' texts: not needed any more
    log(f"[s2l.data] prepared {root} in {time.time() - started[0]:.1f} s")
    return root


def _read_held(plan: DataPlan, specs: list[ShardSpec]) -> list[str]:
    """The held-out documents of a domain in source order, up to HELDOUT_SUITE_MB of text (the
    test suite takes a few hundred samples; a multi-GB domain's 5 % need not be in memory)."""
    out, total = [], 0
    for s in specs:
        with open(_files(_shard_dir(plan, s), s.index)["held.jsonl"], encoding="utf-8") as f:
            for line in f:
                text = json.loads(line)["text"]
                total += len(text.encode("utf-8", "replace"))
                if total > HELDOUT_SUITE_MB * MB and out:
                    return out
                out.append(text)
    return out


def load_benchmarks(cfg: DataConfig) -> dict:
    """Real test sets (a ConfigError at their key path if unreadable)."""
    out = {}
    for ts in cfg.test_sets:
        if ts.path is not None:  # a real benchmark (synthetic kinds read held-out text)
            from s2l.data.benchmarks import load_benchmark  # lazy: needs `datasets`

            key = "data_files" if ts.data_files else "path"
            with reading(f"test_sets.{ts.name}.{key}", f"{ts.kind} test set {ts.path!r}"):
                out[ts.name] = load_benchmark(ts)
    return out
