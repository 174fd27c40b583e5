"""One video of a scoring run: the settings of the run, the record of a video, the :class:`Scorer`.

A :class:`Scorer` holds one engine (one per worker thread or Ray actor) and turns one video into
its published directory and :class:`VideoResult` (see :mod:`avsal_deploy.scoring.core` for the
rules: atomic per video, resume, failure isolation).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avsal_deploy._version import __version__
from avsal_deploy.engine.choice import EngineChoice
from avsal_deploy.errors import AvsalError, BackendUnavailableError
from avsal_deploy.metrics import VIDEO_METRICS
from avsal_deploy.pipeline import PredictOptions
from avsal_deploy.scoring.inputs import VideoItem, input_hash, input_stat
from avsal_deploy.scoring.prediction import predict_item

RECORD = "score.json"
PARTIAL = ".partial"
#: Metrics ``--gt`` reports (the MIT metrics; sAUC needs the whole set at once and is left to ``avsal eval``).
GT_METRICS: tuple[str, ...] = VIDEO_METRICS


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
    """How every video of a run is predicted (what :func:`score` takes, minus the inputs): the
    model and where it runs (``engine``; with several Triton servers, ``urls`` replaces its URL
    per worker), the prediction ``options``, the optional outputs and the ground truth."""

    engine: EngineChoice = field(default_factory=EngineChoice)
    urls: tuple[str, ...] = ()
    options: PredictOptions = field(default_factory=PredictOptions)
    overlay: bool = False
    pngs: bool = False
    gt: GroundTruth | None = None

    def servers(self) -> list[str | None]:
        """The engine's server per worker group: every URL, the choice's own, or None (local)."""
        return list(self.urls) if self.urls else [self.engine.server]


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
    servers = settings.servers()
    for url in servers:  # the first server that answers names the served model
        try:
            model = (settings.engine.with_url(url) if url is not None else settings.engine).identity()
            break
        except BackendUnavailableError:
            if url == servers[-1]:
                raise
    o = settings.options
    return {
        "engine": settings.engine.backend,
        "model": model,
        "steps": o.steps,
        "stride": o.stride,
        "seed": o.seed,
        "batch_size": o.batch_size,
        "overlay": settings.overlay,
        "pngs": settings.pngs,
        "gt": settings.gt.key() if settings.gt is not None else None,
        "avsal_version": __version__,
    }


def check_settings(settings: ScoreSettings) -> None:
    if settings.urls and not settings.engine.remote:
        raise AvsalError(
            f"--url is for --engine triton (a Triton server), not --engine {settings.engine.backend}"
        )
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


def write_json(path: Path, data: Any) -> None:
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
    sizes = record.get("sizes")  # records written before sizes were recorded have none
    if sizes is not None and sizes != output_sizes(directory, record.get("files", [])):
        return None  # an output was truncated or changed after the record was written
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
    write_json(directory / RECORD, record)
    return record


def output_sizes(directory: Path, names: list[str]) -> dict[str, int]:
    """Bytes of each output (a directory: of its files together), as a record lists them."""
    sizes = {}
    for name in names:
        path = directory / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        sizes[name] = sum(p.stat().st_size for p in files)
    return sizes


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
        choice = settings.engine.with_url(server) if server is not None else settings.engine
        self.engine = choice.open()
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
        from avsal_deploy.metrics import frame_metrics

        gt = self.settings.gt
        assert gt is not None
        maps, fixations = self._gt_record(item).annotations()
        if maps.shape[0] <= max(targets):
            raise AvsalError(
                f"{item.path}: {max(targets) + 1} frames predicted, ground truth has {maps.shape[0]}"
            )
        values = frame_metrics(
            window_maps, targets, maps, fixations, gt.metrics, seed=self.settings.options.seed
        )
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
            pred = predict_item(item, tmp, self.engine, s.options, overlay=s.overlay, pngs=s.pngs)
            per_frame = self._metrics(item, pred.window_maps, pred.targets) if s.gt is not None else None
            seconds = time.perf_counter() - t0
            metrics = _means(per_frame) if per_frame is not None else None
            files = sorted(p.name for p in tmp.iterdir())
            record = {
                "sizes": output_sizes(tmp, files),
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
            write_json(tmp / RECORD, record)
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
