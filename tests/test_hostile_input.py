"""Hostile sweep files: every class of bad input is refused the same way, before anything is
created. Each case runs `hpc/submit.py SWEEP --cluster local --out DIR` as a real subprocess
(with its own empty data cache, `S2L_CACHE`, and Hugging Face offline with its own home) and
asserts exit code 2, the YAML key path in stderr, no "Traceback" in the output, no out dir,
and the data cache byte for byte as it was.

Cases per class (55 cases; 60 submits with the dry runs and the valid base sweep):
  non-finite numbers (inf, NaN) ............................... 6
  overflowing values, sums and token budgets ................. 5
  names (matched whole, at most 64 characters, ASCII) ........ 6 (one of 100,000 characters,
                                                                 also with --dry-run)
  YAML 1.1 booleans (keys stay strings; only true/false) ..... 3 (1 accepted, 2 refused)
  seeds (64-bit, non-negative, integers, at least one) ....... 5
  wrong container type (a mapping for a list, ...) ........... 6
  tracking URIs ............................................... 6
  sources that cannot be read ................................ 6 (3 found at parse time, also
                                                                 with --dry-run; 3 at prepare)
  data cache root that is not a directory .................... 3
  files the loader refuses (duplicate keys, anchor bomb, deep
  nesting, UTF-16, binary, non-UTF-8, python tag, too big) ... 9
Plus unit tests of the loader (`s2l.yamlfile.load_yaml_text` / `read_yaml`), of the message
limits, and a data preparation that runs out of file space (an OSError naming the directory,
no temporary directory left behind).
"""
from __future__ import annotations

import copy
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run_cli
from s2l.config import ConfigError, Section, check_tracking_uri, shown
from s2l.yamlfile import MAX_BYTES, MAX_DEPTH, load_yaml_text, read_yaml

FIX = Path(__file__).parent / "fixtures"

# Small and valid: the dry run of this passes (test_base_sweep_is_valid); each case breaks one
# thing. The domains are the two quickest built-ins to read.
BASE = {
    "name": "hostile",
    "seeds": [0],
    "scales": {"xs": {"d_model": 16, "n_layers": 1, "n_heads": 2, "tokens": 20000}},
    "data": {"seq_len": 32, "tokenizer": {"vocab_size": 300}, "max_mb_per_domain": 0.05,
             "domains": {"quotes": {"source": "builtin", "name": "fortunes"},
                         "glossary": {"source": "builtin", "name": "foldoc"}}},
    "mixtures": {"even": {"weights": {"quotes": 1, "glossary": 1}}},
    "test_sets": {"heldout": {"kind": "heldout", "samples_per_domain": 4}},
    "train": {"batch_size": 4},
}


def snapshot(root: Path) -> list:
    """Every path under `root` with its size and content hash: "unchanged" means this equal."""
    if not root.exists():
        return []
    if root.is_file():
        return [(root.name, root.read_bytes())]
    return sorted((str(p.relative_to(root)), p.read_bytes() if p.is_file() else None)
                  for p in root.rglob("*"))


