"""Staged LM sweeps: a prediction for the reference scale, pre-registered before its cells run.

With a `reference:` block the sweep runs in three stages (local runs them in order, Slurm
chains them `afterok`): "proxies" (the cells of every other scale), "predict" (`PredictTask`)
and "reference" (`ReferenceCellTask`, the reference scale's cells). So the prediction is
written after every proxy cell and before any reference cell has started.

`OUT/predictions/prediction.json` (format `FORMAT`; the numbers are made by `s2l.lm.predict`):
per target (each test set, and "mean") and mixture the predicted reference loss with its
interval, the predicted rank and the largest proxy's loss; the ranking per target; how it was
made; the proxies' cell ids and a sha256 of the proxy losses it read; the UTC time; and, with
`top_k`, the mixtures selected for the reference stage. The file is canonical JSON (sorted
keys), and `prediction.sha256` holds its sha256 in `sha256sum` format, so
`sha256sum -c prediction.sha256` checks it.

Written once. A prediction that exists is never rewritten: a re-run keeps it, and one made
for other proxy cells (the grid changed) is refused (move `OUT/predictions` away to predict
anew). Reference results that exist before the prediction (a reference cell whose result
is in the store or whose cell.json was written) make the task fail, unless the sweep says
`reference: {force_prediction: true}`; the file then says `"preregistered": false` and names
those cells.

Selection (`top_k`): a reference cell asks the prediction at run time whether its mixture is
among the top_k of the objective's ranking or the `controls` drawn at random from the rest.
One that is not writes `SKIPPED` (JSON: why) in its cell dir instead of training and
finishes: its completion marker is written (the stage succeeds, later stages may follow) but
its store cell stays NaN with `done` False, so every analysis sees a mixture not run at the
reference scale. The selection is a function of the pre-registered ranking and the sweep's
`top_k`, `controls` and `seed`, so a changed top_k re-decides (a cell then selected trains;
dropping top_k trains every cell), and a cell whose result is already in the store is reused.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from s2l import store as loss_store
from s2l import tracking
from s2l.lm.cell import CellTask, code_version
from s2l.lm.config import ReferenceConfig, SweepConfig
from s2l.tasks import Task, marker_path

FORMAT = "s2l.lm.prediction/1"
#: bump when the prediction method changes what it writes: it changes the predict fingerprint
METHOD_VERSION = 1
PREDICTION, SHA_FILE = "prediction.json", "prediction.sha256"
BOOT_SEED = 0  # the bootstrap's seed (reference.seed draws the controls)


class PredictionError(RuntimeError):
    """The prediction cannot be made, or the file on disk is not the one this sweep needs."""


def utc_now() -> str:
    """The time as ISO 8601 UTC with microseconds: one format, so times compare as strings."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")


def predictions_dir(out: str | Path) -> Path:
    return Path(out) / "predictions"


def canonical(obj) -> bytes:
    """The one serialisation of a prediction or score: sorted keys, ASCII, no NaN."""
    return (json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=True, allow_nan=False)
            + "\n").encode()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def predict_fingerprint(cfg: SweepConfig) -> str:
    """What the prediction's numbers depend on: the proxy and reference cells and the
    interval settings (not the selection: it is re-derived from the stored ranking)."""
    ref = cfg.reference
    cells = cfg.cells()
    blob = {"version": METHOD_VERSION, "level": ref.level, "n_boot": ref.n_boot,
            "reference": ref.scale,
            "cells": sorted((c.key, c.id) for c in cells)}
    return _sha(json.dumps(blob, sort_keys=True).encode())[:16]


