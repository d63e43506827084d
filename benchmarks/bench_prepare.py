#!/usr/bin/env python
"""Benchmark: sharded data preparation of a >= 1 GB local corpus, as the sweep's data stages.

    python benchmarks/bench_prepare.py corpus /tmp/corpus-1g [--gb 1.0]
    python benchmarks/bench_prepare.py local  /tmp/corpus-1g [--workers 1 2] [--shard-mb 64] [--base DIR]
    python benchmarks/bench_prepare.py kill   /tmp/corpus-1g [--after 3] [--shard-mb 64] [--base DIR]
    python benchmarks/bench_prepare.py slurm  /tmp/corpus-1g [--shard-mb 64] [--base DIR]

(`kill` compares with the token files of `local --workers 1`'s run in the same --base.)

`corpus` writes the corpus (never committed): the built-in extractors' documents (python
stdlib, GCIDE, the KJV bible, perldoc; `s2l.data.corpus`) repeated and shuffled
deterministically (repetition r is a seeded permutation of the domain's documents) into
`DIR/<domain>/part-NNN.jsonl` files of about 128 MB, `{"text": ...}` per line, until the
corpus holds `--gb` GiB of text (the UTF-8 bytes of the documents, not of the JSON).

`local` submits a one-cell sweep over the corpus (`hpc/submit.py --cluster local
--max-parallel N`, run inside a fresh interpreter so that its ru_maxrss is the driver's), once
per `--workers` value, each in a fresh cache directory under --base, so the data stages
(data-tokenizer -> data-shards -> data-finalize) run as local processes before the cell; it
prints the wall time from submit to the end of finalize, tokens/s, tokens per CPU-second of
the shard tasks, and the peak RSS of the driver and of the workers (each data task reports its
own ru_maxrss in `OUT/.s2l/data/<key>.json`). `slurm` does the same with `--cluster slurm`
(the shards as one job array) and prints `sacct` of the shard tasks.
`kill` runs an undisturbed preparation, then a second one in a new cache that is SIGKILLed
(driver and its jobs' process groups) after `--after` shards are done, re-runs it, and
compares: which shards the re-run redid, and the sha256 of every token file of both.

Everything runs single-threaded per worker (OMP_NUM_THREADS=1, RAYON_NUM_THREADS=1 for the
tokenizers library), so 2 workers use the 2 cores of a development machine.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `hpc` and `s2l` importable
    sys.path.insert(0, str(ROOT))

#: corpus domain -> built-in extractor (s2l.data.corpus.BUILTINS)
DOMAINS = {"code": "python", "dictionary": "gcide", "scripture": "bible", "manual": "perldoc"}
PART_BYTES = 128 << 20
GB = 1 << 30

for _k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS", "TOKENIZERS_PARALLELISM"):
    os.environ.setdefault(_k, "false" if _k == "TOKENIZERS_PARALLELISM" else "1")


# ------------------------------------------------------------------------------ the corpus

def build_corpus(out: Path, gb: float) -> dict:
    """Write the corpus under `out` (see the module docstring); returns its manifest.

    Memory: one domain's documents (tens of MB) at a time; the output is streamed."""
    from s2l.data.corpus import BUILTINS

    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("gb") == gb:
            print(f"corpus {out} exists ({manifest['bytes'] / GB:.2f} GiB of text)")
            return manifest
    shutil.rmtree(out, ignore_errors=True)
    per_domain = int(gb * GB) // len(DOMAINS) + 1
    manifest = {"gb": gb, "bytes": 0, "docs": 0, "domains": {}}
    t0 = time.time()
    for domain, builtin in DOMAINS.items():
        docs = BUILTINS[builtin]()
        (out / domain).mkdir(parents=True)
        written = n_docs = part = part_bytes = 0
        f = open(out / domain / f"part-{part:03d}.jsonl", "w", encoding="utf-8")
        rep = 0
        while written < per_domain:
            order = list(range(len(docs)))
            random.Random(f"{domain}-{rep}").shuffle(order)  # deterministic per repetition
            for i in order:
                if written >= per_domain:
                    break
                line = json.dumps({"text": docs[i]}, ensure_ascii=False) + "\n"
                if part_bytes >= PART_BYTES:
                    f.close()
                    part += 1
                    part_bytes = 0
                    f = open(out / domain / f"part-{part:03d}.jsonl", "w", encoding="utf-8")
                f.write(line)
                part_bytes += len(line.encode("utf-8"))
                written += len(docs[i].encode("utf-8", "replace"))
                n_docs += 1
            rep += 1
        f.close()
        manifest["domains"][domain] = {"builtin": builtin, "bytes": written, "docs": n_docs,
                                       "files": part + 1, "repetitions": rep}
        manifest["bytes"] += written
        manifest["docs"] += n_docs
        print(f"  {domain}: {written / 2**20:.0f} MiB of text, {n_docs} documents, "
              f"{part + 1} files ({time.time() - t0:.0f} s)", flush=True)
    manifest_path.write_text(json.dumps(manifest, indent=1))
    print(f"corpus {out}: {manifest['bytes'] / GB:.2f} GiB of text in {time.time() - t0:.0f} s")
    return manifest