class Run:
    """One submit of a sweep, in its own directory, with its own empty data cache."""

    def __init__(self, tmp_path: Path, sweep: dict | str | bytes, *args: str,
                 env: dict | None = None, dry_run: bool = False):
        self.sweep = tmp_path / "sweep.yaml"
        if isinstance(sweep, dict):
            sweep = yaml.safe_dump(sweep, sort_keys=False)
        if isinstance(sweep, str):
            sweep = sweep.encode()
        self.sweep.write_bytes(sweep)
        self.out = tmp_path / "out"
        self.cache = tmp_path / "cache"
        self.cache.mkdir(exist_ok=True)
        (self.cache / "README").write_text("an earlier file that must stay as it is\n")
        env = {"S2L_CACHE": str(self.cache), "HF_HOME": str(tmp_path / "hf"),
               "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}
        self.cache_root = Path(env["S2L_CACHE"])
        before = snapshot(self.cache_root)
        t0 = time.perf_counter()
        self.proc = run_cli("hpc/submit.py", str(self.sweep), "--cluster", "local", "--out",
                            str(self.out), *(["--dry-run"] if dry_run else []), *args,
                            env=env, timeout=300)
        self.seconds = time.perf_counter() - t0
        self.cache_unchanged = snapshot(self.cache_root) == before

    @property
    def output(self) -> str:
        return self.proc.stdout + self.proc.stderr

    def refused(self, where: str | None, text: str = "") -> None:
        """Exit 2, the key path (None: a file-level error) and `text` in stderr, no traceback,
        nothing created."""
        err = self.proc.stderr
        assert self.proc.returncode == 2, self.output[-3000:]
        assert "Traceback" not in self.output, self.output[-3000:]
        if where is not None:
            assert f": {where}:" in err, f"error does not name {where!r}: {err[-2000:]}"
        assert text in err, f"{text!r} not in {err[-2000:]}"
        assert len(err) < 3000, f"error output of {len(err)} characters"
        assert not self.out.exists(), "an invalid sweep must create nothing"
        assert self.cache_unchanged, "the data cache changed"


def edited(*changes) -> dict:
    """BASE with (dotted path, value) changes; a path segment may hold dots if given as a tuple."""
    raw = copy.deepcopy(BASE)
    for path, value in changes:
        keys = path if isinstance(path, tuple) else path.split(".")
        d = raw
        for k in keys[:-1]:
            d = d.setdefault(k, {})
        d[keys[-1]] = value
    return raw


def check(tmp_path, case) -> None:
    """case = (changes, key path, text in the message[, dry_run])."""
    changes, where, text, *rest = case
    Run(tmp_path, edited(*changes), dry_run=bool(rest and rest[0])).refused(where, text)


def test_base_sweep_is_valid(tmp_path):
    run = Run(tmp_path, BASE, dry_run=True)
    assert run.proc.returncode == 0, run.output[-3000:]
    assert "total: 1 cells, 0 done" in run.proc.stdout
    assert not run.out.exists() and run.cache_unchanged


# ------------------------------------------------------------------------ non-finite numbers

NON_FINITE = [
    ([("train.beta2", math.nan)], "train.beta2", "finite"),
    ([("token_multiplier", math.inf)], "token_multiplier", "finite"),
    ([("mixtures.even.weights.glossary", math.nan)], "mixtures.even.weights.glossary", "finite"),
    ([("data.heldout_frac", -math.inf)], "data.heldout_frac", "finite"),
    ([("scales.xs.d_model", math.inf)], "scales.xs.d_model", "must be an integer"),
    ([("slurm.defaults.mem_gb", math.inf)], "slurm.defaults.mem_gb", ""),
]


@pytest.mark.parametrize("case", NON_FINITE, ids=[c[1] for c in NON_FINITE])
def test_non_finite_numbers(tmp_path, case):
    check(tmp_path, case)


# ----------------------------------------------------------- overflowing values and budgets

OVERFLOW = [
    # each weight is finite; their sum is not
    ([("mixtures.even.weights", {"quotes": 1.7e308, "glossary": 0.9e308})],
     "mixtures.even.weights", "overflow"),
    # tokens_per_param x token_multiplier overflows to inf
    ([("tokens_per_param", 1e300), ("token_multiplier", 1e10), ("scales.xs.tokens", None)],
     "tokens_per_param", "tokens"),
    # finite, but no run has 1e250 tokens
    ([("tokens_per_param", 1e250), ("scales.xs.tokens", None)], "tokens_per_param", "tokens"),
    ([("scales.xs.tokens", 10 ** 20)], "scales.xs.tokens", "<="),
    ([("train.batch_size", 2 ** 40)], "train.batch_size", "<="),
]


@pytest.mark.parametrize("case", OVERFLOW, ids=[f"{c[1]}-{i}" for i, c in enumerate(OVERFLOW)])
def test_overflowing_values(tmp_path, case):
    check(tmp_path, case)


# ------------------------------------------------------------------------------------- names

LONG = "s" * 100_000


def _rename(block: str, old: str, new: str):
    def edit(raw):
        d = raw
        for k in block.split("."):
            d = d[k]
        d[new] = d.pop(old)
        return raw
    return edit


NAMES = [
    (_rename("mixtures", "even", "even\n"), "mixtures.even\\n", "name"),  # was accepted: `$`
    (lambda r: {**r, "name": "hostile\n"}, "name", "name"),
    (_rename("data.domains", "quotes", "../quotes"), "data.domains.../quotes", "name"),
    (_rename("test_sets", "heldout", "h" * 65), "test_sets." + "h" * 65, "at most 64"),
    (_rename("scales", "xs", "xs\u0663"), "scales.xs\\u0663", "name"),  # an Arabic-Indic digit
    (_rename("scales", "xs", LONG), None, "at most 64"),  # the path is cut: checked below
]


@pytest.mark.parametrize("case", NAMES, ids=["newline", "sweep-name", "dotdot", "65-chars",
                                             "unicode-digit", "100k-chars"])
def test_names_are_matched_whole_and_short(tmp_path, case):
    edit, where, text = case
    raw = edit(copy.deepcopy(BASE))
    if where == "data.domains.../quotes":  # keep the mixture valid: only the name is wrong
        raw["mixtures"]["even"]["weights"] = {"glossary": 1}
    run = Run(tmp_path, raw)
    run.refused(where, text)
    if where is None:
        # the 100,000-character name: a clean, short error (refused() checks < 3000 characters)
        # naming the start of the path, on a dry run too
        for run in (run, Run(tmp_path, raw, dry_run=True)):
            run.refused(None, text)
            assert ": scales.sssss" in run.proc.stderr


# ------------------------------------------------------------------------ YAML 1.1 booleans

BOOLEAN_KEYS = """\
name: hostile
scales:
  y: {d_model: 16, n_layers: 1, n_heads: 2, tokens: 20000}
data:
  seq_len: 32
  tokenizer: {vocab_size: 300}
  domains:
    no: {source: builtin, name: fortunes}
    off: {source: builtin, name: foldoc}
mixtures:
  on: {weights: {no: 1, off: 3}}
test_sets:
  heldout: {kind: heldout, samples_per_domain: 4}
  yes: {kind: choice, domain: no, samples: 4}
tracking: {experiment: n}
train: {batch_size: 4, compile: false}
"""


def test_yaml11_boolean_keys_stay_strings(tmp_path):
    run = Run(tmp_path, BOOLEAN_KEYS, dry_run=True)
    assert run.proc.returncode == 0, run.output[-3000:]
    cell = [line.split() for line in run.proc.stdout.splitlines() if line.startswith("y ")]
    assert len(cell) == 1 and cell[0][5:7] == ["on", "0"], run.proc.stdout


@pytest.mark.parametrize("text,got", [
    (BOOLEAN_KEYS.replace("compile: false", "compile: yes"), "'yes'"),
    # `off` is a fine directory path for tracking.uri, `on` no boolean
    (BOOLEAN_KEYS.replace("tracking: {experiment: n}", "tracking: {experiment: no, uri: off}")
     .replace("compile: false", "compile: on"), "'on'"),
], ids=["compile-yes", "compile-on"])
def test_yaml11_booleans_are_not_booleans(tmp_path, text, got):
    Run(tmp_path, text).refused("train.compile", f"must be true or false, got {got}")


# ------------------------------------------------------------------------------------- seeds

SEEDS = [
    ([("seeds", [2 ** 63])], "seeds[0]", "<="),
    ([("seeds", [0, -5])], "seeds[1]", ">= 0"),
    ([("seeds", [1, 2.0])], "seeds[1]", "must be an integer"),
    ([("seeds", [])], "seeds", "must not be empty"),
]


@pytest.mark.parametrize("case", SEEDS, ids=[c[1] + str(i) for i, c in enumerate(SEEDS)])
def test_seeds(tmp_path, case):
    check(tmp_path, case)


def test_data_seed_beyond_int64_in_a_selection_sweep(tmp_path):
    raw = yaml.safe_load((ROOT / "sweeps" / "selection.yaml").read_text())
    raw["pool"]["seed"] = 2 ** 64 + 1
    Run(tmp_path, raw).refused("pool.seed", "")


# ---------------------------------------------------------------------- wrong container type

CONTAINERS = [
    ([("seeds", {"first": 0})], "seeds", "must be a list"),
    ([("scales", ["xs"])], "scales", "must be a mapping"),
    ([("mixtures.even.weights", ["quotes", "glossary"])], "mixtures.even.weights",
     "must be a mapping"),
    ([("test_sets", [{"kind": "heldout"}])], "test_sets", "must be a mapping"),
    ([("data.domains.notes", {"source": "files", "path": {"glob": "*.jsonl"}})],
     "data.domains.notes.path", "must be a string"),
    ([("kind", {"lm": True})], "kind", ""),
]


@pytest.mark.parametrize("case", CONTAINERS, ids=[c[1] for c in CONTAINERS])
def test_wrong_container_type(tmp_path, case):
    check(tmp_path, case)


# ----------------------------------------------------------------------------- tracking URIs

URIS = ["ftp://example.org/mlflow", "http:///no-host", "sqlite:relative.db",
        "runs\x07mlflow", "http://localhost:123456", ""]


@pytest.mark.parametrize("uri", URIS, ids=["ftp", "no-host", "sqlite-2-slashes", "bell",
                                           "bad-port", "empty"])
def test_garbage_tracking_uri(tmp_path, uri):
    Run(tmp_path, edited(("tracking", {"uri": uri}))).refused("tracking.uri")


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000", "https://mlflow.example.org/team/x",
                                 "sqlite:///runs/mlflow.db", "sqlite:////abs/mlflow.db",
                                 "file:///tmp/mlruns", "mlruns", "./runs/mlruns"])
