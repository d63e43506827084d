"""Sharded preparation (s2l.data.shards): shard outputs against a brute-force tokenization,
resume after a kill, per-shard invalidation, the concatenated view, the bounded tokenizer
sample, and every streamed source kind (JSON lines by byte range, parquet, text, hub builder).

Brute force here = read the documents with datasets.load_dataset (or the builtin extractor),
split them with split_documents (today's rule), tokenize each document with the tokenizer's
Python call and concatenate with EOS: what prepare_data produced before sharding."""
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest

from s2l.config import ConfigError, Section
from s2l.data import DataConfig, PreparedData, prepare_data
from s2l.data import shards as sh
from s2l.data.cache import split_documents
from s2l.data.corpus import MB, cap_documents
from s2l.data.sources import domain_documents
from s2l.data.tokenizer import TokenIds, encode_batch, load, train_bpe
from s2l.data.tokens import ConcatTokens, open_stream

WORDS = ("alpha beta gamma delta river stone cloud seven apple orange quiet loud north south "
         "market window engine paper silver garden winter summer bridge candle").split()
TESTS = {"heldout": {"kind": "heldout", "samples_per_domain": 3}}


def docs_text(n: int, seed: int, words=(20, 120)) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"Doc {seed}-{i}: " + " ".join(rng.choice(WORDS, rng.integers(*words)))
            + ("." if i % 3 else "\nSecond line, with ünïcode é.")
            for i in range(n)]


def write_jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d, "n": i}) + "\n" for i, d in enumerate(docs)))
    return path


def config(cache, domains, tests=None, **data) -> DataConfig:
    d = {"seq_len": 16, "tokenizer": {"vocab_size": 300, "train_mb_per_domain": 0.02},
         "cache_dir": str(cache), "heldout_frac": 0.1, "domains": domains, **data}
    return DataConfig.from_sections(Section(d, "data"), Section(tests or TESTS, "test_sets"))


def brute_stream(tok, docs: list[str], name: str, frac: float) -> np.ndarray:
    train, _ = split_documents(docs, frac, name)
    ids = tok(train, add_special_tokens=False)["input_ids"]
    return np.array([t for d in ids for t in (*d, tok.eos_token_id)], dtype=np.int64)


def concat_files(root: Path, name: str) -> bytes:
    return b"".join(p.read_bytes() for p in sorted((root / "shards" / name).glob("*.bin")))


def run_stages(cfg, plan=None, progress=None):
    plan = plan or sh.plan_preparation(cfg)
    sh.build_tokenizer(cfg, plan)
    out = {}
    for spec in plan.shards:
        if not sh.shard_done(plan, spec):
            out[spec.key] = sh.tokenize_shard(cfg, plan, spec, progress=progress)
    sh.finalize(cfg, plan)
    return plan, out


# ------------------------------------------------------------------------ the concatenated view

def test_concat_view_matches_numpy_concatenate(tmp_path):
    rng = np.random.default_rng(0)
    sizes = [5, 1, 37, 12, 64]
    parts = []
    for i, n in enumerate(sizes):
        rng.integers(0, 60000, n).astype(np.uint16).tofile(tmp_path / f"{i}.bin")
        parts.append((tmp_path / f"{i}.bin", n))
    parts.append((tmp_path / "empty.bin", 0))  # an empty shard is skipped
    (tmp_path / "empty.bin").write_bytes(b"")
    view = open_stream(parts, "uint16")
    want = np.concatenate([np.fromfile(p, np.uint16) for p, n in parts if n])
    assert isinstance(view, ConcatTokens) and len(view) == len(want) == sum(sizes)
    for _ in range(500):
        a = int(rng.integers(0, len(want)))
        b = int(rng.integers(a, len(want) + 3))
        got = view[a:b]
        assert got.ndim == 1 and np.array_equal(got, want[a:b]), (a, b)
    assert np.array_equal(view[-7:], want[-7:]) and view[40:40].size == 0
    assert all(view[i] == want[i] for i in (0, 5, 6, 42, -1))
    assert view.tobytes() == want.tobytes() and np.array_equal(np.asarray(view), want)
    with pytest.raises(IndexError):
        view[len(want)]
    # one shard: the plain memmap, as before sharding
    one = open_stream(parts[:1], "uint16")
    assert isinstance(one, np.memmap) and np.array_equal(one, want[:5])
    # a shard used only up to a point (the tiny-domain fallback)
    assert np.array_equal(open_stream([(tmp_path / "2.bin", 10)], "uint16"), want[6:16])


