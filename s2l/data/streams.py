"""Read one shard's documents, streaming: memory is bounded by a document, not the source.

A shard (s2l.data.plan.ShardSpec) is one of

| kind    | slice of the source                          | read with                              |
|---------|----------------------------------------------|----------------------------------------|
| builtin | documents [i*N//n, (i+1)*N//n) of the capped | the extractor (whole list, tens of MB) |
|         | list (N only known once extracted)           |                                        |
| jsonl   | lines *starting* in bytes [start, end) of a  | the file itself, json.loads per line   |
|         | JSON-lines file                              |                                        |
| file    | one whole file (text, csv, parquet, JSON     | datasets.load_dataset(format,          |
|         | that is not JSON lines)                      |   data_files=[f], streaming=True)      |
| hub     | `.shard(n, i)` of the streamed split, up to  | datasets.load_dataset(path, config,    |
|         | max_mb_per_domain / n MB in order            |   split, streaming=True)               |

`shard_documents(cfg, spec)` yields (text, heldout) in source order. Held-out is decided per
document by hash exactly as `s2l.data.cache.split_documents` does; for builtins the whole list
is split (so today's "tiny domain: one document to each side" fallback is kept bit for bit);
for streamed kinds the fallback is applied at finalize (s2l.data.shards).
"""
from __future__ import annotations

import functools
import json
from typing import Iterator

from s2l.data.config import DataConfig
from s2l.data.corpus import MB, doc_key
from s2l.data.sources import domain_documents, load_rows

FIRST_LINE_MAX = 16 * MB  # a JSON-lines file's first line is read at plan time, up to this


def heldout_cut(cfg: DataConfig) -> int:
    return int(cfg.heldout_frac * 2 ** 64)


def is_heldout(text: str, domain: str, cut: int) -> bool:
    """The per-document rule of split_documents (before its tiny-domain fallback)."""
    return doc_key(text, "heldout" + domain) < cut


def looks_like_json_lines(path: str) -> bool:
    """True when the file's first line is one complete JSON object: then every line is a row
    (JSON lines), and byte ranges cut at line starts are independent slices of it."""
    try:
        with open(path, "rb") as f:
            line = f.readline(FIRST_LINE_MAX)
        return isinstance(json.loads(line), dict)
    except (ValueError, UnicodeDecodeError):
        return False


@functools.lru_cache(maxsize=None)
def builtin_split(cfg: DataConfig, name: str) -> tuple[tuple[str, ...], tuple[bool, ...]]:
    """The builtin domain's capped documents and their held-out flags (split_documents' rule,
    fallback included). Cached: the serial path reads each builtin once for the tokenizer
    sample and once for its shards; prepare_data clears it when done."""
    docs = domain_documents(cfg, cfg.domain(name))
    cut = heldout_cut(cfg)
    held = [is_heldout(d, name, cut) for d in docs]
    if all(held) or not any(held):  # tiny domains: force one document to each side
        held = [i == len(docs) - 1 for i in range(len(docs))]
    return tuple(docs), tuple(held)


def shard_documents(cfg: DataConfig, spec, split: tuple | None = None
                    ) -> Iterator[tuple[str, bool]]:
    """(text, heldout) of every non-empty document of the shard, in source order. split: a
    builtin shard's `builtin_split(cfg, spec.domain)` if already known (read from a file)."""
    dc = cfg.domain(spec.domain)
    if spec.kind == "builtin":
        docs, held = split or builtin_split(cfg, spec.domain)
        n = len(docs)
        lo, hi = spec.index * n // spec.parts, (spec.index + 1) * n // spec.parts
        for i in range(lo, hi):
            yield docs[i], held[i]
        return
    cut = heldout_cut(cfg)
    for text in _texts(cfg, spec, dc):
        yield text, is_heldout(text, spec.domain, cut)


def _texts(cfg: DataConfig, spec, dc) -> Iterator[str]:
    if spec.kind == "jsonl":
        rows = _json_lines(spec.file, spec.start, spec.end)
    elif spec.kind == "file":
        extra = {"sample_by": "document"} if dc.format == "text" else {}  # a text file = a document
        rows = iter(load_rows(dc.format, None, "train", [spec.file], streaming=True, **extra))
    elif spec.kind == "hub":
        ds = load_rows(dc.path, dc.config, dc.split, dc.data_files, streaming=True)
        if spec.parts > 1:
            ds = ds.shard(num_shards=spec.parts, index=spec.index)
        rows = iter(ds)
    else:
        raise ValueError(f"unknown shard kind {spec.kind!r}")
    # hub sets can be huge: take them in order until the cap instead of reading all
    cap = int(cfg.max_mb_per_domain * MB / spec.parts) if spec.kind == "hub" else None
    total = seen = with_field = 0
    fields: list = []
    for row in rows:
        seen += 1
        if dc.text_field not in row:
            fields = fields or list(row)
            if spec.kind != "jsonl":  # datasets rows all have the same columns: stop now
                break
            continue
        with_field += 1
        text = row[dc.text_field]
        if isinstance(text, str) and text.strip():
            if cap is not None and total >= cap:
                return
            yield text
            total += len(text.encode("utf-8", "replace"))
    if seen and not with_field:
        raise ValueError(f"domain {dc.name!r}: no field {dc.text_field!r} in {dc.path!r}; "
                         f"fields are {fields} (set text_field)")


def _json_lines(path: str, start: int, end: int) -> Iterator[dict]:
    """Rows of the lines that start in bytes [start, end): a line straddling `start` belongs to
    the previous range, one straddling `end` to this one, so ranges tile the file."""
    with open(path, "rb") as f:
        pos = start
        if start > 0:
            f.seek(start - 1)
            if f.read(1) != b"\n":  # mid-line: skip to the next line start
                pos = start + len(f.readline())
        f.seek(pos)
        while pos < end:
            line = f.readline()
            if not line:
                break
            pos += len(line)
            if line.strip():
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError(f"{path}: a JSON-lines row must be an object, got "
                                     f"{type(row).__name__}")
                yield row