def test_good_tracking_uris_pass(uri):
    assert check_tracking_uri(uri) == uri


# ---------------------------------------------------------------- sources that cannot be read

def _files_domain(path) -> dict:
    return {"source": "files", "path": str(path)}


def test_unreadable_sources_found_at_parse_time(tmp_path):
    (tmp_path / "adir.jsonl").mkdir()
    cases = [
        ("notes", _files_domain(tmp_path / "nothing-here" / "*.jsonl"), "data.domains.notes.path",
         "matches no file"),
        ("notes", _files_domain(tmp_path / "adir.jsonl"), "data.domains.notes.path",
         "not a regular file"),
        ("wiki", {"source": "hub", "path": "wikitext", "data_files": str(tmp_path / "no*.json")},
         "data.domains.wiki.data_files", "matches no file"),
    ]
    for i, (name, block, where, text) in enumerate(cases):
        raw = edited((f"data.domains.{name}", block))
        for dry_run in (False, True):
            d = tmp_path / f"case{i}{dry_run}"
            d.mkdir()
            Run(d, raw, dry_run=dry_run).refused(where, text)


def test_unreadable_sources_found_at_prepare(tmp_path):
    bad_json = tmp_path / "broken.jsonl"
    bad_json.write_text('{"text": "fine"}\n{"text": unquoted and broken\n')
    cases = [
        # a hub dataset that cannot be reached (offline here, as on a cluster without network)
        ("data.domains.wiki", {"source": "hub", "path": "no-such-org/no-such-set"},
         "data.domains.wiki.path", "cannot read"),
        ("data.domains.notes", _files_domain(bad_json), "data.domains.notes.path", "cannot read"),
        # readable rows without the fields of the benchmark
        ("test_sets.sq", {"kind": "squad", "split": "train",
                          "data_files": str(FIX / "domain_notes.jsonl")},
         "test_sets.sq.data_files", "cannot read"),
    ]
    for i, (key, block, where, text) in enumerate(cases):
        d = tmp_path / f"case{i}"
        d.mkdir()
        raw = copy.deepcopy(BASE)
        block_parent, name = key.rsplit(".", 1)
        parent = raw
        for k in block_parent.split("."):
            parent = parent[k]
        # the bad source first: nothing else is read before it is refused
        parent_items = {name: block, **parent}
        parent.clear()
        parent.update(parent_items)
        Run(d, raw).refused(where, text)


