"""The LM sweep as a study: cells trained and evaluated on their own, in one or three stages.

Without a `reference:` block the sweep is one stage, "cells" (`s2l.lm.cell.CellTask`). With
one it is three (`s2l.lm.staged`): "proxies" (every scale but the reference), "predict" (one
task that writes the pre-registered prediction) and "reference" (the reference scale's cells,
all of them or, with `top_k`, those the prediction selects).

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

from pathlib import Path

import numpy as np

from s2l import store as loss_store
from s2l import tracking
from s2l.config import tracking_uri as checked_tracking_uri
from s2l.lm.cell import CellTask, code_version
from s2l.lm.config import SweepConfig, parse_sweep
from s2l.tasks import Stage, Study, register


class LMStudy(Study):
    def __init__(self, config: SweepConfig, raw: dict, out: Path, tracking_uri: str | None = None):
        self.config = config
        self.raw = raw
        self.name = config.name
        self.out = Path(out)
        self.tracking_uri = tracking_uri or config.tracking.uri or tracking.default_uri(self.out)
        self.experiment = config.tracking.experiment or config.name
        self._data_dir: Path | None = None
        self.parent_run: str | None = None

    def groups(self) -> list[str]:
        return [s.name for s in self.config.scales]

    @property
    def store_path(self) -> Path:
        return self.out / "losses.zarr"

    def prepare(self) -> None:
        from s2l.data import PreparedData, prepare_data

        self._data_dir = prepare_data(self.config.data)  # before touching <out>: may fail
        suite = PreparedData.load(self._data_dir).test
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "sweep.yaml").write_text(self.config.yaml_text)
        cells = self.config.cells()
        layout = loss_store.StoreLayout(
            scales=[s.name for s in self.config.scales],
            params=[s.params for s in self.config.scales],
            flops=[s.flops for s in self.config.scales],
            mixtures=[m.name for m in self.config.mixtures],
            seeds=list(self.config.seeds),
            domains=list(self.config.data.domains),
            weights=np.array([[w for _, w in m.weights] for m in self.config.mixtures]),
            test_set=list(suite.sample_test_set),
            multiple_choice=bool((suite.answer >= 0).any()),
            cell_ids={c.key: c.id for c in cells},
            attrs={"sweep": self.name, "sweep_yaml": self.config.yaml_text,
                   "chance": dict(suite.chance), "tokens": {s.name: s.tokens for s in self.config.scales}},
        )
        loss_store.create_store(self.store_path, layout)
        tracker = tracking.open_tracker(self.tracking_uri, self.experiment, self.out)
        self.parent_run = tracker.sweep_run(self.name, {"cells": len(cells), "scales": len(self.config.scales),
                                                     "mixtures": len(self.config.mixtures),
                                                     "seeds": len(self.config.seeds),
                                                     "code_version": code_version()})

    def stages(self) -> list[Stage]:
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
        for stage in self.stages():
            for t in stage.tasks:
                if isinstance(t, CellTask):
                    skipped = getattr(t, "is_skipped", lambda: False)()
                    out[t.key] = "skipped" if skipped else "yes" if t.is_done() else "no"
        return out

    def describe(self) -> str:
        from s2l.lm.report import describe_cells, describe_stages

        status = self.cell_status()
        text = describe_cells(self.config, self.out, [status[c.key] for c in self.config.cells()])
        return text + describe_stages(self.config, self.out)

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