# ------------------------------------------------------------------------------ the sweep

SHARD_MB = 64.0  # `data.shard_mb` of the benchmark's sweep (--shard-mb)


def sweep_file(corpus: Path, cache: Path, path: Path) -> Path:
    """A sweep over the corpus's domains with one tiny cell (the data stages are what is
    measured; the cell shows the prepared data is used)."""
    import yaml

    raw = {"name": "bench-prepare", "seeds": [0],
           "scales": {"xs": {"d_model": 16, "n_layers": 1, "n_heads": 2, "tokens": 4000}},
           "data": {"seq_len": 64, "tokenizer": {"vocab_size": 1024}, "cache_dir": str(cache),
                    "shard_mb": SHARD_MB,
                    "domains": {d: {"source": "files", "path": str(corpus / d / "*.jsonl")}
                                for d in DOMAINS}},
           "mixtures": {"uniform": {"weights": {d: 1 for d in DOMAINS}}},
           "test_sets": {"heldout": {"kind": "heldout", "samples_per_domain": 20}},
           "train": {"batch_size": 8, "log_every": 10, "checkpoint_every": 1000},
           "slurm": {"poll_s": 2, "data": {"time": "2:00:00"}}}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_submit(sweep: Path, out: Path, cluster: str, workers: int | None) -> dict:
    """`hpc/submit.py` IN THIS PROCESS (so ru_maxrss of this process is the driver's: the
    benchmark adds only the import of s2l.lm.prepare), then
    the data tasks' own reports; returns the figures."""
    import runpy

    from s2l.lm.prepare import data_report, report_dir

    t0 = time.time()
    argv = [str(sweep), "--out", str(out), "--cluster", cluster]
    if workers:
        argv += ["--max-parallel", str(workers)]
    # run as the script (benchmarks never import hpc: the layering contract), in this process
    sys.argv = [str(ROOT / "hpc" / "submit.py"), *argv]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code
    wall = time.time() - t0
    reps = [json.loads(p.read_text()) for p in report_dir(out).glob("*.json")
            if not p.name.endswith(".progress.json")]
    ends = [r["ended"] for r in reps if r.get("stage") == "data-finalize"]
    shards = [r for r in reps if r.get("stage") == "data-shards"]
    total = data_report(out)
    prep_wall = (max(ends) - t0) if ends else None
    return {"exit": code, "cluster": cluster, "workers": workers, "submit_wall_s": round(wall, 1),
            "prep_wall_s": round(prep_wall, 1) if prep_wall else None,
            "tokens": total["tokens"], "shards": total["shards"],
            "tokens_per_s": round(total["tokens"] / prep_wall) if prep_wall else None,
            "shard_cpu_s": total["shard_cpu_s"],
            "tokens_per_cpu_s": round(total["tokens"] / max(total["shard_cpu_s"], 1e-9)),
            "shard_bytes_max_mb": round(max((r.get("train_bytes", 0) + r.get("heldout_bytes", 0)
                                             for r in shards), default=0) / 2**20, 1),
            "worker_peak_rss_mb": {k.split(".", 1)[1]: v for k, v in total.items()
                                   if k.startswith("peak_rss_mb.")},
            "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "loadavg": os.getloadavg()}


def _child(args: list[str]) -> dict:
    """Run `_run ...` in a fresh interpreter (a clean ru_maxrss for each measurement)."""
    r = subprocess.run([sys.executable, __file__, "_run", *args], cwd=ROOT, text=True,
                       stdout=subprocess.PIPE)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        raise SystemExit(f"run {args} printed no result (exit {r.returncode})")
    return json.loads(lines[-1][len("RESULT "):])


def show(res: dict) -> None:
    print(f"  {res['cluster']} workers={res['workers']}: exit {res['exit']}; {res['shards']} shards, "
          f"{res['tokens'] / 1e6:.1f}M tokens in {res['prep_wall_s']} s (submit start -> finalize end) "
          f"= {res['tokens_per_s'] / 1e6:.2f}M tokens/s; shard tasks {res['shard_cpu_s']} CPU-s = "
          f"{res['tokens_per_cpu_s'] / 1e6:.2f}M tokens per CPU-second; largest shard "
          f"{res['shard_bytes_max_mb']} MB of text; peak RSS: driver {res['driver_peak_rss_mb']} MB, "
          f"workers {res['worker_peak_rss_mb']} MB; load average {res['loadavg']}", flush=True)


def sha256s(root: Path) -> dict[str, str]:
    """sha256 of every shard token file under a prepared directory, by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / "shards").rglob("*.bin"))}


def prepared_root(cache: Path) -> Path:
    roots = [p.parent for p in cache.glob("*/COMPLETE")]
    if len(roots) != 1:
        raise SystemExit(f"{cache}: expected one prepared directory, found {roots}")
    return roots[0]


def kill_run(corpus: Path, base: Path, after: int, reference: Path) -> None:
    """Prepare in a new cache, SIGKILL the driver once `after` shards are done (its local
    jobs die with it), re-run, and compare with the undisturbed `reference` root."""
    cache, out = base / "cache-kill", base / "out-kill"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    sweep = sweep_file(corpus, cache, base / "kill.yaml")
    proc = subprocess.Popen([sys.executable, "hpc/submit.py", str(sweep), "--out", str(out),
                             "--cluster", "local"], cwd=ROOT, stdout=open(base / "kill-1.log", "w"),
                            stderr=subprocess.STDOUT)
    reports = out / ".s2l" / "data"
    done_before: dict[str, dict] = {}
    while proc.poll() is None:
        shard_reps = [p for p in reports.glob("*.json") if not p.name.endswith(".progress.json")
                      and "__" in p.name]
        if len(shard_reps) >= after:
            time.sleep(1.0)  # let a running shard get half way: its tmp file must not count
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.5)
    time.sleep(2)  # die_with_driver: the jobs kill their own process groups within 0.5 s
    for p in reports.glob("*__*.json"):
        if not p.name.endswith(".progress.json"):
            done_before[p.name] = json.loads(p.read_text())
    tmp_left = sorted(str(p.relative_to(cache)) for p in cache.rglob("*.tmp-*"))
    print(f"  killed the driver (pid {proc.pid}, SIGKILL) with {len(done_before)} shards done; "
          f"temporary files left by the killed shard(s): {tmp_left}", flush=True)
    res = _child([str(sweep), str(out), "local", "2"])
    show(res)
    redone = []
    for p in reports.glob("*__*.json"):
        if p.name.endswith(".progress.json"):
            continue
        rep = json.loads(p.read_text())
        if p.name not in done_before or rep["pid"] != done_before[p.name]["pid"]:
            redone.append(rep["task"])
    kept = sorted(r["task"] for r in done_before.values())
    print(f"  re-run: redid {len(redone)} shards {sorted(redone)}; kept {len(kept)} {kept}")
    assert not set(redone) & set(kept), "a finished shard was tokenized again"
    a, b = sha256s(reference), sha256s(prepared_root(cache))
    same = a == b
    print(f"  token files: {len(b)} in the killed+resumed run, {len(a)} in the undisturbed one; "
          f"sha256 all identical: {same}")
    for k in sorted(a)[:3]:
        print(f"    {k}: {a[k][:16]}... vs {b.get(k, '-')[:16]}...")
    assert same, {k for k in a if a[k] != b.get(k)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "_run":  # internal: one submit in this process
        sweep, out, cluster, workers = argv[1:5]
        res = run_submit(Path(sweep), Path(out), cluster, int(workers) or None)
        print("RESULT " + json.dumps(res), flush=True)
        return 0
    ap.add_argument("command", choices=["corpus", "local", "slurm", "kill"])
    ap.add_argument("corpus_dir", type=Path)
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--base", type=Path, default=Path("/tmp/d2-bench"),
                    help="caches and out dirs go here (default /tmp/d2-bench)")
    ap.add_argument("--after", type=int, default=3, help="kill: shards done before the kill")
    ap.add_argument("--shard-mb", type=float, default=SHARD_MB, help="data.shard_mb of the sweep")
    args = ap.parse_args(argv)
    globals()["SHARD_MB"] = args.shard_mb
    if args.command == "corpus":
        build_corpus(args.corpus_dir, args.gb)
        return 0
    corpus = args.corpus_dir.resolve()
    args.base.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {_cpu()}; {os.cpu_count()} cores", flush=True)
    if args.command == "kill":
        kill_run(corpus, args.base, args.after, prepared_root(args.base / "cache-w1"))
        return 0
    runs = [("slurm", 0)] if args.command == "slurm" else [("local", w) for w in args.workers]
    for cluster, w in runs:
        tag = f"{cluster}-w{w}" if cluster == "local" else "slurm"
        cache, out = args.base / f"cache-{tag.split('-', 1)[-1]}", args.base / f"out-{tag}"
        if cluster == "slurm":
            cache = args.base / "cache-slurm"
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        sweep = sweep_file(corpus, cache, args.base / f"{tag}.yaml")
        res = _child([str(sweep), str(out), cluster, str(w)])
        show(res)
        (args.base / f"{tag}.json").write_text(json.dumps(res, indent=1))
        if cluster == "slurm":
            rec = json.loads((out / ".s2l" / "jobs.json").read_text())
            ids = sorted({v["job_id"].split("_")[0] for k, v in rec.items()
                          if k.startswith("data-shards/")})
            r = subprocess.run(["sacct", "-X", "-o", "JobID,JobName%22,State,Elapsed,MaxRSS,ReqMem",
                                "-j", ",".join(ids)], capture_output=True, text=True)
            print(r.stdout)
    return 0


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(ln.split(":", 1)[1].strip() for ln in out.splitlines()
                    if ln.startswith("Model name"))
    except (OSError, StopIteration):
        return "?"


if __name__ == "__main__":
    sys.exit(main())