# -------------------------------------------------------------------------- data cache root

def test_cache_root_that_is_a_file(tmp_path):
    a_file = tmp_path / "cache-file"
    a_file.write_text("not a directory\n")
    for i, (changes, env) in enumerate([
            ([("data.cache_dir", str(a_file))], None),
            ([("data.cache_dir", str(a_file / "below"))], None),
            ([], {"S2L_CACHE": str(a_file)})]):
        d = tmp_path / f"case{i}"
        d.mkdir()
        run = Run(d, edited(*changes), env=env)
        run.refused("data.cache_dir", "a file")
        assert a_file.read_text() == "not a directory\n"


# ------------------------------------------------------------------- files the loader refuses

def _sweep_text() -> str:
    return yaml.safe_dump(BASE, sort_keys=False)


def _bomb(levels: int = 12, width: int = 10) -> str:
    lines = [f"l0: &l0 [{', '.join(['boom'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def test_loader_refusals_through_the_cli(tmp_path):
    marker = tmp_path / "pwned"
    cases = [
        (_sweep_text() + "mixtures:\n  again: {weights: {quotes: 1}}\n", "mixtures",
         "duplicate key (lines "),
        (_sweep_text() + _bomb(), None, "anchors and aliases"),
        (_sweep_text() + "deep: " + "[" * 300 + "]" * 300 + "\n", None, "nested deeper"),
        (_sweep_text().encode("utf-16"), None, "UTF-16"),
        (bytes(range(256)) * 8, None, "binary"),
        (_sweep_text().replace("hostile", "h\u00f6stile").encode("latin-1"), None, "not UTF-8"),
        (_sweep_text() + f"evil: !!python/object/apply:os.system ['touch {marker}']\n", None,
         "python/object/apply"),
        (_sweep_text() + "#" * (MAX_BYTES + 10) + "\n", None, "larger than"),
        (_sweep_text().replace("name: hostile", "name: hostile\nname: again"), "name",
         "lines 1 and 2"),
    ]
    for i, (text, where, message) in enumerate(cases):
        d = tmp_path / f"case{i}"
        d.mkdir()
        run = Run(d, text)
        run.refused(where, message)
        assert not marker.exists()


# ---------------------------------------------------------------- the loader, in the process

def test_duplicate_keys_name_the_path_and_both_lines():
    with pytest.raises(ConfigError) as e:
        load_yaml_text("a:\n  b: 1\n  c:\n    d: 2\n    d: 3\n")
    assert e.value.path == "a.c.d" and "lines 4 and 5" in e.value.message
    # keys equal as values are duplicates too: true and True, 1 and 0x1
    for text in ("true: 1\nTrue: 2\n", "1: a\n0x1: b\n"):
        with pytest.raises(ConfigError, match="duplicate key"):
            load_yaml_text(text)
    # a merge key is not a duplicate: the explicit key overrides the merged one
    assert load_yaml_text("base: &b {x: 1, y: 2}\nc: {<<: *b, y: 3}\n")["c"] == {"x": 1, "y": 3}


def test_anchor_bomb_is_refused_fast_without_expanding():
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="anchors and aliases") as e:
        load_yaml_text(_bomb(levels=30, width=30))  # 30^30 values if expanded
    assert time.perf_counter() - t0 < 1.0
    assert len(str(e.value)) < 500
    # a modest use of aliases is fine
    assert load_yaml_text(_bomb(levels=3, width=10))["l2"][0][0] == ["boom"] * 10


