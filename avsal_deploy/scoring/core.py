"""Batch scoring: many videos, resumable, failure-isolated, on threads, servers or a Ray cluster.

:func:`score` predicts every video of a collection into ``OUT/<rel>/`` (``rel``: the video's path
below the directory it was found in, without its extension; see
:func:`~avsal_deploy.scoring.inputs.collect_inputs`) and yields one :class:`VideoResult` per video
as it finishes. Rules:

- **Atomic per video.** A video is predicted into a private directory ``OUT/.partial/<id>/``
  (``avsal predict``'s outputs), its record ``score.json`` is written last, and the directory is
  renamed to ``OUT/<rel>`` in one step. A run killed at any point (Ctrl-C, SIGTERM, kill -9, a
  server going away) leaves complete video directories and, at most, partial ones under
  ``OUT/.partial`` for the videos in flight, which the next run removes.
- **Resume.** A video is skipped when ``OUT/<rel>/score.json`` says ``done``, its settings
  (:func:`run_settings`: engine, model hash, steps, stride, seed, batch size, outputs, ground
  truth) are those of this run, the files it lists exist, and its input is unchanged: same size
  and mtime, or, when those changed, the same SHA-256 (the hash is computed the first time and
  when size or mtime changed, and kept in the record).
- **Failure isolation.** A video that cannot be read or predicted is recorded as ``failed`` with
  its one-line error (naming the file) and the run goes on; it writes no directory and is tried
  again by the next run.
- **Servers.** With ``engine="triton"`` and several ``urls``, ``jobs`` workers (at least one per
  server) pull videos from one queue; a video whose server stops answering is put back and
  finished by another server; per-server throughput is reported.
- **Summary.** When every video has been handled, ``OUT/summary.json`` and ``OUT/summary.csv``
  are written (:func:`write_summary`).

One run at a time per output directory (a lock file ``OUT/.lock`` refuses a second one).
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from avsal_deploy.engine.choice import EngineChoice
from avsal_deploy.errors import AvsalError
from avsal_deploy.pipeline import PredictOptions
from avsal_deploy.scoring.inputs import VideoItem, check_unique, collect_inputs
from avsal_deploy.scoring.scorer import (
    GT_METRICS,
    PARTIAL,
    RECORD,
    GroundTruth,
    Scorer,
    ScoreSettings,
    ServerGone,
    VideoResult,
    check_settings,
    run_settings,
    write_json,
)
from avsal_deploy.scoring.threads import run_threads

LOCK = ".lock"

#: ``progress(done, total, result)``: once with ``(0, total, None)`` before any work, then per video.
ScoreProgress = Callable[[int, int, "VideoResult | None"], None]

__all__ = [
    "GT_METRICS",
    "LOCK",
    "PARTIAL",
    "RECORD",
    "GroundTruth",
    "ScoreProgress",
    "ScoreSettings",
    "Scorer",
    "ServerGone",
    "VideoResult",
    "run_settings",
    "score",
    "write_summary",
]


# ----------------------------------------------------------------------------- the API
@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    import fcntl

    with open(out_dir / LOCK, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise AvsalError(f"{out_dir}: another `avsal score` run is writing here") from exc
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _prepare(out_dir: Path) -> None:
    from avsal_deploy.outputs import check_writable

    check_writable(out_dir)
    shutil.rmtree(out_dir / PARTIAL, ignore_errors=True)  # the videos in flight when a run died
    (out_dir / PARTIAL).mkdir()


def score(
    paths: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    engine: EngineChoice | None = None,
    urls: Sequence[str] = (),
    jobs: int = 1,
    options: PredictOptions | None = None,
    overlay: bool = False,
    pngs: bool = False,
    gt: GroundTruth | None = None,
    ray_address: str | None = None,
    progress: ScoreProgress | None = None,
) -> Iterator[VideoResult]:
    """Score every video of ``paths`` into ``out_dir``; yield one :class:`VideoResult` per video
    as it finishes, then write ``summary.json`` / ``summary.csv`` (see the module docstring).

    ``paths``: files, directories or list files (:func:`collect_inputs`); empty with ``gt``: the
    videos of the data-set split themselves. ``engine`` chooses the model and where it runs
    (default: the shipped model on ONNX Runtime), ``urls`` several Triton servers to spread the
    work over (``engine`` triton), ``jobs`` how many videos are in flight (threads, or Ray actors
    with ``ray_address``). ``options`` (steps, stride, seed, batch size) are those of ``avsal
    predict``; ``overlay`` adds overlay.mp4 and contact_sheet.png, ``pngs`` the per-frame PNG maps.
    Usage errors raise :class:`AvsalError` before any video is touched.
    """
    if jobs < 1:
        raise AvsalError(f"--jobs {jobs}: must be >= 1")
    settings = ScoreSettings(
        engine=engine if engine is not None else EngineChoice(),
        urls=tuple(urls),
        options=options if options is not None else PredictOptions(),
        overlay=overlay,
        pngs=pngs,
        gt=gt,
    )
    check_settings(settings)
    if paths:
        items = collect_inputs(paths)
    elif gt is not None:
        from avsal_deploy.scoring.inputs import dataset_items

        items = check_unique(dataset_items(gt.root, gt.dataset, gt.split, gt.fold))
    else:
        raise AvsalError("nothing to score: give video files, directories or list files (or --gt ROOT)")
    if overlay and any(i.record is not None for i in items):
        raise AvsalError(
            "--overlay needs video files: data-set records are frames without a video to overlay"
        )
    run = run_settings(settings)  # a missing checkpoint or unreachable server is a usage error, now
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AvsalError(f"{out}: cannot create the output directory ({exc.strerror or exc})") from exc
    return _score(items, out, settings, run, jobs, ray_address, progress)


def _score(
    items: list[VideoItem],
    out: Path,
    settings: ScoreSettings,
    run: dict[str, Any],
    jobs: int,
    ray_address: str | None,
    progress: ScoreProgress | None,
) -> Iterator[VideoResult]:
    with _locked(out):
        _prepare(out)
        t0 = time.perf_counter()
        results: list[VideoResult | None] = [None] * len(items)
        if progress is not None:
            progress(0, len(items), None)
        if ray_address is not None:
            from avsal_deploy.scoring.cluster import run_on_ray

            stream = run_on_ray(ray_address, items, out, settings, run, jobs)
        else:
            stream = run_threads(items, out, settings, run, jobs)
        done = 0
        for index, result in stream:
            results[index] = result
            done += 1
            if progress is not None:
                progress(done, len(items), result)
            yield result
        shutil.rmtree(out / PARTIAL, ignore_errors=True)
        try:
            write_summary(
                out, [r for r in results if r is not None], time.perf_counter() - t0, run, settings.gt
            )
        except OSError as exc:
            raise AvsalError(
                f"{out / 'summary.json'}: cannot write the run's summary ({exc.strerror or exc}); the "
                "videos done are kept, run again once the output can be written"
            ) from exc


# ----------------------------------------------------------------------------- summary
def _dataset_metrics(results: Sequence[VideoResult], gt: GroundTruth) -> dict[str, Any]:
    from avsal_deploy.metrics import EvalResult

    ev = EvalResult(metrics=gt.metrics)
    for r in results:
        if r.per_frame is not None and r.status in ("done", "skipped"):
            name = Path(r.rel).name
            ev.per_frame[name] = {m: np.asarray(v, np.float64) for m, v in r.per_frame.items()}
            ev.frames[name] = list(range(len(next(iter(r.per_frame.values()), []))))
    return {
        "dataset": gt.dataset,
        "split": gt.split,
        "metrics": list(gt.metrics),
        "averaging": "per-video mean of per-frame values (NaN frames omitted), then mean over videos",
        "videos": len(ev.per_frame),
        "mean": ev.summary(),
    }


def write_summary(
    out_dir: Path,
    results: Sequence[VideoResult],
    seconds: float,
    run: dict[str, Any],
    gt: GroundTruth | None = None,
) -> dict[str, Any]:
    """Write ``summary.json`` and ``summary.csv`` into ``out_dir`` (atomically) and return the summary.

    ``summary.json``: ``videos`` (per video: path, rel, status, frames, seconds, frames_per_second,
    error, server, attempts, servers_tried, metrics), the counts ``done`` / ``failed`` /
    ``skipped``, ``seconds`` (wall time), ``frames`` and ``frames_per_second`` (frames predicted in
    this run over the wall time), ``servers`` (per engine instance or Triton URL: videos, frames,
    busy seconds, frames/s), ``settings``, and with ground truth ``gt`` (the data-set mean per metric).
    """
    counts = {s: sum(r.status == s for r in results) for s in ("done", "failed", "skipped")}
    predicted = sum(r.frames for r in results if r.status == "done")
    servers: dict[str, dict[str, float]] = {}
    for r in results:
        if r.status != "done" or r.server is None:
            continue
        entry = servers.setdefault(r.server, {"videos": 0, "frames": 0, "seconds": 0.0})
        entry["videos"] += 1
        entry["frames"] += r.frames
        entry["seconds"] += r.seconds
    for entry in servers.values():
        entry["frames_per_second"] = round(entry["frames"] / entry["seconds"], 3) if entry["seconds"] else 0.0
        entry["seconds"] = round(entry["seconds"], 3)
    summary: dict[str, Any] = {
        "videos": [r.to_dict() for r in results],
        **counts,
        "seconds": round(seconds, 3),
        "frames": predicted,
        "frames_per_second": round(predicted / seconds, 3) if seconds > 0 else 0.0,
        "videos_per_hour": round(counts["done"] * 3600.0 / seconds, 1) if seconds > 0 else 0.0,
        "servers": servers,
        "settings": run,
    }
    if gt is not None:
        summary["gt"] = _dataset_metrics(results, gt)
    write_json(out_dir / "summary.json", summary)

    metric_names = list(gt.metrics) if gt is not None else []
    tmp = out_dir / f".summary.csv.{uuid.uuid4().hex[:8]}.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["path", "status", "frames", "seconds", "frames_per_second", "server", "error", *metric_names]
        )

        def fmt(x: float | None) -> str:
            return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.6g}"

        for r in results:
            values = [fmt((r.metrics or {}).get(m)) for m in metric_names]
            writer.writerow(
                [
                    r.path,
                    r.status,
                    r.frames,
                    f"{r.seconds:.3f}",
                    f"{r.frames_per_second:.3f}",
                    r.server or "",
                    r.error or "",
                    *values,
                ]
            )
        if gt is not None:
            mean = summary["gt"]["mean"]
            writer.writerow(
                [
                    f"{gt.dataset}/{gt.split} (mean over videos)",
                    "aggregate",
                    "",
                    "",
                    "",
                    "",
                    "",
                    *[fmt(mean[m]) for m in metric_names],
                ]
            )
    os.replace(tmp, out_dir / "summary.csv")
    return summary
