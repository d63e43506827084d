"""Built-in offline domains: each >= 1 MB, extracted byte-for-byte the same every time."""
import hashlib

import pytest

from s2l.data import DataConfig
from s2l.data.cache import split_documents
from s2l.data.corpus import BUILTINS, MB, cap_documents


def digest(docs):
    h = hashlib.sha256()
    for d in docs:
        h.update(d.encode("utf-8", "replace") + b"\0")
    return h.hexdigest()


@pytest.mark.parametrize("name", sorted({d.builtin for d in DataConfig.default().domain_configs}))
def test_default_builtin_domain_is_big_and_deterministic(name):
    docs = BUILTINS[name]()
    assert sum(len(d.encode()) for d in docs) >= 1 * MB
    assert len(docs) >= 20
    assert digest(BUILTINS[name]()) == digest(docs)
    capped = cap_documents(docs, 1 * MB, salt=name)
    assert 0.9 * MB <= sum(len(d.encode()) for d in capped) <= 1 * MB
    assert digest(cap_documents(docs, 1 * MB, salt=name)) == digest(capped)


def test_cap_spreads_over_the_source_and_keeps_order():
    docs = [f"{chr(65 + i // 100)} entry {i} " * 10 for i in range(2600)]  # 'A'..'Z' blocks
    capped = cap_documents(docs, sum(map(len, docs)) // 4)
    assert len({d[0] for d in capped}) == 26  # not just the first letters
    idx = [docs.index(d) for d in capped]
    assert idx == sorted(idx)


def test_split_is_by_document_and_disjoint():
    docs = [f"doc {i}" for i in range(1000)] + ["dup"] * 5
    train, held = split_documents(docs, 0.1, "x")
    assert not set(train) & set(held)  # duplicates fall on one side
    assert 50 < len(held) < 160 and len(train) + len(held) == len(docs)
    assert split_documents(docs, 0.1, "x") == (train, held)
