"""prepare_data on a small config: determinism, held-out disjointness, loss masks, real
benchmark formats through datasets.load_dataset, and a concurrent build that happens once."""
import json
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest

from s2l.config import Section
from s2l.data import DataConfig, PreparedData, prepare_data

FIX = Path(__file__).parent / "fixtures"
SEQ = 64


def small_config(cache_dir, **data) -> DataConfig:
    d = {"seq_len": SEQ, "tokenizer": {"vocab_size": 512, "train_mb_per_domain": 0.1},
         "cache_dir": str(cache_dir), "max_mb_per_domain": 0.15, "heldout_frac": 0.2,
         "domains": {"scripture": {"source": "builtin", "name": "bible"},
                     "quotes": {"source": "builtin", "name": "fortunes"},
                     "dictionary": {"source": "builtin", "name": "gcide"},
                     "notes": {"source": "files", "path": str(FIX / "domain_notes.jsonl")}},
         **data}
    t = {"heldout": {"kind": "heldout", "samples_per_domain": 5},
         "cloze": {"kind": "cloze", "domain": "scripture", "samples": 20},
         "choice": {"kind": "choice", "domain": "quotes", "samples": 10, "choices": 4},
         "qa": {"kind": "qa", "domain": "dictionary", "samples": 20},
         "lambada": {"kind": "lambada", "path": "json", "split": "train",
                     "data_files": str(FIX / "lambada_openai.jsonl")},
         "hellaswag": {"kind": "hellaswag", "path": "json", "split": "train",
                       "data_files": str(FIX / "hellaswag.jsonl")},
         "squad": {"kind": "squad", "split": "train", "data_files": str(FIX / "squad.jsonl")},
         "trivia_qa": {"kind": "trivia_qa", "path": "parquet", "split": "train",
                       "data_files": str(FIX / "trivia_qa.parquet")}}
    return DataConfig.from_sections(Section(d, "data"), Section(t, "test_sets"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    cfg = small_config(tmp_path_factory.mktemp("cache"))
    return cfg, PreparedData.load(prepare_data(cfg))


def targets(data, name):
    """Decoded masked tokens of every row of a test set, and the rows' (sample, choice)."""
    d = data[1]
    s = d.test
    rows = np.flatnonzero(np.isin(s.row_sample, s.samples_of(name)))
    return [d.tokenizer.decode(s.tokens[r][s.loss_mask[r]]) for r in rows], rows


def test_layout_and_dtypes(data):
    cfg, d = data
    assert d.domains == cfg.domains and d.vocab_size == len(d.tokenizer) <= 512
    for name, arr in d.train.items():
        assert arr.dtype == np.uint16 and arr.ndim == 1 and len(arr) > 1000
        assert (arr == d.tokenizer.eos_token_id).sum() == d.stats["domains"][name]["train_docs"]
    s = d.test
    R, L = s.tokens.shape
    assert L == SEQ + 1 and s.tokens.dtype == np.int32 and s.loss_mask.shape == (R, L)
    assert not s.loss_mask[:, 0].any() and s.loss_mask.any(axis=1).all()
    assert s.test_sets == [f"heldout-{x}" for x in cfg.domains] + [
        "cloze", "choice", "qa", "lambada", "hellaswag", "squad", "trivia_qa"]
    # samples of a set are contiguous and in suite order; rows follow samples
    order = [s.test_sets.index(t) for t in s.sample_test_set]
    assert order == sorted(order) and (np.diff(s.row_sample) >= 0).all()
    assert set(s.row_sample) == set(range(s.n_samples))
    assert s.chance == {"choice": 0.25, "hellaswag": 0.25}
    mc = np.isin(s.sample_test_set, ["choice", "hellaswag"])
    assert (s.answer[~mc] == -1).all() and ((s.answer[mc] >= 0) & (s.answer[mc] < 4)).all()
    assert (s.row_choice[~np.isin(s.row_sample, np.flatnonzero(mc))] == 0).all()


def test_heldout_masks_every_real_token_after_the_first(data):
    s = data[1].test
    rows = np.flatnonzero(np.char.startswith(s.sample_test_set[s.row_sample], "heldout-"))
    assert len(rows) == 5 * len(data[0].domains)
    assert s.loss_mask[rows, 1:].all()  # windows are full: no padding


def test_heldout_text_is_not_in_training_data(data):
    d = data[1]
    s = d.test
    for name in data[0].domains:
        stream = d.train[name].tobytes()
        for r in np.flatnonzero(s.sample_test_set[s.row_sample] == f"heldout-{name}"):
            window = s.tokens[r, 1:41].astype(np.uint16).tobytes()  # 40 tokens
            assert stream.find(window) == -1, (name, d.tokenizer.decode(s.tokens[r]))


def test_cloze_mask_is_the_final_word(data):
    d = data[1]
    texts, rows = targets(data, "cloze")
    assert len(texts) == 20
    for t, r in zip(texts, rows):
        assert t.startswith(" ") and t[1:].isalpha() and len(t) >= 4, t
        full = d.tokenizer.decode(d.test.tokens[r][: d.test.loss_mask[r].nonzero()[0][-1] + 1])
        assert full.endswith(t) and len(full) > len(t) + 20


def test_qa_mask_is_the_answer(data):
    d = data[1]
    texts, rows = targets(data, "qa")
    assert len(texts) == 20
    for t, r in zip(texts, rows):
        prompt = d.tokenizer.decode(d.test.tokens[r][~d.test.loss_mask[r]])
        assert "What does" in prompt and "mean?\nA:" in prompt and len(t.split()) >= 3
    for name, want in [("squad", [" France", " Rollo"]),
                       ("trivia_qa", [" Mars", " William Shakespeare"]),
                       ("lambada", [" harbor", " brother", " sonata"])]:
        assert targets(data, name)[0] == want


def test_choice_masks_are_the_endings(data):
    d = data[1]
    s = d.test
    texts, rows = targets(data, "hellaswag")
    fx = [json.loads(x) for x in (FIX / "hellaswag.jsonl").read_text().splitlines()]
    want = [" " + e for row in fx for e in row["endings"]]
    # at seq_len 64 a long ending is cut to fit (keeping its start); the short ones are whole
    assert all(w.startswith(t) and len(t) > 10 for t, w in zip(texts, want))
    assert sum(t == w for t, w in zip(texts, want)) >= 6
    samples = s.samples_of("hellaswag")
    assert list(s.answer[samples]) == [int(row["label"]) for row in fx]
    # every choice row of a sample has the same prompt
    texts, rows = targets(data, "choice")
    assert len(rows) == 40
    for k in s.samples_of("choice"):
        rs = np.flatnonzero(s.row_sample == k)
        assert list(s.row_choice[rs]) == [0, 1, 2, 3]
        prompts = {tuple(s.tokens[r][~s.loss_mask[r]][:s.loss_mask[r].argmax()]) for r in rs}
        assert len(prompts) == 1
        endings = [d.tokenizer.decode(s.tokens[r][s.loss_mask[r]]) for r in rs]
        assert len(set(endings)) == 4


def test_prepare_is_deterministic_and_idempotent(data, tmp_path):
    cfg, d = data
    assert prepare_data(cfg) == d.path  # cached: same dir, no rebuild
    other = PreparedData.load(prepare_data(small_config(tmp_path)))
    for k in ("tokens", "loss_mask", "row_sample", "row_choice", "answer", "sample_test_set"):
        assert np.array_equal(getattr(other.test, k), getattr(d.test, k)), k
    for name in d.domains:
        assert np.array_equal(other.train[name], d.train[name])
    assert ((other.path / "tokenizer" / "tokenizer.json").read_text()
            == (d.path / "tokenizer" / "tokenizer.json").read_text())


def _prepare_in_child(cache_dir, log_file):
    def log(msg):
        with open(log_file, "a") as f:
            f.write(msg + "\n")
    print(prepare_data(small_config(cache_dir), log=log))


def test_concurrent_prepare_builds_once(tmp_path):
    ctx = mp.get_context("spawn")
    log = tmp_path / "log.txt"
    procs = [ctx.Process(target=_prepare_in_child, args=(tmp_path / "c", log)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    assert log.read_text().count("prepared") == 1
    entries = sorted(os.listdir(tmp_path / "c"))
    fp = small_config(tmp_path / "c").fingerprint()
    assert entries == [fp, f"{fp}.lock"]  # no leftover temporary directory
    PreparedData.load(tmp_path / "c" / fp)


def test_pretrained_tokenizer_from_a_directory(data, tmp_path):
    # a named tokenizer goes through AutoTokenizer.from_pretrained; a local dir keeps it offline
    cfg = small_config(tmp_path, tokenizer={"pretrained": str(data[1].path / "tokenizer")})
    assert cfg.fingerprint() != data[0].fingerprint()
    d = PreparedData.load(prepare_data(cfg))
    assert d.tokenizer.get_vocab() == data[1].tokenizer.get_vocab()
    for name in d.domains:  # same tokenizer, same split -> same token streams
        assert np.array_equal(d.train[name], data[1].train[name])
