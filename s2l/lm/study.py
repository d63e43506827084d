"""The LM sweep as a study: cells trained and evaluated on their own, in one or three stages,
after the data preparation's stages.

Without a `reference:` block the sweep's cells are one stage, "cells" (`s2l.lm.cell.CellTask`).
With one they are three (`s2l.lm.staged`): "proxies" (every scale but the reference),
"predict" (one task that writes the pre-registered prediction) and "reference" (the reference
scale's cells, all of them or, with `top_k`, those the prediction selects).

Before them, unless the prepared data is complete already or every cell is done, come the
data stages of `s2l.lm.prepare`: "data-tokenizer" -> "data-shards" (one task per shard) ->
"data-finalize" (which also creates the loss store: it needs the test suite). The driver's
`prepare()` does only cheap things: plan the shards (file sizes, no text), probe each
streamed source's first MB, create the out dir, `sweep.yaml`, the MLflow sweep run, and the
store when the data is already prepared.

Files of a sweep (`<out>` defaults to `runs/<name>`):
    losses.zarr/                 the per-sample loss store (s2l.store)
    mlflow.db, mlartifacts/      tracking, unless a server URI is given
    sweep.yaml                   the sweep file as submitted
    cells/<scale>/<mixture>/<seed>/   ckpt.pt (while training), progress.json, DONE, cell.json
                                 (SKIPPED instead of results: a reference cell not selected)
    predictions/                 prediction.json, prediction.sha256, score.json, score.csv

The DONE file is the cell's completion marker (`s2l.tasks`: key + cell id, written by the
runner after `run()`); the MLflow child run is logged in `publish()`, after the marker.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from s2l import tracking
from s2l.config import tracking_uri as checked_tracking_uri
from s2l.lm import prepare as data_prep
from s2l.lm.cell import CellTask, code_version
from s2l.lm.config import SweepConfig, parse_sweep
from s2l.tasks import Stage, Study, register


#: finalize encodes all the held-out text it reads at once: measured 1.93 GB peak RSS for
#: ~51 MB of held-out text (benchmarks/bench_prepare.py, 1 GiB corpus, 4 domains), about 12x
#: what hpc.resources allows per byte of a shard (3 GB per GB + 1 GB)
FINALIZE_WEIGHT = 12


class LMStudy(Study):
    def __init__(self, config: SweepConfig, raw: dict, out: Path, tracking_uri: str | None = None):
        self.config = config
        self.raw = raw
        self.name = config.name
        self.out = Path(out)
        self.tracking_uri = tracking_uri or config.tracking.uri or tracking.default_uri(self.out)
        self.experiment = config.tracking.experiment or config.name
        self._data_dir: Path | None = None
        self._plan = None
        self.parent_run: str | None = None

    def groups(self) -> list[str]:
        return [s.name for s in self.config.scales]

    @property
    def store_path(self) -> Path:
        return self.out / "losses.zarr"

    @property
    def plan(self):
        """The data preparation's plan (`s2l.data.plan.DataPlan`): cheap (file sizes, no
        text), made once; a source it cannot list is a ConfigError at its key path."""
        if self._plan is None:
            from s2l.data.plan import plan_preparation

            self._plan = plan_preparation(self.config.data)
        return self._plan

    def data_task_bytes(self) -> int:
        """Input of the largest data task (bytes of text, as `hpc.resources` derives the data
        tasks' memory and time from it): the biggest shard, the tokenizer's sample, or
        finalize's held-out text weighted by FINALIZE_WEIGHT."""
        from s2l.data.shards import HELDOUT_SUITE_MB

        data = self.config.data
        sample = int(data.tokenizer_mb_per_domain * 2 ** 20) * len(data.domains)
        by = {d: 0 for d in data.domains}
        for s in self.plan.shards:
            by[s.domain] += s.approx_bytes
        held = sum(min(HELDOUT_SUITE_MB * 2 ** 20, b * data.heldout_frac) for b in by.values())
        return int(max([sample, FINALIZE_WEIGHT * held] + [s.approx_bytes for s in self.plan.shards]))

    def warnings(self) -> list[str]:
        """What submit and `--dry-run` print before running: token budgets that repeat data."""
        from s2l.lm.budget import budget_warnings

        return budget_warnings(self.config, self.plan)

    def prepare(self) -> None:
        plan = self.plan  # before touching <out>: may fail
        ready = data_prep.complete(plan.root)
        if not ready:  # a wrong path/format/field is exit 2 now, not a failed job later
            data_prep.probe_sources(self.config.data, plan)
            # and a cache the data tasks could not write to is the driver's OSError (exit 3,
            # naming the path), found before <out> exists, not every data task's failure
            cache = plan.root.parent
            cache.mkdir(parents=True, exist_ok=True)
            if not os.access(cache, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "Permission denied (data cache)", str(cache))
        self._data_dir = plan.root
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "sweep.yaml").write_text(self.config.yaml_text)
        if ready:  # else the data-finalize task creates it, after the test suite exists
            data_prep.make_store(self.config, self.out, plan.root)
        cells = self.config.cells()
        tracker = tracking.open_tracker(self.tracking_uri, self.experiment, self.out)
        self.parent_run = tracker.sweep_run(self.name, {"cells": len(cells), "scales": len(self.config.scales),
                                                     "mixtures": len(self.config.mixtures),
                                                     "seeds": len(self.config.seeds),
                                                     "code_version": code_version()})

    def stages(self) -> list[Stage]:
        """The data stages (none when the data is prepared or every cell is done), then the
        cells' stage(s)."""
        cells = self.cell_stages()
        if all(t.is_done() for st in cells for t in st.tasks):
            return cells
        return data_prep.data_stages(self.config, self.out, self.plan) + cells

    def cell_stages(self) -> list[Stage]:
        from s2l.lm import staged

        data = self.config.data
        data_dir = self._data_dir or data.cache_root / data.fingerprint()
        common = dict(out=self.out, data_dir=data_dir, tracking_uri=self.tracking_uri,
                      experiment=self.experiment, parent_run=self.parent_run)
        ref = self.config.reference
        if ref is None:
            return [Stage("cells", [CellTask(cell=c, **common) for c in self.config.cells()])]
        fp = staged.predict_fingerprint(self.config)
        cells = self.config.cells()
        return [
            Stage("proxies", [CellTask(cell=c, **common) for c in cells
                              if c.scale.name != ref.scale]),
            Stage("predict", [staged.PredictTask(self.config, self.out, self.tracking_uri,
                                                 self.experiment, self.parent_run)]),
            Stage("reference", [staged.ReferenceCellTask(cell=c, predict_fp=fp, **common)
                                for c in cells if c.scale.name == ref.scale]),
        ]

    def cell_status(self) -> dict[str, str]:
        """{cell key: "yes" | "no" | "skipped"} (done, not done, not selected by the prediction)."""
        out = {}
        for stage in self.cell_stages():
            for t in stage.tasks:
                if isinstance(t, CellTask):
                    skipped = getattr(t, "is_skipped", lambda: False)()
                    out[t.key] = "skipped" if skipped else "yes" if t.is_done() else "no"
        return out

    def describe(self) -> str:
        from s2l.lm.report import describe_cells, describe_data, describe_stages

        status = self.cell_status()
        text = describe_cells(self.config, self.out, [status[c.key] for c in self.config.cells()])
        needed = any(v == "no" for v in status.values())  # as stages() decides, cheaper
        data = describe_data(self.config, self.plan, data_prep.data_stages(
            self.config, self.out, self.plan) if needed else [])
        warn = "".join("\n" + (w if w.startswith(" ") else f"warning: {w}") for w in self.warnings())
        return text + describe_stages(self.config, self.out) + data + warn

    def summary(self) -> str:
        from s2l.lm.report import final_summary, prediction_summary

        text = final_summary(self.store_path, self.out / "summary.png", self.tracking_uri,
                             self.experiment)
        if self.config.reference is None:
            return text
        return text + "\n" + prediction_summary(self.out, self.tracking_uri, self.experiment,
                                                 self.parent_run)


@register("lm")
def _make(raw: dict, path: Path, out, tracking_uri: str | None) -> LMStudy:
    config = parse_sweep(raw, path)
    if tracking_uri is not None:
        tracking_uri = checked_tracking_uri(tracking_uri)  # ConfigError names --tracking-uri
    return LMStudy(config, raw, Path(out) if out else Path("runs") / config.name, tracking_uri)
