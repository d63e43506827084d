"""One LM cell as a task: train one (scale, mixture, seed), evaluate, write its store chunks.

Follow one cell: `CellTask.run()` on a node loads the prepared (cached, tokenized) data,
builds the model for its scale with its seed, trains on its mixture (resuming from its
checkpoint), evaluates every test sample, writes its own chunks of `<out>/losses.zarr`, and
records its MLflow child run offline; the runner then drops the DONE marker (`s2l.tasks`: key
+ cell id) and `publish()` logs the run online (in the job, or in the driver once the job
ended: `hpc.node.TaskRunner(publish=False)`). The record carries the CPU-seconds of training
and evaluation (`train_cpu_s`, `eval_cpu_s`: what the sweep's overhead is measured against)
and the precision the cell ran in.

Files of a cell: `<out>/cells/<scale>/<mixture>/<seed>/` ckpt.pt (while training),
progress.json, cell.json, DONE.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import subprocess
import time
from pathlib import Path

import numpy as np

from s2l import store as loss_store
from s2l import tracking
from s2l.lm.config import Cell
from s2l.tasks import Task


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """git describe of the checkout s2l runs from, else the package version (asked once per
    process: a packed job's cells share it)."""
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=here,
                              capture_output=True, text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import version
        return version("s2l")


@dataclasses.dataclass
class CellTask(Task):
    cell: Cell
    out: Path
    data_dir: Path
    tracking_uri: str
    experiment: str
    parent_run: str | None

    @property
    def key(self) -> str:
        return self.cell.key

    @property
    def group(self) -> str:
        return self.cell.scale.name

    @property
    def fingerprint(self) -> str:
        return self.cell.id

    @property
    def dir(self) -> Path:
        return self.out / "cells" / self.cell.key

    @property
    def marker(self) -> Path:
        return self.dir / "DONE"

    def progress(self) -> tuple[float, str] | None:
        try:
            p = json.loads((self.dir / "progress.json").read_text())
        except (OSError, ValueError):
            return None
        return p["step"] / p["total"], f"step {p['step']}/{p['total']} loss {p['loss']:.3f} {p['tok_s']:,.0f} tok/s"

    def run(self) -> dict:
        import torch

        from s2l.data import MixtureSampler, PreparedData
        from s2l.evaluate import evaluate
        from s2l.model import build_model
        from s2l.train import Distributed, Diverged, discard_checkpoints, train

        started = time.time()
        torch.set_flush_denormal(True)  # denormals from peaked softmaxes cost 2x at 20M on CPU
        dist = Distributed()
        cell, cfg = self.cell, self.cell.sweep
        self.dir.mkdir(parents=True, exist_ok=True)
        data = PreparedData.load(self.data_dir)

        model = build_model(cell.scale.shape, data.vocab_size, cfg.data.seq_len, cell.seed)
        sampler = MixtureSampler(data.train, cell.mixture.as_dict(), cfg.data.seq_len, cell.seed)
        batch_size = cfg.train.batch_size

        def on_log(step, loss, tok_s):
            _write_json(self.dir / "progress.json",
                        {"step": step, "total": cell.steps, "loss": loss, "tok_s": tok_s})

        ckpt = self.dir / "ckpt.pt"
        if dist.is_main:
            _check_checkpoint_owner(self.dir, cell.id, ckpt)
        dist.barrier()  # no rank may read a checkpoint that rank 0 is about to discard
        t0, c0 = time.perf_counter(), time.process_time()
        history = train(model, lambda step: sampler.batch(step, batch_size), cell.steps,
                        cfg.train, checkpoint=ckpt, on_log=on_log)
        train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
        if not dist.is_main:
            return {}
        work = {"train_seconds": train_s, "train_cpu_s": train_cpu}
        summary = self._finish(model, data, history, work, started)
        discard_checkpoints(ckpt)  # done cells keep their losses, not their optimizer state
        return summary

    def _finish(self, model, data, history: list[tuple[int, float]], work: dict[str, float],
                started: float) -> dict[str, float]:
        """After training: evaluate every test sample, refuse a diverged model, write the
        cell's store chunks and its offline MLflow record; returns the per-test-set means."""
        from s2l.evaluate import evaluate
        from s2l.train import Diverged

        cell, cfg = self.cell, self.cell.sweep
        c0 = time.process_time()
        loss, correct = evaluate(model, data.test, cfg.train.eval_batch_size, cfg.train.precision)
        # CPU-seconds (all threads of this process) of the two phases that are the cell's
        # work; the rest of a job (imports, data loading, store writes, exit) is overhead.
        work = {**work, "eval_cpu_s": time.process_time() - c0}
        self._precision = _resolved_precision(cfg.train.precision, model)
        # A model that ends worse than a uniform guess over the vocabulary (ln V nats) has
        # diverged without producing NaN: failing the cell keeps it out of the store.
        mean, uniform = float(np.mean(loss)), math.log(data.vocab_size)
        if not math.isfinite(mean) or mean > uniform + cfg.train.max_eval_excess:
            raise Diverged(f"mean eval loss {mean:.4g} after {cell.steps} steps is not below "
                           f"a uniform guess ln V = {uniform:.4g} + train.max_eval_excess "
                           f"({cfg.train.max_eval_excess})")
        loss_store.write_cell(self.out / "losses.zarr", cell.scale.name, cell.mixture.name,
                              cell.seed, loss, correct)
        summary = _per_test_set(data.test, loss, correct)
        # the job process's CPU so far (start-up, earlier cells of its pack, this one): with
        # train_cpu_s and eval_cpu_s, what each job pays besides its cells' work
        work["job_cpu_s"] = time.process_time()
        # The whole MLflow run is made durable as an offline record BEFORE the runner writes
        # the marker: no done cell is ever without its run (publish() then logs it online).
        self._record = self._record_run(history, {**summary, **work}, started, time.time())
        return summary

    def pack_key(self) -> str | None:
        """Cells of one scale, step count and data train as one vmapped model (`run_packed`)."""
        return f"{self.cell.scale.name}|{self.cell.steps}|{self.data_dir}"

    @classmethod
    def run_packed(cls, tasks: list["CellTask"]) -> list[dict[str, float]]:
        """Train `tasks` (same `pack_key`) together with `s2l.packed.train_packed`: one
        batched step for all of them, ~7x the aggregate throughput of one after another on a
        GPU (docs/performance.md). Each then finishes as `run()` does (evaluation, store
        chunks, record). No mid-run checkpoints: a packed job of proxies is minutes long, and
        a preempted one retrains its unfinished cells from the start (same result)."""
        import torch

        from s2l.data import MixtureSampler, PreparedData
        from s2l.model import build_model
        from s2l.packed import train_packed

        started = time.time()
        torch.set_flush_denormal(True)
        first = tasks[0]
        cfg, data = first.cell.sweep, PreparedData.load(first.data_dir)
        bs, seq_len = cfg.train.batch_size, cfg.data.seq_len
        models, batch_fns = [], []
        for t in tasks:
            t.dir.mkdir(parents=True, exist_ok=True)
            models.append(build_model(t.cell.scale.shape, data.vocab_size, seq_len, t.cell.seed))
            sampler = MixtureSampler(data.train, t.cell.mixture.as_dict(), seq_len, t.cell.seed)
            batch_fns.append(lambda step, s=sampler: s.batch(step, bs))

        def on_log(step, losses, tok_s):
            for t, loss in zip(tasks, losses):
                _write_json(t.dir / "progress.json", {"step": step, "total": t.cell.steps,
                                                      "loss": float(loss), "tok_s": tok_s / len(tasks)})

        t0, c0 = time.perf_counter(), time.process_time()
        histories = train_packed(models, batch_fns, first.cell.steps, cfg.train, on_log=on_log)
        # the pack's training time, shared equally: what one cell cost of it
        work = {"train_seconds": (time.perf_counter() - t0) / len(tasks),
                "train_cpu_s": (time.process_time() - c0) / len(tasks), "packed": len(tasks)}
        results: list = []
        for t, m, h in zip(tasks, models, histories):
            try:
                results.append(t._finish(m, data, h, work, started))
            except Exception as e:  # noqa: BLE001 - e.g. one diverged model: the others stand
                results.append(e)
        return results

    def publish(self) -> None:
        """Log the cell's run to MLflow, after its marker; a record that cannot be logged now
        stays offline and is replayed by the next submit or `hpc/status.py`. Runs on the node
        after `run()`, or in the driver (local backend: the node never imports mlflow), which
        finds the record where `run()` wrote it; nothing to do when it is synced already."""
        path = getattr(self, "_record", None) or tracking.record_path(self.out, self.cell.key)
        if path.is_file():
            tracking.publish_record(self.tracking_uri, self.experiment, self.out, path)

    def _record_run(self, history: list[tuple[int, float]], metrics: dict[str, float],
                    started: float, ended: float) -> Path:
        """The cell's child run (params, config artifact, loss curve, results, real start and
        end times) written as an offline record; returns its path."""
        cell = self.cell
        params = {"scale": cell.scale.name, "params": cell.scale.params, "tokens": cell.scale.tokens,
                  "flops": f"{cell.scale.flops:.4g}", "mixture": cell.mixture.name,
                  "seed": cell.seed, "cell_id": cell.id, "code_version": code_version(),
                  "d_model": cell.scale.shape.d_model, "n_layers": cell.scale.shape.n_layers,
                  "n_heads": cell.scale.shape.n_heads, "steps": cell.steps,
                  **getattr(self, "_precision", {}),
                  **{f"weight.{d}": round(w, 6) for d, w in cell.mixture.weights}}
        cell_json = json.dumps({"key": cell.key, **cell.identity(), "id": cell.id}, indent=2)
        (self.dir / "cell.json").write_text(cell_json)
        return tracking.record_cell(self.out, self.parent_run, cell.key, cell.id, params,
                                    {"cell.json": cell_json}, {"train_loss": history}, metrics,
                                    started, ended)


def _resolved_precision(requested: str, model) -> dict[str, str]:
    """{"precision": ..., "eval_precision": ...}, each "fp32" or "bf16": what `requested`
    (train.precision) meant for training and for evaluation of this model on this machine,
    decided as `s2l.train` and `s2l.evaluate` decide it (`resolve_precision`: by device, CPU
    capability and size); logged as params of the cell's run."""
    from s2l.train import non_embedding_params, resolve_precision

    device, n = next(model.parameters()).device, non_embedding_params(model)
    return {"precision": resolve_precision(requested, device, n),
            "eval_precision": resolve_precision(requested, device, n, inference=True)}


def _check_checkpoint_owner(cell_dir: Path, cell_id: str, ckpt: Path) -> None:
    """A checkpoint left by an earlier config of the same grid point must not be resumed."""
    from s2l.train import discard_checkpoints

    owner = cell_dir / "ckpt.owner"
    if not owner.exists() or owner.read_text() != cell_id:
        discard_checkpoints(ckpt)
    owner.write_text(cell_id)


def _per_test_set(suite, loss: np.ndarray, correct: np.ndarray) -> dict[str, float]:
    names = np.asarray(suite.sample_test_set)
    out = {}
    for name in suite.test_sets:
        sel = names == name
        out[f"loss.{name}"] = float(np.mean(loss[sel]))
        if np.isfinite(correct[sel]).any():
            out[f"acc.{name}"] = float(np.nanmean(correct[sel]))
    return out


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)
