"""One scored video: ``avsal predict``'s outputs in a directory, and the window maps the metrics need.

:func:`predict_item` runs one video (a file, or a data-set record read through the data-set
reader) through :class:`~avsal_deploy.pipeline.Predictor` and
:func:`~avsal_deploy.pipeline.predict_to_directory`, keeping the maps of the computed windows as
they pass; the engine is opened by the caller (:meth:`avsal_deploy.engine.EngineChoice.open`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avsal_deploy.engine.base import Engine
from avsal_deploy.errors import AvsalError
from avsal_deploy.pipeline import FrameMap, PredictOptions, Predictor, predict_to_directory
from avsal_deploy.scoring.inputs import VideoItem


@dataclass
class ItemPrediction:
    """What one scored video produced: ``avsal predict``'s summary and the per-window maps."""

    summary: dict[str, Any]
    window_maps: np.ndarray  # [n_windows, h, w] at the model's map size, in [0, 1]
    targets: list[int]  # the frame each window predicts


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
    options: PredictOptions,
    *,
    overlay: bool,
    pngs: bool,
) -> ItemPrediction:
    """Predict one video into ``out_dir`` as ``avsal predict`` does (one x_T per video, from
    ``options.seed``); a data-set record is read through the data-set reader instead of a decoder."""
    from avsal_deploy.data.source import ArraySource

    if overlay and item.record is not None:
        raise AvsalError(f"{item.path}: --overlay needs a video file, not frames of a data-set record")
    computed: dict[int, np.ndarray] = {}

    def keep_computed(fm: FrameMap) -> None:  # a frame whose own window ran
        if fm.index == fm.source:
            computed[fm.index] = fm.saliency

    source = ArraySource(_record_video(item)) if item.record is not None else item.path
    summary = predict_to_directory(
        source, out_dir, Predictor(engine, options), overlay=overlay, pngs=pngs, observe=keep_computed
    )
    targets = sorted(computed)
    return ItemPrediction(summary, np.stack([computed[t] for t in targets]), targets)
