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
import json
import math
import os
import queue
import shutil
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avsal_deploy import __version__, interrupt
from avsal_deploy.errors import AvsalError, BackendUnavailableError
from avsal_deploy.scoring.engines import SCORING_ENGINES, model_identity, open_scoring_engine, predict_item
from avsal_deploy.scoring.inputs import VideoItem, check_unique, collect_inputs, input_hash, input_stat

RECORD = "score.json"
PARTIAL = ".partial"
LOCK = ".lock"
#: Metrics ``--gt`` reports (the MIT metrics; sAUC needs the whole set at once and is left to ``avsal eval``).
GT_METRICS: tuple[str, ...] = ("cc", "nss", "kld", "sim", "auc_j")

#: ``progress(done, total, result)``: once with ``(0, total, None)`` before any work, then per video.
ScoreProgress = Callable[[int, int, "VideoResult | None"], None]


@dataclass(frozen=True)
class GroundTruth:
    """Score the predictions against one split of a data set (``avsal score --gt``)."""

    root: str
    dataset: str
    split: str = "test"
    fold: int = 1
    metrics: tuple[str, ...] = GT_METRICS

    def key(self) -> dict[str, Any]:
        return {
            "root": str(Path(self.root).resolve()),
            "dataset": self.dataset,
            "split": self.split,
            "fold": self.fold,
            "metrics": list(self.metrics),
        }


@dataclass(frozen=True)
class ScoreSettings:
    """How every video of a run is predicted (what :func:`score` takes, minus the inputs)."""

    engine: str = "onnxruntime"
    checkpoint: str | None = None
    export_dir: str | None = None
    urls: tuple[str, ...] = ()
    steps: int | None = None
    stride: int | None = None
    seed: int = 0
    batch_size: int = 1
    overlay: bool = False
    pngs: bool = False
    gt: GroundTruth | None = None


@dataclass
class VideoResult:
    """The outcome of one video. ``status`` is ``done``, ``skipped`` (complete from an earlier run)
    or ``failed`` (``error`` holds the one-line reason)."""

    path: str
    rel: str
    status: str
    frames: int = 0
    seconds: float = 0.0
    error: str | None = None
    server: str | None = None
    attempts: int = 1
    servers_tried: list[str] = field(default_factory=list)
    metrics: dict[str, float] | None = None
    per_frame: dict[str, list[float]] | None = None

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The summary's entry (per-frame metric values stay in the video's ``score.json``)."""
        out = {k: v for k, v in asdict(self).items() if k != "per_frame"}
        out["seconds"] = round(self.seconds, 3)
        out["frames_per_second"] = round(self.frames_per_second, 3)
        return out


# ----------------------------------------------------------------------------- settings
def run_settings(settings: ScoreSettings) -> dict[str, Any]:
    """What makes two runs' outputs for the same input identical (compared for resume)."""
    model = None
    for url in settings.urls or (None,):  # the first server that answers names the served model
        try:
            model = model_identity(settings.engine, settings.checkpoint, settings.export_dir, url)
            break
        except BackendUnavailableError:
            if url == (settings.urls or (None,))[-1]:
                raise
    return {
        "engine": settings.engine,
        "model": model,
        "steps": settings.steps,
        "stride": settings.stride,
        "seed": settings.seed,
        "batch_size": settings.batch_size,
        "overlay": settings.overlay,
        "pngs": settings.pngs,
        "gt": settings.gt.key() if settings.gt is not None else None,
        "avsal_version": __version__,
    }


def _check_settings(settings: ScoreSettings) -> None:
    if settings.engine not in SCORING_ENGINES:
        raise AvsalError(f"unknown engine {settings.engine!r}: choose one of {', '.join(SCORING_ENGINES)}")
    if settings.urls and settings.engine != "triton":
        raise AvsalError(f"--url is for --engine triton, not {settings.engine}")
    if settings.batch_size < 1:
        raise AvsalError(f"batch size {settings.batch_size}: must be >= 1")
    if settings.stride is not None and settings.stride < 1:
        raise AvsalError(f"stride {settings.stride}: must be >= 1")
    if settings.steps is not None and settings.steps < 0:
        raise AvsalError(f"steps {settings.steps}: must be >= 0")
    if settings.gt is not None:
        from avsal_deploy.metrics import METRIC_NAMES

        bad = [m for m in settings.gt.metrics if m not in METRIC_NAMES or m == "sauc"]
        if bad or not settings.gt.metrics:
            raise AvsalError(f"--gt metrics {bad}: choose from {', '.join(GT_METRICS)}")


# ----------------------------------------------------------------------------- records
def _read_record(directory: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((directory / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write_json(path: Path, data: Any) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same directory, then rename)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=True) + "\n")
    os.replace(tmp, path)