def test_mixture_sampler_windows_cross_shards_deterministically(tmp_path):
    from s2l.data import MixtureSampler

    rng = np.random.default_rng(1)
    full = rng.integers(0, 500, 1000).astype(np.uint16)
    cuts = [0, 300, 301, 650, 1000]
    parts = []
    for i in range(4):
        full[cuts[i]:cuts[i + 1]].tofile(tmp_path / f"{i}.bin")
        parts.append((tmp_path / f"{i}.bin", cuts[i + 1] - cuts[i]))
    other = rng.integers(0, 500, 400).astype(np.uint16)
    a = MixtureSampler({"x": full, "y": other}, {"x": 2, "y": 1}, 31, seed=3)
    b = MixtureSampler({"x": open_stream(parts, "uint16"), "y": other}, {"x": 2, "y": 1}, 31, 3)
    for step in range(20):
        assert np.array_equal(a.batch(step, 16), b.batch(step, 16))


# ------------------------------------------------------------------------ builtin domains

BUILTIN = {"quotes": {"source": "builtin", "name": "fortunes"},
           "glossary": {"source": "builtin", "name": "foldoc"}}


@pytest.fixture(scope="module")
def builtin_pair(tmp_path_factory):
    """The same builtin config prepared as 1 shard per domain and as 4 shards per domain."""
    base = tmp_path_factory.mktemp("b")
    one = config(base / "one", BUILTIN, max_mb_per_domain=0.2)
    many = config(base / "many", BUILTIN, max_mb_per_domain=0.2, shard_mb=0.05)
    assert one.fingerprint() == many.fingerprint()  # the shard size does not change the data
    return one, PreparedData.load(prepare_data(one)), many, PreparedData.load(prepare_data(many))


def test_shard_workers_bare_tokenizer_gives_the_ids_of_the_transformers_one(tmp_path):
    train_bpe(docs_text(200, 3), 300).save_pretrained(str(tmp_path / "tok"))
    full, bare = load(tmp_path / "tok"), TokenIds(tmp_path / "tok")
    texts = docs_text(50, 4, words=(0, 40)) + ["", " ", "  leading", "tab\tand\nnewline",
                                                "<|endoftext|> inside", "emoji 🙂 日本語", "x" * 500]
    assert encode_batch(bare, texts) == encode_batch(full, texts)
    assert encode_batch(full, texts) == [full(t, add_special_tokens=False)["input_ids"]
                                         for t in texts]
    assert bare.eos_token_id == full.eos_token_id and len(bare) == len(full) == 300
    cfg = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    (tmp_path / "tok" / "tokenizer_config.json").write_text(json.dumps({**cfg, "eos_token": None}))
    with pytest.raises(ValueError, match="eos_token"):
        TokenIds(tmp_path / "tok")


