"""The only place scoring (and ``avsal eval --engine``) calls into the pipeline and the engines.

:func:`open_scoring_engine` opens an engine by name, :func:`predict_item` runs one video through
:class:`~avsal_deploy.pipeline.Predictor` and :func:`~avsal_deploy.pipeline.predict_to_directory`
(the outputs of ``avsal predict``) and hands back the window maps the metrics need, and
:func:`model_identity` names the model an engine would run (for the resume rules). Keeping these
calls here keeps the rest of the package independent of how the pipeline is organised.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avsal_deploy.engine.base import Engine
from avsal_deploy.errors import AvsalError
from avsal_deploy.scoring.inputs import VideoItem
from avsal_deploy.specs import sha256_file

#: Engines ``avsal score`` and ``avsal eval --engine`` accept.
SCORING_ENGINES: tuple[str, ...] = ("onnxruntime", "torch", "tensorrt", "triton")


@dataclass
class ItemPrediction:
    """What one scored video produced: ``avsal predict``'s summary and the per-window maps."""

    summary: dict[str, Any]
    window_maps: np.ndarray  # [n_windows, h, w] at the model's map size, in [0, 1]
    targets: list[int]  # the frame each window predicts


def open_scoring_engine(
    engine: str,
    checkpoint: str | Path | None = None,
    export_dir: str | Path | None = None,
    url: str | None = None,
) -> Engine:
    """An engine by name (:func:`avsal_deploy.engine.open`): ``onnxruntime``/``torch``/``tensorrt``
    from an export directory or a checkpoint (default: the shipped model), ``triton`` at ``url``."""
    from avsal_deploy import engine as engines

    if engine not in SCORING_ENGINES:
        raise AvsalError(f"unknown engine {engine!r}: choose one of {', '.join(SCORING_ENGINES)}")
    if engine == "triton":
        return engines.open(url, "triton", export_dir=export_dir)
    if export_dir is not None and checkpoint is not None:
        raise AvsalError("give a checkpoint or an export directory, not both")
    return engines.open(export_dir or checkpoint, engine)


def model_identity(
    engine: str, checkpoint: str | Path | None, export_dir: str | Path | None, url: str | None
) -> str:
    """A content hash of the model ``engine`` runs: the checkpoint file, the export manifest (which
    records its weights' hash), or the manifest a Triton server carries."""
    if export_dir is not None:
        path = Path(export_dir) / "manifest.json"
        if not path.is_file():
            raise AvsalError(f"{path}: no manifest; create the directory with `avsal export`")
        return "manifest:" + sha256_file(path)
    if engine == "triton":
        from avsal_deploy.serving.client import _Connection
        from avsal_deploy.serving.repository import pipeline_manifest
        from avsal_deploy.serving.triton_models import PIPELINE_MODEL

        connection = _Connection(url or "127.0.0.1:8000", "http", 30.0)
        try:
            manifest = pipeline_manifest(connection.model_config(PIPELINE_MODEL))[0]
        finally:
            connection.close()
        return "manifest:" + hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    from avsal_deploy.engine import DEFAULT_CHECKPOINT

    ckpt = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
    if not ckpt.is_file():
        raise AvsalError(f"{ckpt}: no such checkpoint file")
    return "checkpoint:" + sha256_file(ckpt)


def _record_video(item: VideoItem) -> Any:
    """A data-set record decoded as :class:`~avsal_deploy.data.decode.VideoData` (frames at their
    stored size, the record's soundtrack, frame ``i`` at ``i / fps``)."""
    from avsal_deploy.data.datasets import open_dataset
    from avsal_deploy.data.decode import VideoData

    assert item.record is not None
    ref = item.record
    record = open_dataset(ref.root, ref.dataset, ref.split, ref.fold)[ref.name]
    frames = record.frames()
    audio, rate = record.audio()
    return VideoData(
        frames=frames,
        fps=float(record.fps),
        timestamps=np.arange(record.n_frames, dtype=np.float64) / float(record.fps),
        audio=np.asarray(audio, np.float32),
        audio_rate=int(rate),
        has_audio=getattr(record, "wav", None) is not None,
        path=item.path,
        source_size=(int(frames.shape[1]), int(frames.shape[2])),
    )


def predict_item(
    item: VideoItem,
    out_dir: Path,
    engine: Engine,
    *,
    steps: int | None,
    stride: int | None,
    batch_size: int,
    seed: int,
    overlay: bool,
    pngs: bool,
) -> ItemPrediction:
    """Predict one video into ``out_dir`` as ``avsal predict`` does (one x_T per video, from
    ``seed``); a data-set record is read through the data-set reader instead of a decoder."""
    from avsal_deploy.data.source import ArraySource
    from avsal_deploy.pipeline import Predictor, predict_to_directory

    computed: dict[int, np.ndarray] = {}

    class _Keeping(Predictor):
        """Keeps the maps of the computed windows (a frame whose own window ran) as they pass."""

        def run(self, *args: Any, **kwargs: Any) -> Any:
            for maps, chunk in super().run(*args, **kwargs):
                computed.update({m.index: m.saliency for m in maps if m.index == m.source})
                yield maps, chunk

    if overlay and item.record is not None:
        raise AvsalError(f"{item.path}: --overlay needs a video file, not frames of a data-set record")
    predictor = _Keeping(engine, steps, stride, batch_size, seed)
    source = ArraySource(_record_video(item)) if item.record is not None else item.path
    summary = predict_to_directory(source, out_dir, predictor, overlay=overlay, pngs=pngs)
    targets = sorted(computed)
    return ItemPrediction(summary, np.stack([computed[t] for t in targets]), targets)
