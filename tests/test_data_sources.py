"""Domains from `datasets.load_dataset`: hub-style arguments on local files, and file globs."""
from pathlib import Path

import pytest

from s2l.config import Section
from s2l.data import DataConfig
from s2l.data.sources import domain_documents

FIX = Path(__file__).parent / "fixtures"


def config(domains, **data):
    return DataConfig.from_sections(Section({"domains": domains, **data}, "data"),
                                    Section({"h": {"kind": "heldout"}}, "test_sets"))


def test_hub_source_reads_through_load_dataset_and_caps():
    # {path: json, data_files} is the call a hub name makes, minus the download
    cfg = config({"notes": {"source": "hub", "path": "json", "split": "train",
                            "data_files": str(FIX / "domain_notes.jsonl")}},
                 max_mb_per_domain=0.005)
    docs = domain_documents(cfg, cfg.domain("notes"))
    assert docs[0].startswith("Note 0: the quick brown fox")
    cap = int(0.005 * 2 ** 20)
    assert sum(map(len, docs[:-1])) < cap <= sum(map(len, docs))  # in order, up to the cap
    assert len(docs) < 60


def test_files_text_format_is_one_document_per_file(tmp_path):
    for i in range(3):
        (tmp_path / f"{i}.txt").write_text(f"line one of {i}\nline two\n")
    cfg = config({"t": {"source": "files", "path": str(tmp_path / "*.txt"), "format": "text"}})
    assert domain_documents(cfg, cfg.domain("t")) == [f"line one of {i}\nline two\n"
                                                      for i in range(3)]


def test_missing_text_field_is_explained():
    cfg = config({"n": {"source": "files", "path": str(FIX / "squad.jsonl"), "text_field": "body"}})
    with pytest.raises(ValueError, match="no field 'body'.*set text_field"):
        domain_documents(cfg, cfg.domain("n"))