def test_builtin_shards_equal_todays_algorithm(builtin_pair, tmp_path):
    one, d1, many, d4 = builtin_pair
    plan = sh.plan_preparation(many)
    assert [s.key for s in plan.shards] == [f"{n}/{i:05d}" for n in BUILTIN for i in range(4)]
    # the tokenizer: today's sample (cap_documents of each domain's train split), recomputed
    split = {n: split_documents(domain_documents(many, many.domain(n)), many.heldout_frac, n)
             for n in BUILTIN}
    sample = [d for n in BUILTIN for d in cap_documents(split[n][0], int(0.02 * MB), "tok")]
    train_bpe(sample, 300).save_pretrained(str(tmp_path / "tok"))
    assert ((d4.path / "tokenizer" / "tokenizer.json").read_bytes()
            == (tmp_path / "tok" / "tokenizer.json").read_bytes()
            == (d1.path / "tokenizer" / "tokenizer.json").read_bytes())
    for n in BUILTIN:
        docs = domain_documents(many, many.domain(n))
        want = brute_stream(d4.tokenizer, docs, n, many.heldout_frac)
        assert isinstance(d4.train[n], ConcatTokens) and len(d4.train[n].parts) == 4
        assert isinstance(d1.train[n], np.memmap)
        assert np.array_equal(np.asarray(d4.train[n]), want)
        assert concat_files(d4.path, n) == concat_files(d1.path, n) == want.astype(np.uint16).tobytes()
        st = d4.stats["domains"][n]
        assert st["train_docs"] == len(split[n][0]) and st["heldout_docs"] == len(split[n][1])
        assert st["train_tokens"] == len(want)
    for k in ("tokens", "loss_mask", "row_sample", "sample_test_set"):
        assert np.array_equal(getattr(d1.test, k), getattr(d4.test, k)), k
    assert (d1.path / "test.npz").read_bytes() == (d4.path / "test.npz").read_bytes()


def test_shard_tasks_read_the_tokenizer_tasks_split_instead_of_extracting(
        builtin_pair, monkeypatch, tmp_path):
    """Stages as separate processes run them: the shard tasks of builtin domains take the
    documents the tokenizer's pass saved (the extractor is never called), their outputs are
    the serial build's byte for byte, a missing or damaged saved split falls back to the
    extractor, and finalize removes the saved splits."""
    from s2l.data import corpus, streams

    _, _, many, d4 = builtin_pair
    cfg = config(tmp_path, BUILTIN, max_mb_per_domain=0.2, shard_mb=0.05)
    plan = sh.plan_preparation(cfg)
    sh.build_tokenizer(cfg, plan)
    assert sorted(p.name for p in (plan.root / sh.BUILTIN_DIR).iterdir()) == [
        "glossary.json", "quotes.json"]
    (plan.root / sh.BUILTIN_DIR / "glossary.json").write_text('{"docs": ["x"], "held": []}')
    streams.builtin_split.cache_clear()  # a new process: nothing extracted yet
    real = dict(corpus.BUILTINS)

    def boom():
        raise AssertionError("a shard task extracted a source whose split was saved")
    monkeypatch.setitem(corpus.BUILTINS, "fortunes", boom)
    monkeypatch.setitem(corpus.BUILTINS, "foldoc", boom)
    for spec in plan.shards:
        if spec.domain == "glossary":  # damaged file: extracted again, the result the same
            monkeypatch.setitem(corpus.BUILTINS, "foldoc", real["foldoc"])
        sh.tokenize_shard(cfg, plan, spec)
    sh.finalize(cfg, plan)
    assert not (plan.root / sh.BUILTIN_DIR).exists()
    for n in BUILTIN:
        assert concat_files(plan.root, n) == concat_files(d4.path, n)
    assert (plan.root / "test.npz").read_bytes() == (d4.path / "test.npz").read_bytes()


def test_plan_reads_no_builtin_text(monkeypatch, tmp_path):
    from s2l.data import corpus

    def boom():
        raise AssertionError("the plan must not extract documents")
    monkeypatch.setitem(corpus.BUILTINS, "fortunes", boom)
    cfg = config(tmp_path, {"quotes": BUILTIN["quotes"]}, max_mb_per_domain=1, shard_mb=0.3)
    plan = sh.plan_preparation(cfg)
    assert [s.index for s in plan.shards] == [0, 1, 2, 3] and plan.root.name == cfg.fingerprint()
    assert not plan.root.exists()
    back = sh.DataPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert back == plan and len({s.fingerprint for s in plan.shards}) == 4


# ------------------------------------------------------------------------ streamed sources

