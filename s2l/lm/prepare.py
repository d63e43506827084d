"""Data preparation as stages of the LM sweep: tokenizer -> shards (one task each) -> finalize.

The sweep's prepared data (`s2l.data.shards`, layout in docs/data.md) is built by tasks that
`hpc/` dispatches like the cells, never by the submit driver:

    data-tokenizer   1 task        `build_tokenizer`: BPE on a bounded sample (or pretrained)
    data-shards      1 per shard   `tokenize_shard`: one slice of one domain -> its token file
    data-finalize    1 task        `finalize` (test suite, index, COMPLETE), then the sweep's
                                   loss store (`make_store`: it needs the test suite)

On Slurm the three are arrays chained `afterok` before the cells; locally they are processes.
`data_stages` returns none of them when the data is complete already (a cache hit: the driver
then creates the store itself, cheaply) or when every cell is done.

Whether a data task is done is the data's own business, not a marker's: `is_done` asks
`s2l.data.shards` (`tokenizer_done`, `shard_done`: the shard's files exist with its
fingerprint and the tokenizer's hash), so a re-run redoes exactly the unfinished or changed
shards, whoever prepared the others (another sweep sharing the cache, `prepare_data`). The
runner still writes a marker under `<out>/.s2l/done/<stage>/`; it is never read.

Per task, `<out>/.s2l/data/<key>.progress.json` (while a shard runs: tokens, tokens/s, bytes
done; read by `Task.progress()` for the live display) and `<out>/.s2l/data/<key>.json` (when
it ends: the shard's stats plus the worker's peak RSS) are written; `data_report` sums them.

Everything here is picklable and small: a shard task carries a plan that holds its own
`ShardSpec` only (a 10,000-shard plan is not shipped 10,000 times).
"""
from __future__ import annotations

import dataclasses
import json
import os
import resource
import time
from pathlib import Path

from s2l.data.config import DataConfig
from s2l.tasks import DATA_GROUP, Task, marker_path

TOKENIZER_STAGE, SHARDS_STAGE, FINALIZE_STAGE = "data-tokenizer", "data-shards", "data-finalize"
DATA_STAGES = (TOKENIZER_STAGE, SHARDS_STAGE, FINALIZE_STAGE)
#: text of each streamed source read at submit to catch a wrong path, format or text field
#: before anything is submitted (`probe_sources`)
PROBE_BYTES = 1 << 20
PROGRESS_EVERY_S = 1.0


def complete(root: Path) -> bool:
    """The prepared directory `root` is finished (COMPLETE written last)."""
    from s2l.data.cache import COMPLETE

    return (Path(root) / COMPLETE).exists()


def report_dir(out: Path) -> Path:
    return Path(out) / ".s2l" / "data"


def _report_path(out: Path, key: str, suffix: str) -> Path:
    return report_dir(out) / f"{key.replace('/', '__')}{suffix}"


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclasses.dataclass
class _DataTask(Task):
    """What the data tasks share: the data config, the plan (or its part this task needs),
    the sweep's out dir (markers, reports) and the data resource group."""

    cfg: DataConfig
    plan: object  # s2l.data.plan.DataPlan
    out: Path
    stage = ""

    @property
    def group(self) -> str:
        return DATA_GROUP

    @property
    def marker(self) -> Path:
        return marker_path(self.out, self.stage, self.key)

    def _report(self, stats: dict, t0: float, c0: float) -> dict:
        """Write the task's end report (stats + wall, CPU seconds and peak RSS of this worker)."""
        rep = {**stats, "task": self.key, "stage": self.stage, "started": t0, "ended": time.time(),
               "wall_s": round(time.time() - t0, 3),
               "cpu_s": round(time.process_time() - c0, 3), "peak_rss_mb": round(peak_rss_mb(), 1),
               "pid": os.getpid()}
        _write_json(_report_path(self.out, self.key, ".json"), rep)
        print(f"[s2l.data] {self.stage}/{self.key}: " + ", ".join(
            f"{k}={rep[k]}" for k in ("train_tokens", "tokens_per_s", "wall_s", "cpu_s",
                                      "peak_rss_mb", "reused") if k in rep), flush=True)
        return rep


