"""The layering contract (`[tool.importlinter]` in pyproject.toml, docs/architecture.md).

`lint-imports` must pass on the checkout, every contract having run, and must fail, naming the
broken contract and the offending import, on a copy of the code with one deliberate violation
of each kind: the library importing its dispatcher, a lower layer of s2l importing a higher
one, a heavy library outside its seam, and an import cycle between sibling modules. Without
the second half a contract that checks nothing (a typo in a module name, a folder that is not
linted) would pass silently.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: what lint-imports reads: the config, the two packages and the two script folders
LINTED = ("pyproject.toml", "s2l", "hpc", "analysis", "benchmarks")


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    """Run the venv's `lint-imports` from `cwd` (which it puts first on sys.path, so the
    packages under `cwd` are the ones analysed, not the installed ones)."""
    exe = Path(sys.executable).parent / "lint-imports"
    if not exe.exists():
        pytest.fail(f"{exe} not found: install the test extra (pip install -e '.[test]')")
    # wide "terminal": the report wraps long lines at COLUMNS, which would split names
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([str(exe), "--no-cache", "--no-logo"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def contract_names() -> list[str]:
    try:
        import tomllib
    except ImportError:  # Python 3.10: import-linter brings tomli
        import tomli as tomllib
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return [c["name"] for c in config["contracts"]]


def test_contracts_hold():
    res = lint_imports(ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    names = contract_names()
    assert len(names) >= 6  # layers (2), seams (3), cycles (1)
    for name in names:  # every contract ran and held; none was silently dropped
        assert f"{name} KEPT" in res.stdout, res.stdout


def test_script_folders_resolve_to_this_checkout():
    # `analysis/` and `benchmarks/` are linted as namespace packages: a stray regular package
    # of the same name elsewhere on sys.path would be linted instead, and the contract would
    # say nothing about the scripts.
    code = ("import importlib.util as u; "
            "print('\\n'.join(str(list(u.find_spec(n).submodule_search_locations)) "
            "for n in ('analysis', 'benchmarks')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == [str([str(ROOT / "analysis")]), str([str(ROOT / "benchmarks")])]


# kind -> (files to write or extend in the copy, contract that must break, evidence in its
# report). Only files the contracts themselves name are touched (s2l/config.py, s2l/store.py),
# or new ones, so the test does not depend on the rest of the layout.
VIOLATIONS = {
    # an arrow pointing up: the library must not know its dispatcher
    "upward": ({"s2l/store.py": "import hpc  # deliberate violation\n"},
               "s2l never imports hpc or the scripts; they never import each other",
               "s2l.store -> hpc"),
    # the bottom layer of s2l importing a building block above it
    "s2l-layers": ({"s2l/config.py": "import s2l.tracking  # deliberate violation\n"},
                   "s2l layers: study kinds > methods > building blocks > config",
                   "s2l.config -> s2l.tracking"),
    # a seam library outside its one module
    "seam": ({"s2l/config.py": "import zarr  # deliberate violation\n"},
             "zarr only in s2l.store", "s2l.config -> zarr"),
    # a cycle between two sibling modules below the top level
    "cycle": ({"s2l/data/cycle_a.py": "import s2l.data.cycle_b  # deliberate violation\n",
               "s2l/data/cycle_b.py": "import s2l.data.cycle_a  # deliberate violation\n"},
              "no import cycles between sibling modules, at any depth",
              "No cycles are allowed in s2l.data"),
}


def copy_linted(dest: Path) -> None:
    for name in LINTED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dest / name)


@pytest.mark.parametrize("kind", sorted(VIOLATIONS))
def test_deliberate_violation_is_caught(kind, tmp_path):
    edits, contract, evidence = VIOLATIONS[kind]
    copy_linted(tmp_path)
    for module, line in edits.items():
        target = tmp_path / module
        old = target.read_text() if target.exists() else ""
        target.write_text(old + "\n" + line)

    res = lint_imports(tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    broken = out.split("Broken contracts", 1)[-1]
    assert f"{contract} BROKEN" in out, out
    assert evidence in broken, out