@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("src")
    a, b = docs_text(400, 1), docs_text(250, 2)
    write_jsonl(d / "a.jsonl", a)
    write_jsonl(d / "b.jsonl", b)
    return d, a + b


def test_jsonl_byte_ranges_equal_a_brute_force_tokenization(corpus_files, tmp_path):
    d, docs = corpus_files
    cfg = config(tmp_path, {"notes": {"source": "files", "path": str(d / "*.jsonl")}},
                 shard_mb=0.02)
    plan = sh.plan_preparation(cfg)
    sizes = [os.path.getsize(d / "a.jsonl"), os.path.getsize(d / "b.jsonl")]
    assert {s.kind for s in plan.shards} == {"jsonl"} and len(plan.shards) >= 6
    # ranges tile each file
    for f, size in zip(("a.jsonl", "b.jsonl"), sizes):
        rs = [(s.start, s.end) for s in plan.shards if s.file.endswith(f)]
        assert rs[0][0] == 0 and rs[-1][1] == size and all(x[1] == y[0] for x, y in zip(rs, rs[1:]))
    seen = []
    plan, metas = run_stages(cfg, plan, progress=seen.append)
    data = PreparedData.load(plan.root)
    import datasets
    rows = datasets.load_dataset("json", data_files=sorted(map(str, d.glob("*.jsonl"))),
                                 split="train")["text"]
    assert rows == docs
    want = brute_stream(data.tokenizer, docs, "notes", cfg.heldout_frac)
    assert np.array_equal(np.asarray(data.train["notes"]), want)
    assert sum(m["train_docs"] + m["heldout_docs"] for m in metas.values()) == len(docs)
    assert seen and all(p["tokens"] > 0 and p["tokens_per_s"] > 0 for p in seen)
    # the held-out documents are exactly today's held-out split, in order
    held = [json.loads(x)["text"] for s in plan.shards for x in
            (plan.root / "shards" / "notes" / f"{s.index:05d}.held.jsonl").read_text().splitlines()]
    assert held == split_documents(docs, cfg.heldout_frac, "notes")[1] and held
    # and the same prepared data comes out of one shard per file (shard size is not data)
    one = config(tmp_path / "one", {"notes": {"source": "files", "path": str(d / "*.jsonl")}})
    assert len(sh.plan_preparation(one).shards) == 2
    other = PreparedData.load(prepare_data(one))
    assert other.path.name == data.path.name
    assert np.array_equal(np.asarray(other.train["notes"]), want)
    assert (other.path / "test.npz").read_bytes() == (data.path / "test.npz").read_bytes()


def test_parquet_text_and_hub_builder_sources(corpus_files, tmp_path):
    import datasets

    d, docs = corpus_files
    docs = docs[:120]
    pq = tmp_path / "pq"
    pq.mkdir()
    datasets.Dataset.from_dict({"body": docs[:70]}).to_parquet(str(pq / "0.parquet"))
    datasets.Dataset.from_dict({"body": docs[70:]}).to_parquet(str(pq / "1.parquet"))
    txt = tmp_path / "txt"
    txt.mkdir()
    for i, t in enumerate(docs[:30]):
        (txt / f"{i:03d}.txt").write_text(t)
    hub = write_jsonl(tmp_path / "hub.jsonl", docs)
    cfg = config(tmp_path / "c", {
        "pq": {"source": "files", "path": str(pq / "*.parquet"), "format": "parquet",
               "text_field": "body"},
        "tx": {"source": "files", "path": str(txt / "*.txt"), "format": "text"},
        "hb": {"source": "hub", "path": "json", "split": "train", "data_files": str(hub)}},
        max_mb_per_domain=0.5)
    plan = sh.plan_preparation(cfg)
    assert [s.kind for s in plan.shards] == ["file"] * 32 + ["hub"]
    data = PreparedData.load(prepare_data(cfg))
    for name, ds in (("pq", docs), ("tx", docs[:30]), ("hb", docs)):
        want = brute_stream(data.tokenizer, ds, name, cfg.heldout_frac)
        assert np.array_equal(np.asarray(data.train[name]), want), name
    # the hub cap: documents in order until max_mb_per_domain (today's rule)
    capped = config(tmp_path / "cap", {"hb": {"source": "hub", "path": "json", "split": "train",
                                              "data_files": str(hub)}}, max_mb_per_domain=0.005)
    spec = sh.plan_preparation(capped).shards[0]
    got = [t for t, _ in sh.shard_documents(capped, spec)]
    assert got == domain_documents(capped, capped.domain("hb")) and 2 < len(got) < 120


