"""The sweep's `data:` block and top-level `test_sets:` block -> frozen, validated config.

    data:
      seq_len: 128
      tokenizer: {vocab_size: 2048}        # or {pretrained: NAME_OR_DIR}
      cache_dir: null                       # $S2L_CACHE or ~/.cache/s2l
      max_mb_per_domain: 2
      heldout_frac: 0.05
      shard_mb: 64                          # text per tokenization task (docs/data.md)
      domains:
        code: {source: builtin, name: python}
        wiki: {source: hub, path: wikitext, config: wikitext-103-raw-v1, split: train}
        mine: {source: files, path: "data/*.jsonl", format: json, text_field: text}
    test_sets:
      heldout: {kind: heldout, samples_per_domain: 100}
      cloze: {kind: cloze, domain: scripture, samples: 200}
      squad: {kind: squad, path: squad, split: validation, samples: 500}

Both blocks are optional; leaving one out gives the built-in default corpus / test suite.
`DataConfig.fingerprint()` hashes everything that determines the prepared arrays, so it names
the cache directory and enters every cell id.

Parsing reads the disk but never writes: a `path`/`data_files` glob must match readable
regular files, and the cache root must be (or be creatable as) a directory. Hub datasets and
file contents are read by `prepare_data`, which names the offending key the same way.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
from pathlib import Path

from s2l.config import ConfigError, Section, check_name, key_path, one_of, positive, shown

# Bump when extraction, splitting, tokenization or test-set construction changes, so old
# caches are not reused for arrays that would now come out differently.
FORMAT_VERSION = 2
# Bump when reading or sampling hub/files sources changes (enters only their fingerprints).
STREAM_VERSION = 1

MAX_SEQ_LEN = 1 << 20  # tokens; a longer context is a typo, not a proxy model
MAX_VOCAB = 1 << 24
SOURCES = ("builtin", "hub", "files")
FILE_FORMATS = ("json", "text", "csv", "parquet")
SYNTHETIC_KINDS = ("heldout", "cloze", "choice", "qa")
REAL_KINDS = ("lambada", "hellaswag", "squad", "trivia_qa")

# The embedded default: 7 clearly different kinds of text, all installed offline (see docs/science.md).
DEFAULT_DOMAINS = {
    "code": {"source": "builtin", "name": "python"},
    "dictionary": {"source": "builtin", "name": "gcide"},
    "glossary": {"source": "builtin", "name": "foldoc"},
    "lexicon": {"source": "builtin", "name": "wordnet"},
    "scripture": {"source": "builtin", "name": "bible"},
    "manual": {"source": "builtin", "name": "perldoc"},
    "quotes": {"source": "builtin", "name": "fortunes"},
}
DEFAULT_TEST_SETS = {
    "heldout": {"kind": "heldout", "samples_per_domain": 100},
    "cloze": {"kind": "cloze", "domain": "scripture", "samples": 200},
    "choice": {"kind": "choice", "domain": "quotes", "samples": 200, "choices": 4},
    "qa": {"kind": "qa", "domain": "dictionary", "samples": 200},
}


@dataclasses.dataclass(frozen=True)
class DomainConfig:
    """One named training domain. Only the fields of its `source` are meaningful."""

    name: str
    source: str  # builtin | hub | files
    builtin: str | None = None  # builtin: corpus name (s2l.data.corpus.BUILTINS)
    path: str | None = None  # hub: dataset name or dir; files: glob
    config: str | None = None  # hub: dataset config name
    split: str = "train"
    text_field: str = "text"
    format: str = "json"  # files: datasets builder used on the glob
    data_files: tuple[str, ...] = ()  # files: the glob, resolved and sorted at parse time


@dataclasses.dataclass(frozen=True)
class TestSetConfig:
    """One test-set block. Synthetic kinds read held-out text of `domain`; real kinds load
    `path`/`config`/`split` (or `data_files`) through `datasets.load_dataset`."""

    name: str
    kind: str
    domain: str | None = None
    samples: int = 200  # per domain for kind heldout
    choices: int = 4
    path: str | None = None
    config: str | None = None
    split: str = "validation"
    data_files: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class DataConfig:
    seq_len: int = 128
    vocab_size: int = 2048
    pretrained: str | None = None  # a transformers tokenizer name or dir instead of our BPE
    tokenizer_mb_per_domain: float = 1.0  # BPE trains on this much of each domain's train text
    cache_dir: str | None = None
    max_mb_per_domain: float = 2.0  # 7 default domains x 2 MB: prepares in ~30 s on 2 cores
    heldout_frac: float = 0.05
    # MB of source text per shard (one tokenization task). Not in to_dict/fingerprint: shards
    # concatenate to the same token streams whatever their size (docs/data.md).
    shard_mb: float = 64.0
    domain_configs: tuple[DomainConfig, ...] = ()
    test_sets: tuple[TestSetConfig, ...] = ()

    @property
    def domains(self) -> list[str]:
        return [d.name for d in self.domain_configs]

    def domain(self, name: str) -> DomainConfig:
        return {d.name: d for d in self.domain_configs}[name]

    @property
    def cache_root(self) -> Path:
        root = self.cache_dir or os.environ.get("S2L_CACHE") or "~/.cache/s2l"
        return Path(root).expanduser()

    def to_dict(self) -> dict:
        """JSON-able; everything that determines the prepared data (cache_dir excluded)."""
        d = dataclasses.asdict(self)
        d.pop("cache_dir")
        d.pop("shard_mb")
        d["format_version"] = FORMAT_VERSION
        return d

    def fingerprint(self) -> str:
        """Stable 16-hex hash of `to_dict()` plus the size of each local data file (so edited
        files give a new cache). Built-in sources are fixed by FORMAT_VERSION and the installed
        packages; they are not hashed to keep this cheap.

        Configs with a hub/files domain also hash each data file's mtime and STREAM_VERSION
        (how streamed sources are read and sampled, s2l.data.shards), so an edited file of the
        same size gives a new directory too; builtin-only configs (the default corpus) keep
        the fingerprint they had before sharding, since their arrays did not change."""
        d = self.to_dict()
        d["file_sizes"] = [[f, os.path.getsize(f) if os.path.exists(f) else -1]
                           for dc in self.domain_configs for f in dc.data_files]
        if any(dc.source != "builtin" for dc in self.domain_configs):
            d["stream_version"] = STREAM_VERSION
            d["file_mtimes"] = [os.stat(f).st_mtime_ns if os.path.exists(f) else -1
                                for dc in self.domain_configs for f in dc.data_files]
        blob = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @classmethod
    def default(cls) -> "DataConfig":
        return cls.from_sections(Section(None, "data"), Section(None, "test_sets"))

    @classmethod
    def from_sections(cls, data: Section, test_sets: Section | None = None) -> "DataConfig":
        d = cls()
        seq_len = data.get("seq_len", int, d.seq_len, lambda v: positive(v) or (
            None if v <= MAX_SEQ_LEN else f"must be <= {MAX_SEQ_LEN}"))
        tok = data.section("tokenizer")
        pretrained = tok.get("pretrained", str, None)
        vocab = tok.get("vocab_size", int, d.vocab_size,
                        lambda v: None if 300 <= v <= MAX_VOCAB else
                        f"must be >= 300 (256 bytes + merges) and <= {MAX_VOCAB}")
        if pretrained and tok.has("vocab_size"):
            raise ConfigError(tok.key("vocab_size"),
                              "give either vocab_size (train a BPE) or pretrained, not both")
        tok_mb = tok.get("train_mb_per_domain", float, d.tokenizer_mb_per_domain, positive)
        tok.finish()
        cfg = dict(
            seq_len=seq_len, vocab_size=vocab, pretrained=pretrained, tokenizer_mb_per_domain=tok_mb,
            cache_dir=_cache_dir(data),
            max_mb_per_domain=data.get("max_mb_per_domain", float, d.max_mb_per_domain, positive),
            heldout_frac=data.get("heldout_frac", float, d.heldout_frac,
                                  lambda v: None if 0 < v < 1 else "must be in (0, 1)"),
            shard_mb=data.get("shard_mb", float, d.shard_mb, lambda v: positive(v) or (
                None if v >= 0.001 else "must be >= 0.001 (1 kB)")),
        )
        doms = data.section("domains")
        raw = doms.data or DEFAULT_DOMAINS
        domains = tuple(_domain(Section(v, doms.key(k)), check_name(doms.key(k), k))
                        for k, v in (doms.items() if doms.data else raw.items()))
        data.finish()
        names = [x.name for x in domains]
        ts = test_sets if test_sets is not None else Section(None, "test_sets")
        tests = []
        for k, v in (ts.items() if ts.data else DEFAULT_TEST_SETS.items()):
            t = _test_set(Section(v, ts.key(k)), check_name(ts.key(k), k), names)
            tests.append(t)
        # heldout sets are named heldout-<domain>; the user's names must not collide with them
        out_names = [n for t in tests for n in _output_names(t, names)]
        dup = sorted({n for n in out_names if out_names.count(n) > 1})
        if dup:
            raise ConfigError(ts.path, f"test set name {dup[0]!r} occurs twice (heldout sets are "
                                       "named heldout-<domain>); rename one")
        return cls(domain_configs=domains, test_sets=tuple(tests), **cfg)

    def test_set_names(self) -> list[str]:
        """Output test-set names in suite order (a heldout block expands to one per domain)."""
        return [n for t in self.test_sets for n in _output_names(t, self.domains)]


def _output_names(t: TestSetConfig, domains: list[str]) -> list[str]:
    return [f"heldout-{d}" for d in domains] if t.kind == "heldout" else [t.name]


def _domain(s: Section, name: str) -> DomainConfig:
    source = s.get("source", str, check=one_of(*SOURCES))
    if source == "builtin":
        from s2l.data.corpus import BUILTINS  # lazy: corpus imports nothing heavy, but is big
        dc = DomainConfig(name, source, builtin=s.get("name", str, check=one_of(*BUILTINS)))
    elif source == "hub":
        dc = DomainConfig(name, source, path=s.get("path", str), config=s.get("config", str, None),
                          split=s.get("split", str, "train"),
                          text_field=s.get("text_field", str, "text"),
                          data_files=_files(s, "data_files", required=False))
    else:
        fmt = s.get("format", str, "json", one_of(*FILE_FORMATS))
        dc = DomainConfig(name, source, path=s.get("path", str), format=fmt,
                          text_field=s.get("text_field", str, "text"),
                          data_files=_files(s, "path", required=True))
    s.finish()
    return dc


def _cache_dir(data: Section) -> str | None:
    """The `cache_dir` key, checked (with $S2L_CACHE and the default) to be a directory or
    creatable as one, so a bad cache root is refused before anything is written."""
    value = data.get("cache_dir", str, None)
    root = Path(value or os.environ.get("S2L_CACHE") or "~/.cache/s2l").expanduser()
    origin = "" if value else f" (from {'$S2L_CACHE' if os.environ.get('S2L_CACHE') else 'the default'})"
    for p in (root, *root.parents):
        if p.exists():
            if not p.is_dir():
                what = "is" if p == root else f"cannot hold directories: {shown(str(p))} is"
                raise ConfigError(data.key("cache_dir"),
                                  f"{shown(str(root))}{origin} {what} a file, not a directory")
            break
    return value


def _files(s: Section, key: str, required: bool) -> tuple[str, ...]:
    """Resolve a glob (or list of globs) to sorted absolute paths, so the order is fixed.
    Every match must be a regular file that can be opened."""
    spec = s.get(key, (str, list), None)
    if spec is None:
        return ()
    pats = [spec] if isinstance(spec, str) else spec
    for i, p in enumerate(pats):
        if not isinstance(p, str) or not p or not p.isprintable():
            raise ConfigError(key_path(s.key(key), i) if isinstance(spec, list) else s.key(key),
                              f"must be a file path or glob (a printable string), got {shown(p)}")
    files = sorted({os.path.abspath(f) for p in pats for f in glob.glob(os.path.expanduser(p),
                                                                        recursive=True)})
    if pats and not files:
        where = f" (relative to {os.getcwd()})" if required else ""
        raise ConfigError(s.key(key), f"matches no file: {shown(spec)}{where}")
    for f in files:
        if not os.path.isfile(f):
            raise ConfigError(s.key(key), f"matches {shown(f)}, which is not a regular file")
        try:
            with open(f, "rb"):
                pass
        except OSError as e:
            raise ConfigError(s.key(key), f"matches {shown(f)}, which cannot be read: "
                                          f"{e.strerror}") from None
    return tuple(files)


def _test_set(s: Section, name: str, domains: list[str]) -> TestSetConfig:
    kind = s.get("kind", str, check=one_of(*SYNTHETIC_KINDS, *REAL_KINDS))
    has_domain = lambda v: None if v in domains else f"no domain named {v!r}; domains are {domains}"
    if kind == "heldout":
        t = TestSetConfig(name, kind, samples=s.get("samples_per_domain", int, 100, positive))
    elif kind in SYNTHETIC_KINDS:
        if not s.has("domain"):
            raise ConfigError(s.key("domain"), f"is required; one of {domains}")
        t = TestSetConfig(name, kind, domain=s.get("domain", str, check=has_domain),
                          samples=s.get("samples", int, 200, positive),
                          choices=s.get("choices", int, 4, lambda v: None if v >= 2 else
                                        "must be >= 2") if kind == "choice" else 4)
    else:
        files = _files(s, "data_files", required=False)
        if not files and not s.has("path"):
            raise ConfigError(s.key("path"), "is required (a hub dataset name, or give data_files)")
        default_path = {"lambada": "EleutherAI/lambada_openai", "hellaswag": "Rowan/hellaswag",
                        "squad": "rajpurkar/squad", "trivia_qa": "mandarjoshi/trivia_qa"}[kind]
        path = s.get("path", str, default_path if not files else
                     ("parquet" if files[0].endswith(".parquet") else "json"))
        t = TestSetConfig(name, kind, path=path, config=s.get("config", str, None),
                          split=s.get("split", str, "validation"), data_files=files,
                          samples=s.get("samples", int, 500, positive))
    s.finish()
    return t