@dataclasses.dataclass
class TokenizerTask(_DataTask):
    """Train the BPE on its bounded sample (one pass over every source), or load the
    pretrained tokenizer; writes `<root>/tokenizer/` and its TOKENIZER mark."""

    stage = TOKENIZER_STAGE

    @property
    def key(self) -> str:
        return "tokenizer"

    @property
    def fingerprint(self) -> str:
        return self.plan.tokenizer_fingerprint

    def is_done(self) -> bool:
        from s2l.data.shards import tokenizer_done

        return tokenizer_done(self.cfg, self.plan)

    def run(self) -> dict:
        from s2l.data.shards import build_tokenizer

        t0, c0 = time.time(), time.process_time()
        build_tokenizer(self.cfg, self.plan)
        return self._report({}, t0, c0)


@dataclasses.dataclass
class ShardTask(_DataTask):
    """Tokenize one shard (`plan.shards == [spec]`): its token file, held-out documents and
    stats, written atomically. Memory: one chunk of documents plus the interpreter (a builtin
    shard also holds its domain's document list, tens of MB)."""

    stage = SHARDS_STAGE

    @property
    def spec(self):
        return self.plan.shards[0]

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def fingerprint(self) -> str:
        return self.spec.fingerprint

    def is_done(self) -> bool:
        from s2l.data.shards import shard_done

        return shard_done(self.plan, self.spec)

    def progress(self) -> tuple[float, str] | None:
        try:
            p = json.loads(_report_path(self.out, self.key, ".progress.json").read_text())
            frac = min(1.0, p["bytes"] / max(1, p["approx_bytes"]))
            return frac, f"{p['tokens'] / 1e6:.1f}M tok, {p['tokens_per_s'] / 1e6:.2f}M tok/s"
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def run(self) -> dict:
        from s2l.data.shards import tokenize_shard

        t0, c0 = time.time(), time.process_time()
        path = _report_path(self.out, self.key, ".progress.json")
        path.unlink(missing_ok=True)  # a killed attempt's progress is not this one's
        last = [0.0]

        def on_progress(p: dict) -> None:
            if time.time() - last[0] >= PROGRESS_EVERY_S:  # a small file, not every chunk
                last[0] = time.time()
                _write_json(path, p)

        stats = tokenize_shard(self.cfg, self.plan, self.spec, progress=on_progress)
        path.unlink(missing_ok=True)
        return self._report(dict(stats), t0, c0)


@dataclasses.dataclass
class FinalizeTask(_DataTask):
    """Finish the prepared data (test suite, index, COMPLETE), then create the sweep's loss
    store, which needs the test suite. Done when both exist: a cache finished meanwhile by
    another sweep still leaves this sweep's store to create."""

    sweep: object = None  # s2l.lm.config.SweepConfig
    stage = FINALIZE_STAGE

    @property
    def key(self) -> str:
        return "finalize"

    @property
    def fingerprint(self) -> str:
        return self.plan.root.name

    def is_done(self) -> bool:
        return complete(self.plan.root) and (self.out / "losses.zarr").exists()

    def run(self) -> dict:
        from s2l.data.shards import finalize

        t0, c0 = time.time(), time.process_time()
        root = finalize(self.cfg, self.plan)
        make_store(self.sweep, self.out, root)
        return self._report({}, t0, c0)


def data_stages(sweep, out: Path, plan) -> list:
    """The three data stages (`s2l.tasks.Stage`) for `sweep`'s data `plan`; [] when the
    prepared data is complete."""
    from s2l.tasks import Stage

    if complete(plan.root):
        return []
    cfg = sweep.data
    one = dataclasses.replace  # a shard task's plan holds its own spec only (small pickles)
    return [
        Stage(TOKENIZER_STAGE, [TokenizerTask(cfg, plan, Path(out))]),
        Stage(SHARDS_STAGE, [ShardTask(cfg, one(plan, shards=[s]), Path(out)) for s in plan.shards]),
        Stage(FINALIZE_STAGE, [FinalizeTask(cfg, plan, Path(out), sweep=sweep)]),
    ]


