"""The plan of a data preparation: which shards each domain is cut into, and their fingerprints.

`plan_preparation(cfg)` is what the driver of a sweep runs at submit (s2l.lm.study): it reads no
document text (file sizes and mtimes, the first line of JSON files, the file count of a streamed
hub split), so it is cheap at any corpus size, and an unreadable source found here is a
ConfigError at its key path. The workers of s2l.data.shards carry out the plan, one `ShardSpec`
per task; `DataPlan.to_dict`/`from_dict` is how the plan travels to them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path

from s2l.data.config import FORMAT_VERSION, STREAM_VERSION, DataConfig
from s2l.data.corpus import MB
from s2l.data.sources import load_rows, reading
from s2l.data.streams import looks_like_json_lines


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    """One tokenization task: a slice of one domain's source (see s2l.data.streams)."""

    domain: str
    index: int  # 0-based within the domain; shards of a domain concatenate in index order
    key: str  # "<domain>/<index:05d>"
    fingerprint: str  # 16 hex: the slice's description + all that changes its tokens
    approx_bytes: int  # source bytes (builtin: an upper bound, max_mb_per_domain / parts)
    kind: str  # builtin | jsonl | file | hub
    parts: int = 1  # builtin/hub: how many shards the domain is cut into
    file: str | None = None  # jsonl/file: the source file
    start: int = 0  # jsonl: byte range [start, end) (lines starting in it)
    end: int = 0

    @property
    def streamed(self) -> bool:
        return self.kind != "builtin"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class DataPlan:
    root: Path
    shards: list[ShardSpec]
    tokenizer_fingerprint: str

    def of_domain(self, domain: str) -> list[ShardSpec]:
        return [s for s in self.shards if s.domain == domain]

    def to_dict(self) -> dict:
        return {"root": str(self.root), "tokenizer_fingerprint": self.tokenizer_fingerprint,
                "shards": [s.to_dict() for s in self.shards]}

    @classmethod
    def from_dict(cls, d: dict) -> "DataPlan":
        return cls(root=Path(d["root"]), tokenizer_fingerprint=d["tokenizer_fingerprint"],
                   shards=[ShardSpec(**s) for s in d["shards"]])


def short_hash(obj) -> str:
    """16 hex digits of the sha256 of `obj` as canonical JSON: the fingerprints of shards."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def plan_preparation(cfg: DataConfig) -> DataPlan:
    """The shards of every domain. Reads no document text: file sizes and mtimes, the first
    line of JSON files, and (hub sets cut into several shards) the number of files of the
    streamed split. Memory O(number of shards). An unreadable source found here is a
    ConfigError at its key path."""
    shard_bytes = max(1, int(cfg.shard_mb * MB))
    common = {"format": FORMAT_VERSION, "heldout_frac": cfg.heldout_frac}
    shards: list[ShardSpec] = []
    for dc in cfg.domain_configs:
        where = f"data.domains.{dc.name}"
        desc = {**common, "domain": dataclasses.asdict(dc)}
        specs: list[tuple[str, dict, int]] = []  # (kind, slice fields, approx bytes)
        if dc.source == "builtin":
            max_bytes = int(cfg.max_mb_per_domain * MB)
            n = _parts(cfg.max_mb_per_domain, cfg.shard_mb)
            desc["max_mb"] = cfg.max_mb_per_domain
            specs = [("builtin", {"parts": n}, max_bytes // n) for _ in range(n)]
        elif dc.source == "hub":
            desc.update(stream=STREAM_VERSION, max_mb=cfg.max_mb_per_domain,
                        files=[_stat(f) for f in dc.data_files])
            n = _parts(cfg.max_mb_per_domain, cfg.shard_mb)
            if n > 1:  # no more shards than the split has files: .shard() cuts at files
                with reading(f"{where}.path", f"hub source {dc.path!r}"):
                    ds = load_rows(dc.path, dc.config, dc.split, dc.data_files, streaming=True)
                    n = max(1, min(n, int(ds.n_shards)))
            approx = int(cfg.max_mb_per_domain * MB) // n
            specs = [("hub", {"parts": n}, approx) for _ in range(n)]
        else:
            desc["stream"] = STREAM_VERSION
            for f in dc.data_files:
                with reading(f"{where}.path", f"{dc.format} file {f!r}"):
                    size = os.path.getsize(f)
                    lines = dc.format == "json" and looks_like_json_lines(f)
                if lines:
                    k = max(1, math.ceil(size / shard_bytes))
                    specs += [("jsonl", {"file": f, "start": size * j // k,
                                         "end": size * (j + 1) // k}, size // k)
                              for j in range(k)]
                else:
                    specs.append(("file", {"file": f}, size))
        if dc.source == "files":  # a file's shards must not depend on the other files
            desc["domain"] = {"name": dc.name, "format": dc.format, "text_field": dc.text_field}
        for i, (kind, slc, approx) in enumerate(specs):
            # a file slice is its own description; builtin/hub slices are "part i of n"
            where_in = {"stat": _stat(slc["file"])} if "file" in slc else {"index": i}
            fp = short_hash({**desc, "kind": kind, **slc, **where_in})
            shards.append(ShardSpec(domain=dc.name, index=i, key=f"{dc.name}/{i:05d}",
                                    fingerprint=fp, approx_bytes=int(approx), kind=kind, **slc))
    return DataPlan(root=cfg.cache_root / cfg.fingerprint(), shards=shards,
                    tokenizer_fingerprint=_tokenizer_fingerprint(cfg))


def _parts(total_mb: float, shard_mb: float) -> int:
    # rounded first: 0.2 / 0.05 is 4.000000000000001 in floating point, and means 4
    return max(1, math.ceil(round(total_mb / shard_mb, 9)))


def _stat(path: str) -> list:
    try:
        st = os.stat(path)
        return [path, st.st_size, st.st_mtime_ns]
    except OSError:
        return [path, -1, -1]


def _tokenizer_fingerprint(cfg: DataConfig) -> str:
    if cfg.pretrained:
        files = sorted(str(p) for p in Path(cfg.pretrained).expanduser().glob("*")) \
            if Path(cfg.pretrained).expanduser().is_dir() else []
        return short_hash({"pretrained": cfg.pretrained, "files": [_stat(f) for f in files]})
    # a trained BPE depends on the sample, which depends on every source: the root's name
    return short_hash({"bpe": cfg.fingerprint(), "vocab": cfg.vocab_size})