def test_depth_limits():
    def nested(n: int) -> str:
        return "a: " + "[" * n + "]" * n
    assert load_yaml_text(nested(MAX_DEPTH - 1))
    for n in (MAX_DEPTH + 1, 100_000):  # no RecursionError, however deep
        with pytest.raises(ConfigError, match="nested deeper"):
            load_yaml_text(nested(n))
    # depth built through aliases, each level of the file shallow
    chain = "a0: &a0 [x]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 200))
    with pytest.raises(ConfigError, match="nested deeper"):
        load_yaml_text(chain)
    with pytest.raises(ConfigError, match="recursive"):
        load_yaml_text("a: &a [1, *a]\n")


def test_byte_order_marks_and_encodings(tmp_path):
    text = "name: x\nlist: [1, 2]\n"
    f = tmp_path / "s.yaml"
    for encoding, name in (("utf-16", "UTF-16"), ("utf-16-be", None), ("utf-32", "UTF-32")):
        data = text.encode(encoding)
        if name is None:  # UTF-16 without a BOM: NUL bytes
            name = "binary"
        f.write_bytes(data)
        with pytest.raises(ConfigError, match=name):
            read_yaml(f)
    f.write_bytes(b"\xef\xbb\xbf" + text.encode())  # a UTF-8 BOM is still UTF-8
    assert read_yaml(f) == {"name": "x", "list": [1, 2]}
    f.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_yaml(f)
    f.write_bytes(b"a: 1\n" + b"#" * MAX_BYTES)
    with pytest.raises(ConfigError, match="larger than"):
        read_yaml(f)
    with pytest.raises(ConfigError, match="not a regular file"):
        read_yaml(tmp_path)