def test_hub_split_into_shards_by_files(corpus_files, tmp_path):
    d, docs = corpus_files
    cfg = config(tmp_path, {"hb": {"source": "hub", "path": "json", "split": "train",
                                   "data_files": str(d / "*.jsonl")}},
                 max_mb_per_domain=0.2, shard_mb=0.05)
    plan = sh.plan_preparation(cfg)
    assert len(plan.shards) == 2  # no more shards than the split has files
    got = [t for s in plan.shards for t, _ in sh.shard_documents(cfg, s)]
    # each shard takes its file in order up to max_mb / 2
    a = [t for t, _ in sh.shard_documents(cfg, plan.shards[0])]
    assert got[:len(a)] == docs[:len(a)] and 0 < len(a) < 400
    assert sum(len(t.encode()) for t in a[:-1]) < 0.1 * MB <= sum(len(t.encode()) for t in a)


# ------------------------------------------------------------------------ resume and invalidation

def test_resume_after_a_kill_redoes_only_that_shard(corpus_files, tmp_path):
    d, docs = corpus_files
    cfg = config(tmp_path / "a", {"notes": {"source": "files", "path": str(d / "*.jsonl")}},
                 shard_mb=0.03)
    clean, _ = run_stages(cfg)
    want = concat_files(clean.root, "notes")

    cfg2 = dataclasses.replace(cfg, cache_dir=str(tmp_path / "b"))
    plan = sh.plan_preparation(cfg2)
    sh.build_tokenizer(cfg2, plan)
    victim = plan.shards[2]

    class Killed(Exception):
        pass

    def die(p):
        raise Killed  # mid-shard, after its first chunk is written to the temporary file

    for spec in plan.shards:
        if spec is victim:
            with pytest.raises(Killed):
                sh.tokenize_shard(cfg2, plan, spec, progress=die)
        else:
            sh.tokenize_shard(cfg2, plan, spec)
    assert not sh.shard_done(plan, victim)
    assert not list((plan.root / "shards" / "notes").glob("*.tmp-*"))
    # a SIGKILLed task leaves a temporary file and no .json: never taken as done
    other = plan.shards[4]
    (plan.root / "shards" / "notes" / f"{other.index:05d}.json").unlink()
    (plan.root / "shards" / "notes" / f"{other.index:05d}.bin.tmp-999").write_bytes(b"\0" * 10)
    with pytest.raises(RuntimeError, match="2 shard"):
        sh.finalize(cfg2, plan)
    todo = [s.key for s in plan.shards if not sh.shard_done(plan, s)]
    assert todo == sorted([victim.key, other.key])
    metas = {s.key: plan.root / "shards" / "notes" / f"{s.index:05d}.json" for s in plan.shards}
    before = {k: p.stat().st_mtime_ns for k, p in metas.items() if p.exists()}
    assert prepare_data(cfg2) == plan.root  # the serial path resumes the same directory
    redone = sorted(k for k, p in metas.items() if p.stat().st_mtime_ns != before.get(k))
    assert redone == todo
    assert not any(json.loads(metas[k].read_text())["reused"] for k in redone)
    assert not list((plan.root / "shards" / "notes").glob("*.tmp-*"))
    assert concat_files(plan.root, "notes") == want
    assert all(sh.shard_done(plan, s) for s in plan.shards)
    a, b = PreparedData.load(clean.root), PreparedData.load(plan.root)
    assert np.array_equal(a.test.tokens, b.test.tokens)