def _complete(item: VideoItem, out_dir: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The record of ``item``'s earlier complete result under these settings, else None."""
    directory = out_dir / item.rel
    record = _read_record(directory)
    if record is None or record.get("status") != "done" or record.get("settings") != settings:
        return None
    if not all((directory / name).exists() for name in record.get("files", [])):
        return None
    recorded = record.get("input") or {}
    try:
        stat = input_stat(item)
    except OSError:
        return None
    if stat == {k: recorded.get(k) for k in stat}:
        return record
    if input_hash(item) != recorded.get("sha256"):
        return None
    record["input"] = {**recorded, **stat}  # touched, not changed: keep the hash, no rehash next time
    _write_json(directory / RECORD, record)
    return record


def _publish(tmp: Path, final: Path, out_dir: Path) -> None:
    """Move a finished video directory into place (one rename; an older one is moved aside first)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if final.exists() or final.is_symlink():
        old = out_dir / PARTIAL / f"old-{uuid.uuid4().hex}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _one_line(item: VideoItem, exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, AvsalError):
        text = f"{type(exc).__name__}: {text}"
    name = Path(item.path).name
    return text if (item.path in text or name in text) else f"{item.path}: {text}"


def _skipped(item: VideoItem, record: dict[str, Any]) -> VideoResult:
    return VideoResult(
        path=item.path,
        rel=item.rel,
        status="skipped",
        frames=int(record.get("frames", 0)),
        seconds=0.0,
        server=record.get("server"),
        attempts=0,
        metrics=record.get("metrics"),
        per_frame=record.get("per_frame"),
    )


# ----------------------------------------------------------------------------- one video
class Scorer:
    """Scores single videos with one engine (one per worker thread or Ray actor).

    :meth:`score_item` never raises for a bad video: it returns a ``failed`` result. It raises
    :class:`ServerGone` when ``server`` is a Triton URL that stopped answering, so the caller can
    give the video to another server.
    """

    def __init__(
        self, out_dir: str | Path, settings: ScoreSettings, run: dict[str, Any], server: str | None
    ) -> None:
        self.out_dir = Path(out_dir)
        self.settings = settings
        self.run = run
        self.server = server
        self.label = server or "local"
        self.engine = open_scoring_engine(settings.engine, settings.checkpoint, settings.export_dir, server)
        self._datasets: dict[tuple[str, str, str, int], Any] = {}

    def close(self) -> None:
        self.engine.close()

    def _gt_record(self, item: VideoItem) -> Any:
        gt = self.settings.gt
        assert gt is not None
        from avsal_deploy.data.datasets import open_dataset

        key = (gt.root, gt.dataset, gt.split, gt.fold)
        if key not in self._datasets:
            self._datasets[key] = open_dataset(*key)
        dataset = self._datasets[key]
        name = item.record.name if item.record is not None else Path(item.path).stem
        try:
            return dataset[name]
        except (KeyError, IndexError) as exc:
            raise AvsalError(
                f"{item.path}: no ground truth for video {name!r} in {gt.dataset} split {gt.split}"
            ) from exc

    def _metrics(
        self, item: VideoItem, window_maps: np.ndarray, targets: list[int]
    ) -> dict[str, list[float]]:
        from avsal_deploy.training.data import VideoInputs
        from avsal_deploy.training.evaluate import frame_metrics

        gt = self.settings.gt
        assert gt is not None
        record = self._gt_record(item)
        inputs = VideoInputs(record, self.engine.config, self.engine.variant, cache=False)
        maps, fixations = inputs.native_annotations()
        if maps.shape[0] <= max(targets):
            raise AvsalError(
                f"{item.path}: {max(targets) + 1} frames predicted, ground truth has {maps.shape[0]}"
            )
        values = frame_metrics(window_maps, targets, maps, fixations, gt.metrics, seed=self.settings.seed)
        return {m: [float(x) for x in v] for m, v in values.items()}

    def score_item(self, item: VideoItem) -> VideoResult:
        """Skip, predict or fail one video (see the module docstring)."""
        try:
            record = _complete(item, self.out_dir, self.run)
        except OSError:
            record = None
        if record is not None:
            return _skipped(item, record)
        tmp = self.out_dir / PARTIAL / uuid.uuid4().hex
        t0 = time.perf_counter()
        try:
            tmp.mkdir(parents=True)
            fingerprint = {**input_stat(item), "sha256": input_hash(item)}
            s = self.settings
            pred = predict_item(
                item,
                tmp,
                self.engine,
                steps=s.steps,
                stride=s.stride,
                batch_size=s.batch_size,
                seed=s.seed,
                overlay=s.overlay,
                pngs=s.pngs,
            )
            per_frame = self._metrics(item, pred.window_maps, pred.targets) if s.gt is not None else None
            seconds = time.perf_counter() - t0
            metrics = _means(per_frame) if per_frame is not None else None
            files = sorted(p.name for p in tmp.iterdir())
            record = {
                "status": "done",
                "path": item.path,
                "input": {"path": item.path, **fingerprint},
                "settings": self.run,
                "frames": int(pred.summary["frames"]),
                "seconds": round(seconds, 3),
                "server": self.label,
                "files": files,
                "metrics": metrics,
                "per_frame": per_frame,
            }
            _write_json(tmp / RECORD, record)
            _publish(tmp, self.out_dir / item.rel, self.out_dir)
            return VideoResult(
                path=item.path,
                rel=item.rel,
                status="done",
                frames=record["frames"],
                seconds=seconds,
                server=self.label,
                metrics=metrics,
                per_frame=per_frame,
            )
        except Exception as exc:  # noqa: BLE001 - every failure of one video is that video's result
            if self.server is not None and not server_ready(self.server):
                raise ServerGone(self.server, _one_line(item, exc)) from exc
            return VideoResult(
                path=item.path,
                rel=item.rel,
                status="failed",
                seconds=time.perf_counter() - t0,
                error=_one_line(item, exc),
                server=self.label,
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _means(per_frame: dict[str, list[float]]) -> dict[str, float]:
    from avsal_deploy.metrics import aggregate

    return aggregate({"v": {m: np.asarray(v, np.float64) for m, v in per_frame.items()}}, mode="per_frame")


class ServerGone(Exception):
    """The Triton server a worker uses stopped answering while it scored a video."""

    def __init__(self, url: str, message: str) -> None:
        super().__init__(message)
        self.url = url


def server_ready(url: str, timeout_s: float = 3.0) -> bool:
    """Whether a Triton server answers ready (a stopping server is live but no longer ready)."""
    address = url.split("://", 1)[-1].rstrip("/")
    try:
        with urllib.request.urlopen(f"http://{address}/v2/health/ready", timeout=timeout_s) as response:
            return bool(response.status == 200)
    except OSError:
        return False


# ----------------------------------------------------------------------------- local run
@dataclass
class _Task:
    item: VideoItem
    index: int
    tried: list[str] = field(default_factory=list)


def _run_threads(
    items: Sequence[VideoItem], out_dir: Path, settings: ScoreSettings, run: dict[str, Any], jobs: int
) -> Iterator[tuple[int, VideoResult]]:
    """Score on ``jobs`` threads (at least one per Triton URL); yields (index, result)."""
    servers: list[str | None] = list(settings.urls) or (
        [None] if settings.engine != "triton" else ["127.0.0.1:8000"]
    )
    n_workers = max(jobs, len(servers))
    tasks: queue.Queue[_Task] = queue.Queue()
    for i, item in enumerate(items):
        tasks.put(_Task(item, i))
    results: queue.Queue[tuple[int, VideoResult] | None] = queue.Queue()
    stop = threading.Event()
    lock = threading.Lock()
    state: dict[str, Any] = {"pending": len(items), "workers": n_workers, "error": None}
    dead: set[str] = set()

    def finish(index: int, result: VideoResult) -> None:
        with lock:
            state["pending"] -= 1
        results.put((index, result))

    def worker(server: str | None) -> None:
        scorer = None
        try:
            try:
                scorer = Scorer(out_dir, settings, run, server)
            except Exception as exc:  # noqa: BLE001 - reported by the consumer
                with lock:
                    if server is None or server_ready(server):
                        state["error"] = exc
                    else:
                        dead.add(server)
                return
            while not stop.is_set() and not interrupt.requested():
                with lock:
                    if state["pending"] == 0:
                        return
                try:
                    task = tasks.get(timeout=0.1)
                except queue.Empty:
                    continue
                try:
                    result = scorer.score_item(task.item)
                except interrupt.Interrupted:
                    return  # the video in flight was discarded (its private directory removed)
                except ServerGone as gone:
                    task.tried.append(gone.url)
                    with lock:
                        dead.add(gone.url)
                        others = [s for s in servers if s is not None and s not in dead]
                    if others:
                        tasks.put(task)
                    else:
                        finish(task.index, _failed(task, f"{gone} (no Triton server left)"))
                    return
                if result.status != "skipped":
                    result.attempts = len(task.tried) + 1
                    result.servers_tried = [*task.tried, scorer.label]
                finish(task.index, result)
        finally:
            if scorer is not None:
                scorer.close()
            with lock:
                state["workers"] -= 1
            results.put(None)  # wake the consumer: it checks whether any worker is left

    threads = [
        threading.Thread(
            target=worker, args=(servers[i % len(servers)],), daemon=True, name=f"avsal-score-{i}"
        )
        for i in range(n_workers)
    ]
    for t in threads:
        t.start()
    try:
        remaining = len(items)
        while remaining:
            try:
                got = results.get(timeout=0.2)
            except queue.Empty:
                interrupt.check()
                continue
            if got is not None:
                remaining -= 1
                yield got
                continue
            interrupt.check()  # a worker that stopped for a stop request is no failure
            with lock:
                workers_left, error = state["workers"], state["error"]
            if error is not None:
                if isinstance(error, AvsalError):
                    raise error
                raise AvsalError(f"cannot open the {settings.engine} engine: {' '.join(str(error).split())}")
            if workers_left == 0:  # every server gone: what is still queued fails
                while True:
                    try:
                        task = tasks.get_nowait()
                    except queue.Empty:
                        break
                    remaining -= 1
                    tried = ", ".join(task.tried) or ", ".join(s for s in servers if s)
                    yield (
                        task.index,
                        _failed(task, f"{task.item.path}: no Triton server left (tried {tried})"),
                    )
                while not results.empty():
                    got = results.get()
                    if got is not None:
                        remaining -= 1
                        yield got
                if remaining:
                    raise AvsalError(f"all workers stopped with {remaining} video(s) unscored")
    finally:
        stop.set()
        for t in threads:  # an interrupted run waits for the videos in flight to be discarded
            t.join()
    interrupt.check()


def _failed(task: _Task, message: str) -> VideoResult:
    return VideoResult(
        path=task.item.path,
        rel=task.item.rel,
        status="failed",
        error=message if task.item.path in message else f"{task.item.path}: {message}",
        attempts=max(1, len(task.tried)),
        servers_tried=list(task.tried),
    )


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
    from avsal_deploy.pipeline import check_writable

    check_writable(out_dir)
    shutil.rmtree(out_dir / PARTIAL, ignore_errors=True)  # the videos in flight when a run died
    (out_dir / PARTIAL).mkdir()


def score(
    paths: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    engine: str = "onnxruntime",
    checkpoint: str | os.PathLike[str] | None = None,
    export_dir: str | os.PathLike[str] | None = None,
    urls: Sequence[str] = (),
    jobs: int = 1,
    steps: int | None = None,
    stride: int | None = None,
    seed: int = 0,
    batch_size: int = 1,
    overlay: bool = False,
    pngs: bool = False,
    gt: GroundTruth | None = None,
    ray_address: str | None = None,
    progress: ScoreProgress | None = None,
) -> Iterator[VideoResult]:
    """Score every video of ``paths`` into ``out_dir``; yield one :class:`VideoResult` per video
    as it finishes, then write ``summary.json`` / ``summary.csv`` (see the module docstring).

    ``paths``: files, directories or list files (:func:`collect_inputs`); empty with ``gt``: the
    videos of the data-set split themselves. ``engine``/``checkpoint``/``export_dir``/``urls``
    choose the model and where it runs, ``jobs`` how many videos are in flight (threads, or Ray
    actors with ``ray_address``). ``steps``, ``stride``, ``seed``, ``batch_size`` are those of
    ``avsal predict``; ``overlay`` adds overlay.mp4 and contact_sheet.png, ``pngs`` the per-frame
    PNG maps. Usage errors raise :class:`AvsalError` before any video is touched.
    """
    if jobs < 1:
        raise AvsalError(f"--jobs {jobs}: must be >= 1")
    settings = ScoreSettings(
        engine=engine,
        checkpoint=str(checkpoint) if checkpoint is not None else None,
        export_dir=str(export_dir) if export_dir is not None else None,
        urls=tuple(urls),
        steps=steps,
        stride=stride,
        seed=seed,
        batch_size=batch_size,
        overlay=overlay,
        pngs=pngs,
        gt=gt,
    )
    _check_settings(settings)
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
            stream = _run_threads(items, out, settings, run, jobs)
        done = 0
        for index, result in stream:
            results[index] = result
            done += 1
            if progress is not None:
                progress(done, len(items), result)
            yield result
        shutil.rmtree(out / PARTIAL, ignore_errors=True)
        write_summary(out, [r for r in results if r is not None], time.perf_counter() - t0, run, settings.gt)


# ----------------------------------------------------------------------------- summary
def _dataset_metrics(results: Sequence[VideoResult], gt: GroundTruth) -> dict[str, Any]:
    from avsal_deploy.training.evaluate import EvalResult

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
    _write_json(out_dir / "summary.json", summary)

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
