"""DataConfig: defaults, fingerprint, and errors that name the key path."""
import json

import pytest

from s2l.config import ConfigError, Section
from s2l.data import DataConfig


def parse(data=None, test_sets=None) -> DataConfig:
    return DataConfig.from_sections(Section(data, "data"), Section(test_sets, "test_sets"))


def test_defaults_are_the_builtin_corpus():
    cfg = parse()
    assert len(cfg.domains) >= 6
    assert {d.source for d in cfg.domain_configs} == {"builtin"}
    assert len({d.builtin for d in cfg.domain_configs}) == len(cfg.domains)
    names = cfg.test_set_names()
    assert [f"heldout-{d}" for d in cfg.domains] == names[:len(cfg.domains)]
    assert {"cloze", "choice", "qa"} <= set(names)
    json.dumps(cfg.to_dict())  # JSON-able


def test_fingerprint_stable_and_sensitive():
    assert parse().fingerprint() == parse().fingerprint() == DataConfig.default().fingerprint()
    assert parse({"seq_len": 64}).fingerprint() != parse().fingerprint()
    assert parse({"tokenizer": {"vocab_size": 4096}}).fingerprint() != parse().fingerprint()
    # where the cache lives does not change what is in it
    assert parse({"cache_dir": "/elsewhere"}).fingerprint() == parse().fingerprint()


def test_user_domains_and_files(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "x"}\n')
    cfg = parse({"domains": {"code": {"source": "builtin", "name": "python"},
                             "mine": {"source": "files", "path": str(tmp_path / "*.jsonl")},
                             "wiki": {"source": "hub", "path": "wikitext",
                                      "config": "wikitext-103-raw-v1"}}},
                {"cloze": {"kind": "cloze", "domain": "mine"}})
    assert cfg.domains == ["code", "mine", "wiki"]
    assert cfg.domain("mine").data_files == (str(tmp_path / "a.jsonl"),)
    assert cfg.test_set_names() == ["cloze"]


BAD = [
    ({"domains": {"code": {"source": "ftp"}}}, None, "data.domains.code.source",
     "must be one of ['builtin', 'hub', 'files']"),
    ({"domains": {"code": {"source": "builtin", "name": "cobol"}}}, None,
     "data.domains.code.name", "must be one of"),
    ({"domains": {"bad name!": {"source": "builtin", "name": "python"}}}, None,
     "data.domains.bad name!", "letters, digits"),
    ({"domains": {"x": {"source": "files", "path": "/nonexistent/*.jsonl"}}}, None,
     "data.domains.x.path", "matches no file"),
    ({"domains": {"x": {"source": "files", "path": "a", "format": "xml"}}}, None,
     "data.domains.x.format", "must be one of"),
    ({"domains": {"x": {"source": "hub"}}}, None, "data.domains.x.path", "is required"),
    ({"domains": {"x": {"source": "builtin", "name": "python", "colour": 1}}}, None,
     "data.domains.x.colour", "unknown key"),
    ({"seq_len": 0}, None, "data.seq_len", "must be > 0"),
    ({"seq_len": "long"}, None, "data.seq_len", "must be an integer"),
    ({"tokenizer": {"vocab_size": 100}}, None, "data.tokenizer.vocab_size", ">= 300"),
    ({"tokenizer": {"vocab_size": 1000, "pretrained": "gpt2"}}, None,
     "data.tokenizer.vocab_size", "not both"),
    ({"max_mb_per_domain": -1}, None, "data.max_mb_per_domain", "must be > 0"),
    ({"heldout_frac": 1.5}, None, "data.heldout_frac", "(0, 1)"),
    ({"shards": 3}, None, "data.shards", "unknown key"),
    ("oops", None, "data", "must be a mapping"),
    (None, {"cloze": {"kind": "cloze", "domain": "poetry"}}, "test_sets.cloze.domain",
     "no domain named 'poetry'; domains are ["),
    (None, {"cloze": {"kind": "cloze"}}, "test_sets.cloze.domain", "is required"),
    (None, {"x": {"kind": "essay"}}, "test_sets.x.kind", "must be one of"),
    (None, {"x": {"kind": "choice", "domain": "quotes", "choices": 1}}, "test_sets.x.choices",
     ">= 2"),
    (None, {"x": {"kind": "cloze", "domain": "quotes", "choices": 3}}, "test_sets.x.choices",
     "unknown key"),
    (None, {"x": {"kind": "heldout", "samples_per_domain": 0}}, "test_sets.x.samples_per_domain",
     "must be > 0"),
    (None, {"x": {"kind": "squad", "data_files": "/nonexistent.json"}}, "test_sets.x.data_files",
     "matches no file"),
    (None, {"heldout": {"kind": "heldout"}, "heldout-code": {"kind": "qa", "domain": "code"}},
     "test_sets", "occurs twice"),
]


@pytest.mark.parametrize("data,tests,path,msg", BAD, ids=[b[2] + ":" + b[3][:12] for b in BAD])
def test_errors_name_the_key_path(data, tests, path, msg):
    with pytest.raises(ConfigError) as e:
        if data == "oops":
            DataConfig.from_sections(Section(data, "data"))
        parse(data, tests)
    assert e.value.path == path
    assert msg in e.value.message