def test_changed_file_invalidates_only_its_shards(corpus_files, tmp_path, builtin_pair):
    d, docs = corpus_files
    src = tmp_path / "src"
    src.mkdir()
    write_jsonl(src / "a.jsonl", docs[:400])
    write_jsonl(src / "b.jsonl", docs[400:])
    tok_dir = str(builtin_pair[1].path / "tokenizer")  # a fixed (pretrained) tokenizer
    dom = {"notes": {"source": "files", "path": str(src / "*.jsonl")}}
    cfg = config(tmp_path / "c", dom, tokenizer={"pretrained": tok_dir}, shard_mb=0.03)
    plan1, first = run_stages(cfg)
    n_a = sum(1 for s in plan1.shards if s.file.endswith("a.jsonl"))

    # the first file grows by a shard: the second file's shards move to other indices
    extra = docs_text(60, 7)
    write_jsonl(src / "a.jsonl", docs[:400] + extra)
    cfg2 = config(tmp_path / "c", dom, tokenizer={"pretrained": tok_dir}, shard_mb=0.03)
    plan2, second = run_stages(cfg2)
    assert plan2.root != plan1.root  # the edited file gives a new directory
    assert sum(1 for s in plan2.shards if s.file.endswith("a.jsonl")) == n_a + 1
    reused = sorted(k for k, m in second.items() if m["reused"])
    redone = sorted(k for k, m in second.items() if not m["reused"])
    assert redone == [s.key for s in plan2.shards if s.file.endswith("a.jsonl")]
    assert reused == [s.key for s in plan2.shards if s.file.endswith("b.jsonl")] and reused
    data = PreparedData.load(plan2.root)
    want = brute_stream(data.tokenizer, docs[:400] + extra + docs[400:], "notes",
                        cfg.heldout_frac)
    assert np.array_equal(np.asarray(data.train["notes"]), want)
    # the reused files are hard links of the old ones (no copy, no re-tokenization)
    old_b = [s for s in plan1.shards if s.file.endswith("b.jsonl")]
    new_b = [s for s in plan2.shards if s.file.endswith("b.jsonl")]
    assert [s.fingerprint for s in old_b] == [s.fingerprint for s in new_b]
    for o, n in zip(old_b, new_b):
        assert o.index != n.index and os.path.samefile(
            plan1.root / f"shards/notes/{o.index:05d}.bin", plan2.root / f"shards/notes/{n.index:05d}.bin")


# ------------------------------------------------------------------------ sample, fallback, errors

def test_streamed_tokenizer_sample_is_bounded_and_deterministic(corpus_files, tmp_path):
    d, docs = corpus_files
    dom = {"notes": {"source": "files", "path": str(d / "*.jsonl")}}
    cfgs = [config(tmp_path, dom, shard_mb=mb) for mb in (0.01, 1.0)]
    scans = [sh._scan(c, sh.plan_preparation(c), sample=True) for c in cfgs]
    assert scans[0].sample == scans[1].sample  # independent of the shard layout
    budget = 0.02 * MB
    total = sum(len(t.encode()) for t in scans[0].sample)
    assert 0.9 * budget < total <= budget
    train = split_documents(docs, 0.1, "notes")[0]
    assert set(scans[0].sample) <= set(train)
    # the lowest-hash prefix: every document not taken has a larger key than all taken
    from s2l.data.corpus import doc_key
    keys = sorted(doc_key(t, "tok") for t in train)
    taken = sorted(doc_key(t, "tok") for t in scans[0].sample)
    assert taken == keys[:len(taken)]
    # a domain that fits the budget whole: today's sample exactly (cap_documents)
    small = config(tmp_path, dom, tokenizer={"vocab_size": 300, "train_mb_per_domain": 2})
    s = sh._scan(small, sh.plan_preparation(small), sample=True)
    assert s.sample == cap_documents(train, 2 * MB, "tok") == train


