"""The public Python API behind ``import avsal_deploy``: the commands as functions.

Every name is imported lazily (:mod:`avsal_deploy` resolves it on first use) and nothing here
imports torch until a function needs it (a checkpoint to export or convert), so
``avsal_deploy.predict`` runs on the base install with the shipped model on ONNX Runtime.
The functions take the options of the matching ``avsal`` command, by the same names.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

if TYPE_CHECKING:
    from avsal_deploy.engine.base import Engine
    from avsal_deploy.models.official import ConvertedCheckpoint
    from avsal_deploy.pipeline import Prediction
    from avsal_deploy.scoring.core import GroundTruth, VideoResult

PathLike = str | os.PathLike[str]

__all__ = ["convert", "model_zoo", "open_engine", "predict", "score"]


def open_engine(
    engine: str | None = None,
    *,
    checkpoint: PathLike | None = None,
    export: PathLike | None = None,
    url: str | None = None,
    **options: Any,
) -> Engine:
    """An inference engine (use it as a context manager, or :meth:`~avsal_deploy.engine.base.Engine.close` it).

    ``engine``: ``onnxruntime`` (default; ``triton`` when ``url`` is given), ``torch``,
    ``tensorrt`` or ``triton``. The model is ``checkpoint`` (an avsal checkpoint, exported once
    into the cache for ONNX Runtime; needs the ``export`` extra), ``export`` (an ``avsal export``
    directory) or, with neither, the shipped one; ``url`` is a Triton server. ``options`` go to
    the backend (``device`` for torch, ``providers`` / ``threads`` for onnxruntime, ...).
    """
    from avsal_deploy.engine.choice import EngineChoice

    return EngineChoice.of(engine, checkpoint, export, url).open(**options)


@overload
def predict(
    video: PathLike,
    out: None = None,
    *,
    checkpoint: PathLike | None = None,
    export: PathLike | None = None,
    engine: str | None = None,
    url: str | None = None,
    steps: int | None = None,
    stride: int | None = None,
    seed: int = 0,
    batch_size: int = 1,
    overlay: bool = False,
    pngs: bool = False,
    map_size: Literal["model", "source"] = "model",
    progress: Callable[[int, int], None] | None = None,
) -> Prediction: ...


@overload
def predict(
    video: PathLike,
    out: PathLike,
    *,
    checkpoint: PathLike | None = None,
    export: PathLike | None = None,
    engine: str | None = None,
    url: str | None = None,
    steps: int | None = None,
    stride: int | None = None,
    seed: int = 0,
    batch_size: int = 1,
    overlay: bool = False,
    pngs: bool = False,
    map_size: Literal["model", "source"] = "model",
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]: ...


def predict(
    video: PathLike,
    out: PathLike | None = None,
    *,
    checkpoint: PathLike | None = None,
    export: PathLike | None = None,
    engine: str | None = None,
    url: str | None = None,
    steps: int | None = None,
    stride: int | None = None,
    seed: int = 0,
    batch_size: int = 1,
    overlay: bool = False,
    pngs: bool = False,
    map_size: Literal["model", "source"] = "model",
    progress: Callable[[int, int], None] | None = None,
) -> Prediction | dict[str, Any]:
    """Saliency maps of ``video``, as ``avsal predict`` computes them.

    Without ``out``: a :class:`~avsal_deploy.pipeline.Prediction` in memory (every map at the
    model's size; ``.maps()`` at the video's size) -- for short clips. With ``out``: the files of
    ``avsal predict`` written into that directory (``maps.npz`` and ``summary.json``; with
    ``overlay`` also ``overlay.mp4`` and ``contact_sheet.png``, with ``pngs`` the per-frame PNG
    maps; ``map_size`` is the size ``maps.npz`` stores) and the summary returned, in constant
    memory whatever the video's length; ``progress(frames written, frames expected)``.

    The model and engine are chosen as in :func:`open_engine`. ``steps`` (DDIM steps; None: the
    config's, 0: the one-shot map), ``stride`` (run the networks for every K-th frame), ``seed``
    (of the sampling noise, one per video) and ``batch_size`` (windows per engine call) are
    :class:`~avsal_deploy.pipeline.PredictOptions`.
    """
    from avsal_deploy.engine.choice import EngineChoice
    from avsal_deploy.pipeline import PredictOptions, Predictor, predict_to_directory

    options = PredictOptions(steps=steps, stride=stride, seed=seed, batch_size=batch_size)
    choice = EngineChoice.of(engine, checkpoint, export, url)
    with choice.open() as opened:
        predictor = Predictor(opened, options)
        if out is None:
            return predictor.predict(video)
        return predict_to_directory(
            video, out, predictor, overlay=overlay, pngs=pngs, map_size=map_size, progress=progress
        )


def score(
    inputs: Sequence[PathLike],
    out: PathLike,
    *,
    checkpoint: PathLike | None = None,
    export: PathLike | None = None,
    engine: str | None = None,
    urls: Sequence[str] = (),
    jobs: int = 1,
    steps: int | None = None,
    stride: int | None = None,
    seed: int = 0,
    batch_size: int = 1,
    overlay: bool = False,
    pngs: bool = False,
    gt: GroundTruth | None = None,
    ray: str | None = None,
) -> list[VideoResult]:
    """Score many videos into ``out`` as ``avsal score`` does (resumable, failure-isolated) and
    return one :class:`~avsal_deploy.scoring.core.VideoResult` per video.

    ``inputs``: video files, directories (searched recursively) or list files; empty with ``gt``
    (:class:`~avsal_deploy.scoring.core.GroundTruth`): the data set's own videos, scored against
    its ground truth. ``urls``: Triton servers sharing the work (``engine`` triton); ``jobs``:
    videos in flight (threads, or Ray actors on the cluster at ``ray``). The model, engine and
    prediction options are those of :func:`predict`.
    """
    from avsal_deploy.engine.choice import EngineChoice
    from avsal_deploy.pipeline import PredictOptions
    from avsal_deploy.scoring.core import score as run

    urls = list(urls)
    choice = EngineChoice.of(
        engine or ("triton" if urls else None), checkpoint, export, urls[0] if len(urls) == 1 else None
    )
    return list(
        run(
            list(inputs),
            out,
            engine=choice,
            urls=urls if len(urls) > 1 else (),
            jobs=jobs,
            options=PredictOptions(steps=steps, stride=stride, seed=seed, batch_size=batch_size),
            overlay=overlay,
            pngs=pngs,
            gt=gt,
            ray_address=ray,
        )
    )


def convert(
    source: PathLike,
    out: PathLike,
    *,
    family: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ConvertedCheckpoint:
    """Convert an official checkpoint file (DiffSal, ViNet, AViNet, ViNet-S, TASED-Net) into an
    avsal checkpoint at ``out``, as ``avsal convert`` does (needs torch: the ``export`` extra).

    ``family``: the official model (:data:`avsal_deploy.config.CONVERT_SOURCES`; None: detected
    from the keys); ``overrides``: config fields on the family's input mode, e.g.
    ``{"fusion.upsampling": "bilinear"}``. Returns what was written (path, family, parameters,
    dropped keys).
    """
    from avsal_deploy.models.official import convert_checkpoint

    return convert_checkpoint(Path(source), Path(out), family, overrides)


def model_zoo() -> list[dict[str, Any]]:
    """Every model family (ours at each profile, the official ones at their input mode) with its
    parameters, GFLOPs per window, audio, input mode, origin and weights licence, as ``avsal
    models`` lists them (needs torch: the ``export`` extra)."""
    from avsal_deploy.models.zoo import model_zoo as rows

    return rows()