def write_once(path: Path, data: bytes) -> bool:
    """Create `path` holding `data` unless it exists (then False, the file untouched). The
    bytes are complete before the name appears (a hard link of a finished temporary file),
    and an existing file is never replaced, even by a racing writer."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def read_prediction(out: str | Path) -> dict | None:
    """The prediction of `out`, None when there is none. Raises PredictionError when the
    file does not match its recorded sha256 or is not a prediction."""
    folder = predictions_dir(out)
    try:
        data = (folder / PREDICTION).read_bytes()
    except FileNotFoundError:
        return None
    sha_path = folder / SHA_FILE
    if sha_path.exists():
        recorded = sha_path.read_text().split()[:1]
        if recorded != [_sha(data)]:
            raise PredictionError(f"{folder / PREDICTION} does not match {sha_path}: the "
                                  "pre-registered prediction was changed after it was written")
    else:  # killed between the two files: the hash is derived, so it may be written now
        write_once(sha_path, f"{_sha(data)}  {PREDICTION}\n".encode())
    try:
        pred = json.loads(data)
    except ValueError as e:
        raise PredictionError(f"{folder / PREDICTION} is not JSON: {e}") from None
    if not isinstance(pred, dict) or pred.get("format") != FORMAT:
        raise PredictionError(f"{folder / PREDICTION} is not a {FORMAT} file")
    return pred


def prediction_sha(out: str | Path) -> str:
    return _sha((predictions_dir(out) / PREDICTION).read_bytes())


def reference_results(cfg: SweepConfig, out: Path) -> list[str]:
    """Keys of reference cells that have a result: in the store, or a cell.json written."""
    done = {}
    if (out / "losses.zarr").exists():
        done = loss_store.done_cells(out / "losses.zarr")
    return [c.key for c in cfg.cells() if c.scale.name == cfg.reference.scale
            and (done.get(c.key) or (out / "cells" / c.key / "cell.json").exists())]


def selection(pred: dict, ref: ReferenceConfig) -> dict | None:
    """Which mixtures the reference stage trains, from the prediction's ranking on
    `ref.objective`: {top, controls, run, skipped} (mixture names), None without top_k."""
    from s2l.lm import predict  # scipy: not imported by the cells' jobs

    if ref.top_k is None:
        return None
    names = pred["mixtures"]
    ranked = pred["predictions"][ref.objective]["ranking"]
    order = np.array([names.index(m) for m in ranked])
    top, ctl = predict.select(order, ref.top_k, ref.controls, ref.seed)
    run = set(top) | set(ctl)
    return {"objective": ref.objective, "top_k": ref.top_k, "controls_count": ref.controls,
            "seed": ref.seed, "top": [names[i] for i in top], "controls": [names[i] for i in ctl],
            "run": [m for m in names if names.index(m) in run],
            "skipped": [m for m in names if names.index(m) not in run]}


def make_prediction(cfg: SweepConfig, out: Path, fingerprint: str, reference_done: list[str]
                    ) -> dict:
    """Read the proxy cells from the store and predict the reference (see module doc)."""
    from s2l.lm import predict  # scipy: not imported by the cells' jobs
    from s2l.analysis.load import test_set_codes

    ref, ref_scale = cfg.reference, cfg.scale(cfg.reference.scale)
    proxies = sorted(cfg.proxy_scales, key=lambda s: s.flops)
    ds = loss_store.open_store(out / "losses.zarr")
    scales = [str(s) for s in ds["scale"].values]
    mixtures = [str(m) for m in ds["mixture"].values]
    if mixtures != [m.name for m in cfg.mixtures]:
        raise PredictionError("the store's mixtures are not the sweep's; re-run submit.py")
    idx = [scales.index(s.name) for s in proxies]
    store_seeds = [int(k) for k in ds["seed"].values]
    seeds = list(cfg.seeds_for(proxies[0].name))  # the proxies' seeds (the reference may have more)
    if not set(seeds) <= set(store_seeds):
        raise PredictionError("the store's seeds are not the sweep's; re-run submit.py")
    kdx = [store_seeds.index(k) for k in seeds]
    done = ds["done"].values[idx][:, :, kdx]  # (S, M, K)
    if not done.all():
        s, m, k = np.argwhere(~done)[0]
        raise PredictionError(f"{int((~done).sum())} proxy cells are not done (e.g. "
                              f"{proxies[s].name}/{mixtures[m]}/{seeds[k]}); the prediction "
                              "needs every proxy cell")
    loss = np.stack([loss_store.read_values(ds["loss"].isel(scale=i, seed=kdx)) for i in idx])
    loss = np.ascontiguousarray(loss, dtype=np.float32)  # (S, M, K, N)
    test_sets, codes = test_set_codes(ds)
    x = np.array([s.flops for s in proxies]) / ref_scale.flops
    r = predict.predict(loss, codes, len(test_sets), x, ref.level, ref.n_boot, BOOT_SEED)
    targets = [*test_sets, predict.MEAN]
    per_target = {}
    for t, name in enumerate(targets):
        order = predict.ranking(r["proxy"][t])
        rank = np.empty(len(mixtures), int)
        rank[order] = np.arange(1, len(mixtures) + 1)
        per_target[name] = {
            "alpha": None if np.isnan(r["alpha"][t]) else float(r["alpha"][t]),
            "ranking": [mixtures[i] for i in order],
            "mixtures": {m: {"loss": float(r["loss"][t, j]), "lo": float(r["lo"][t, j]),
                             "hi": float(r["hi"][t, j]), "rank": int(rank[j]),
                             "proxy_loss": float(r["proxy"][t, j])}
                         for j, m in enumerate(mixtures)}}
    cell_ids = {c.key: c.id for c in cfg.cells()}
    pred = {
        "format": FORMAT, "sweep": cfg.name, "fingerprint": fingerprint,
        "preregistered": not reference_done, "reference_results_at_prediction": reference_done,
        "created_utc": utc_now(),
        "reference": {"scale": ref_scale.name, "params": ref_scale.params, "flops": ref_scale.flops,
                      "cells": {k: v for k, v in cell_ids.items()
                                if k.split("/")[0] == ref_scale.name}},
        "proxies": {"scales": [{"name": s.name, "params": s.params, "flops": s.flops}
                               for s in proxies],
                    "cells": {k: v for k, v in cell_ids.items() if k.split("/")[0] != ref_scale.name},
                    "store": "losses.zarr", "losses_shape": list(loss.shape),
                    "losses_sha256": _sha(loss.tobytes())},
        "method": {"ranking": "order of the largest proxy's seed-mean loss (lower is better)",
                   "loss": predict.method_name(len(proxies)),
                   "interval": f"percentile bootstrap over test samples and seeds, refit each time "
                               f"({ref.n_boot} resamples, seed {BOOT_SEED})",
                   "level": ref.level, "n_boot": ref.n_boot, "version": METHOD_VERSION,
                   "code_version": code_version()},
        "objective": ref.objective, "targets": targets, "mixtures": mixtures, "seeds": seeds,
        "predictions": per_target,
    }
    sel = selection(pred, ref)
    if sel is not None:
        full = len(mixtures) * len(cfg.seeds) * ref_scale.flops
        grid = sum(c.scale.flops for c in cfg.cells())
        saved = len(sel["skipped"]) * len(cfg.seeds) * ref_scale.flops
        sel |= {"reference_flops_full": full, "reference_flops_run": full - saved,
                "flops_saved_fraction_of_grid": saved / grid}
    pred["selection"] = sel
    return pred


@dataclasses.dataclass
class PredictTask(Task):
    """The "predict" stage's one task: write `OUT/predictions/prediction.json` once."""

    config: SweepConfig
    out: Path
    tracking_uri: str
    experiment: str
    parent_run: str | None

    key = "prediction"

    @property
    def fingerprint(self) -> str:
        return predict_fingerprint(self.config)

    @property
    def marker(self) -> Path:
        return marker_path(self.out, "predict", self.key)

    def run(self) -> dict:
        from s2l.lm import predict

        started = time.time()
        folder = predictions_dir(self.out)
        pred = read_prediction(self.out)
        if pred is not None and pred.get("fingerprint") != self.fingerprint:
            raise PredictionError(
                f"{folder / PREDICTION} was made for other proxy or reference cells (fingerprint "
                f"{pred.get('fingerprint')!r}, this sweep's is {self.fingerprint!r}); a "
                f"pre-registered prediction is never rewritten: move {folder} away to predict anew")
        if pred is None:
            done = reference_results(self.config, self.out)
            if done and not self.config.reference.force_prediction:
                raise PredictionError(
                    f"{len(done)} reference cells already have results (e.g. {done[0]}), so a "
                    "prediction made now would not be pre-registered; refusing. Set "
                    "`reference: {force_prediction: true}` to make one anyway (marked "
                    "\"preregistered\": false)")
            folder.mkdir(parents=True, exist_ok=True)
            data = canonical(make_prediction(self.config, self.out, self.fingerprint, done))
            write_once(folder / PREDICTION, data)  # a racing writer's equal file wins: same hash
            pred = read_prediction(self.out)
        sha = prediction_sha(self.out)
        text = (folder / PREDICTION).read_text()
        mean = pred["predictions"][predict.MEAN]["mixtures"]
        metrics = {"predicted_best_loss.mean": min(v["loss"] for v in mean.values())}
        params = {"kind": "prediction", "sha256": sha, "created_utc": pred["created_utc"],
                  "preregistered": pred["preregistered"], "method": pred["method"]["loss"],
                  "objective": pred["objective"], "code_version": code_version()}
        # Recorded offline before the marker, published after it (exactly once, as cells).
        self._record = tracking.record_cell(self.out, self.parent_run, "predict",
                                            f"prediction-{sha[:16]}", params,
                                            {PREDICTION: text}, {}, metrics, started, time.time())
        return {"sha256": sha}

    def publish(self) -> None:
        """After the marker, on the node or in the driver (see `CellTask.publish`)."""
        path = getattr(self, "_record", None) or tracking.record_path(self.out, "predict")
        if path.is_file():
            tracking.publish_record(self.tracking_uri, self.experiment, self.out, path)