def make_store(sweep, out: Path, data_dir: Path) -> str:
    """Create (or keep, or migrate) `<out>/losses.zarr` for `sweep` with full coordinates; the
    test-set coordinate comes from the prepared data's test suite. Returns what
    `s2l.store.create_store` did."""
    import numpy as np

    from s2l import store as loss_store
    from s2l.data.testsets import TestSuite

    suite = TestSuite.load(Path(data_dir))
    cells = sweep.cells()
    layout = loss_store.StoreLayout(
        scales=[s.name for s in sweep.scales],
        params=[s.params for s in sweep.scales],
        flops=[s.flops for s in sweep.scales],
        mixtures=[m.name for m in sweep.mixtures],
        seeds=list(sweep.seeds),
        domains=list(sweep.data.domains),
        weights=np.array([[w for _, w in m.weights] for m in sweep.mixtures]),
        test_set=list(suite.sample_test_set),
        multiple_choice=bool((suite.answer >= 0).any()),
        cell_ids={c.key: c.id for c in cells},
        attrs={"sweep": sweep.name, "sweep_yaml": sweep.yaml_text,
               "chance": dict(suite.chance), "tokens": {s.name: s.tokens for s in sweep.scales}},
    )
    return loss_store.create_store(Path(out) / "losses.zarr", layout)


def probe_sources(cfg: DataConfig, plan, max_bytes: int = PROBE_BYTES) -> None:
    """Cheap checks at submit, before anything is written or submitted: read the first
    `max_bytes` of text of every streamed domain (through the reader of its first shard) and
    load the real benchmark test sets (a few hundred rows each). A wrong path, format or
    text field, an unreachable hub set or a malformed first row is then a ConfigError at its
    key path (exit 2), not a failed job an hour later. A defect deeper in a file is found by
    the task that reads it (its log names the key path)."""
    from s2l.data.shards import load_benchmarks
    from s2l.data.sources import reading
    from s2l.data.streams import shard_documents

    for dc in cfg.domain_configs:
        if dc.source == "builtin":
            continue  # installed with the package: nothing the user can get wrong
        first = next((s for s in plan.shards if s.domain == dc.name), None)
        if first is None:
            continue
        with reading(f"data.domains.{dc.name}.path", f"{dc.source} source {dc.path!r}"):
            seen = 0
            for text, _ in shard_documents(cfg, first):
                seen += len(text.encode("utf-8", "replace"))
                if seen >= max_bytes:
                    break
    load_benchmarks(cfg)


def data_report(out: Path) -> dict:
    """Totals of the data tasks' end reports under `<out>/.s2l/data/`: shards, tokens, the
    sum of their wall and CPU seconds, and the largest peak RSS per stage (MiB)."""
    reps = []
    for p in sorted(report_dir(out).glob("*.json")):
        if p.name.endswith(".progress.json"):
            continue
        try:
            reps.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue
    shards = [r for r in reps if r.get("stage") == SHARDS_STAGE]
    tokens = sum(r.get("train_tokens", 0) + r.get("heldout_tokens", 0) for r in shards)
    out_d = {"shards": len(shards), "tokens": tokens,
             "shard_wall_s": round(sum(r.get("wall_s", 0) for r in shards), 2),
             "shard_cpu_s": round(sum(r.get("cpu_s", 0) for r in shards), 2),
             "reused": sum(1 for r in shards if r.get("reused"))}
    for stage in DATA_STAGES:
        rss = [r["peak_rss_mb"] for r in reps if r.get("stage") == stage and "peak_rss_mb" in r]
        out_d[f"peak_rss_mb.{stage}"] = max(rss) if rss else None
    return out_d

