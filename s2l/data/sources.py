"""A domain's documents, from whichever source the config names.

Hub names and local files go through the same call, `datasets.load_dataset(path, config,
split=..., data_files=...)`: a hub name ("wikitext") and a builder name with local files
("json" + data_files) differ only in arguments, so the tests of local files exercise the code
that reads the hub on a cluster.
"""
from __future__ import annotations

import contextlib
import errno

from s2l.config import ConfigError
from s2l.data.config import DataConfig, DomainConfig
from s2l.data.corpus import BUILTINS, MB, cap_documents

# I/O failures of this machine rather than of the source: they stay OSErrors
_LOCAL_IO = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG, errno.ENOMEM}


@contextlib.contextmanager
def reading(where: str, what: str):
    """Turn a failure to read a user-named source (not found, unreachable, malformed, missing
    fields) into a ConfigError at the key path `where`; a full disk stays an OSError."""
    try:
        yield
    except ConfigError:
        raise
    except OSError as e:
        if e.errno in _LOCAL_IO:
            raise
        raise ConfigError(where, f"cannot read {what}: {_first_line(e)}") from None
    except Exception as e:  # datasets/pyarrow/json errors of a malformed source
        raise ConfigError(where, f"cannot read {what}: {type(e).__name__}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    line = lines[0] if lines else type(e).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def load_rows(path: str, config: str | None = None, split: str = "train",
              data_files: tuple[str, ...] | list[str] = (), **kwargs):
    """`datasets.load_dataset` with our arguments; returns a `datasets.Dataset` (row order
    is the file order, so iteration is deterministic)."""
    import datasets  # lazy: importing datasets costs ~1 s, and builtin domains do not need it

    args = dict(split=split, **kwargs)
    if data_files:
        args["data_files"] = list(data_files)
    return datasets.load_dataset(path, config, **args)


def domain_documents(cfg: DataConfig, dc: DomainConfig) -> list[str]:
    """The domain's documents in a fixed order, at most `cfg.max_mb_per_domain` MB of text.
    Local `files` are not capped: a user who lists files wants all of them."""
    max_bytes = int(cfg.max_mb_per_domain * MB)
    if dc.source == "builtin":
        return cap_documents(BUILTINS[dc.builtin](), max_bytes, salt=dc.name)
    if dc.source == "hub":
        rows = load_rows(dc.path, dc.config, dc.split, dc.data_files)
        docs, total = [], 0
        for text in _texts(rows, dc):
            # hub sets can be huge: take them in order until the cap instead of reading all
            if total >= max_bytes:
                break
            docs.append(text)
            total += len(text.encode("utf-8", "replace"))
        return docs
    extra = {"sample_by": "document"} if dc.format == "text" else {}  # a text file = a document
    rows = load_rows(dc.format, None, "train", dc.data_files, **extra)
    return list(_texts(rows, dc))


def _texts(rows, dc: DomainConfig):
    if dc.text_field not in rows.column_names:
        raise ValueError(f"domain {dc.name!r}: no field {dc.text_field!r} in {dc.path!r}; "
                         f"fields are {rows.column_names} (set text_field)")
    for text in rows[dc.text_field]:
        if isinstance(text, str) and text.strip():
            yield text