@dataclasses.dataclass
class ReferenceCellTask(CellTask):
    """A reference-scale cell; with `top_k`, it trains only when the prediction selects it."""

    predict_fp: str = ""

    @property
    def selective(self) -> bool:
        return self.cell.sweep.reference.top_k is not None

    @property
    def fingerprint(self) -> str:
        if not self.selective:
            return self.cell.id
        ref = self.cell.sweep.reference
        blob = [self.cell.id, self.predict_fp, ref.objective, ref.top_k, ref.controls, ref.seed]
        return _sha(json.dumps(blob).encode())[:16]

    @property
    def skipped_file(self) -> Path:
        return self.dir / "SKIPPED"

    def is_skipped(self) -> bool:
        """Done without training: the prediction did not select this cell's mixture."""
        return self.skipped_file.exists() and self.is_done()

    def run(self) -> dict:
        self._record = None
        self.dir.mkdir(parents=True, exist_ok=True)
        write_once(self.dir / "started_utc", utc_now().encode())  # the audit: first start only
        if self.selective:
            pred = read_prediction(self.out)
            if pred is None or pred.get("fingerprint") != self.predict_fp:
                raise PredictionError(f"no prediction for this grid in {predictions_dir(self.out)}:"
                                      " the predict stage must finish first")
            sel = selection(pred, self.cell.sweep.reference)
            if self.cell.mixture.name not in sel["run"]:
                rank = pred["predictions"][sel["objective"]]["mixtures"][self.cell.mixture.name]["rank"]
                self.skipped_file.write_text(json.dumps(
                    {"key": self.key, "reason": f"not selected: rank {rank} on {sel['objective']}, "
                     f"not in the top {sel['top_k']} nor among {sel['controls_count']} controls",
                     "prediction_sha256": prediction_sha(self.out)}))
                return {"skipped": True}
        self.skipped_file.unlink(missing_ok=True)
        if loss_store.done_cells(self.out / "losses.zarr").get(self.key):
            return {"reused": True}  # the store keeps done cells only for an unchanged id
        return super().run()

    def publish(self) -> None:
        if not hasattr(self, "_record") or self._record is not None:  # None: skipped or reused
            super().publish()