def test_tiny_streamed_domain_gets_todays_fallback(tmp_path):
    docs = ["first tiny document here", "second tiny document", "third and last one"]
    f = write_jsonl(tmp_path / "tiny.jsonl", docs)
    cfg = config(tmp_path / "c", {"t": {"source": "files", "path": str(f)},
                                  "q": BUILTIN["quotes"]},
                 heldout_frac=0.001, max_mb_per_domain=0.05)
    data = PreparedData.load(prepare_data(cfg))
    train, held = split_documents(docs, 0.001, "t")
    assert held == [docs[-1]]  # nothing hashed to held-out: the last document moved
    want = brute_stream(data.tokenizer, docs, "t", 0.001)
    assert np.array_equal(np.asarray(data.train["t"]), want)
    assert data.stats["domains"]["t"]["heldout_docs"] == 1
    assert data.stats["domains"]["t"]["train_docs"] == 2
    # all documents held out: refused, naming the domain
    bad = config(tmp_path / "d", {"t": {"source": "files", "path": str(f)}}, heldout_frac=0.999)
    with pytest.raises(ConfigError, match="data.domains.t: all 3 documents"):
        prepare_data(bad)
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())


def test_malformed_line_is_a_config_error_and_writes_nothing(corpus_files, tmp_path):
    d, docs = corpus_files
    src = tmp_path / "src"
    src.mkdir()
    write_jsonl(src / "a.jsonl", docs[:300])
    with open(src / "a.jsonl", "a") as fh:
        fh.write('{"text": unquoted\n')
    cache = tmp_path / "cache"
    cfg = config(cache, {"notes": {"source": "files", "path": str(src / "*.jsonl")}},
                 shard_mb=0.02)
    with pytest.raises(ConfigError, match=r"data\.domains\.notes\.path: cannot read"):
        prepare_data(cfg)
    assert not cache.exists() or not any(cache.iterdir())
    # the shard task itself names the key too
    cfg_ok = config(cache, {"notes": {"source": "files", "path": str(src / "*.jsonl")}},
                    tokenizer={"pretrained": str(Path(__file__).parent / "missing")})
    plan = sh.plan_preparation(cfg_ok)
    with pytest.raises(ConfigError, match="data.tokenizer.pretrained"):
        sh.build_tokenizer(cfg_ok, plan)


def test_shard_task_names_the_key_of_a_bad_row(tmp_path, builtin_pair):
    f = tmp_path / "x.jsonl"
    f.write_text('{"text": "a fine document"}\n{"text": "another fine one"}\n[1, 2]\n')
    cfg = config(tmp_path / "c", {"x": {"source": "files", "path": str(f)}},
                 tokenizer={"pretrained": str(builtin_pair[1].path / "tokenizer")})
    plan = sh.plan_preparation(cfg)
    plan.root.mkdir(parents=True)
    tok = builtin_pair[1].tokenizer
    sh.build_tokenizer(cfg, plan, tok=tok)
    with pytest.raises(ConfigError, match=r"data\.domains\.x\.path: cannot read .*object"):
        sh.tokenize_shard(cfg, plan, plan.shards[0])
    assert not list(plan.root.glob("shards/x/*"))


@pytest.mark.parametrize("fmt", ["json", "parquet"])
def test_missing_text_field_is_a_config_error_naming_it(tmp_path, fmt):
    import datasets

    rows = {"body": ["one document", "another document", "a third one"]}
    f = tmp_path / f"x.{'jsonl' if fmt == 'json' else 'parquet'}"
    if fmt == "json":
        write_jsonl(f, rows["body"])  # its field is "text"; the config asks for "body"
    else:
        datasets.Dataset.from_dict({"text": rows["body"]}).to_parquet(str(f))
    cfg = config(tmp_path / "c", {"x": {"source": "files", "path": str(f), "format": fmt,
                                        "text_field": "body"}})
    with pytest.raises(ConfigError, match=r"data\.domains\.x\.path: .*no field 'body'.*text_field"):
        prepare_data(cfg)
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())