def test_yaml12_core_schema():
    got = load_yaml_text("""
        t1: 45:00
        t2: 1:30:00
        t3: 2-00:00:00
        words: [no, off, on, yes, y, n, No, OFF, Yes]
        bools: [true, false, True, FALSE]
        floats: [3e-4, 1e3, 1.5, -.5, .inf, -.Inf]
        ints: [010, 0o17, 0x1F, -3, +4]
        date: 2001-12-14
        nulls: [~, null, Null, NULL]
        empty:
        quoted: ['45:00', "true"]
        no: key
    """.replace("\n        ", "\n"))
    assert got["t1"] == "45:00" and got["t2"] == "1:30:00" and got["t3"] == "2-00:00:00"
    assert got["words"] == ["no", "off", "on", "yes", "y", "n", "No", "OFF", "Yes"]
    assert got["bools"] == [True, False, True, False]
    assert got["floats"][:4] == [3e-4, 1000.0, 1.5, -0.5] and got["floats"][4:] == [math.inf, -math.inf]
    assert all(isinstance(x, float) for x in got["floats"])
    assert got["ints"] == [10, 15, 31, -3, 4]
    assert got["date"] == "2001-12-14" and got["nulls"] == [None] * 4
    assert got["empty"] is None
    assert got["quoted"] == ["45:00", "true"] and got["no"] == "key"
    assert math.isnan(load_yaml_text("x: .nan")["x"])


def test_unsafe_and_unknown_tags_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    for text in (f"a: !!python/object/apply:os.system ['touch {marker}']",
                 "a: !!python/name:os.system", "a: !!binary aGk=", "a: !!set {x}",
                 "a: !!timestamp 2001-12-14", "a: !custom x", "a: !!int 45:00", "a: !!bool yes",
                 "? [a, b]\n: 1", "a: " + "9" * 5000):
        with pytest.raises(ConfigError):
            load_yaml_text(text)
    assert not marker.exists()
    assert load_yaml_text("a: !!str 45\nb: !!float 3") == {"a": "45", "b": 3.0}


def test_messages_are_short_and_one_line():
    assert len(shown("x" * 10_000)) <= 100
    assert shown(list(range(10 ** 5))) == "a list of 100000 items"
    e = ConfigError("scales." + "n" * 100_000 + "\nfake line", "bad")
    assert len(str(e)) < 300 and "\n" not in str(e)
    with pytest.raises(ConfigError) as e:
        Section({"partition": "gpu\n#SBATCH --uid=0"}, "slurm.defaults").get("partition", str)
    assert "control characters" in str(e.value)
    for bad in (math.inf, math.nan, 10 ** 400):
        with pytest.raises(ConfigError, match="finite|64 bits"):
            Section({"x": bad}, "s").get("x", float)
    with pytest.raises(ConfigError, match="64 bits"):
        Section({"x": 2 ** 64}, "s").get("x", int)


# ------------------------------------------------------------------------ failing disk writes

_FULL_DISK = """
import resource, signal, sys
from s2l.config import Section
from s2l.data import DataConfig, prepare_data
cfg = DataConfig.from_sections(Section({
    "seq_len": 32, "tokenizer": {"vocab_size": 300}, "max_mb_per_domain": 0.2,
    "cache_dir": sys.argv[1],
    "domains": {"quotes": {"source": "builtin", "name": "fortunes"},
                "glossary": {"source": "builtin", "name": "foldoc"}}}, "data"),
    Section({"heldout": {"kind": "heldout", "samples_per_domain": 4}}, "test_sets"))
# a file may not grow past 20 kB: the token streams hit it as they would a full disk
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
try:
    prepare_data(cfg)
except OSError as e:
    print("OSError", e)
"""


def test_write_failure_is_an_oserror_naming_the_directory_and_leaves_no_temporary(tmp_path):
    cache = tmp_path / "cache"
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK, str(cache)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("OSError"), proc.stdout + proc.stderr[-3000:]
    assert str(cache) in proc.stdout
    left = sorted(p.name for p in cache.iterdir())
    assert len(left) == 1 and left[0].endswith(".lock"), left  # no *.tmp-<pid>, no half build
