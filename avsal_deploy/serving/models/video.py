"""``avsal_video``: a whole encoded file per request, decoded server-side; the maps and the fps.

Input ``video`` (BYTES [1], any container FFmpeg reads) and the optional ``steps``, ``stride`` and
``seed``; outputs ``maps`` FP32 [N, h, w] (the model's size) and ``fps`` FP64 [1]. It decodes with
PyAV on CPU, or with DALI's GPU decoder (``decoder = dali``, the GPU repositories), frames copied
to the host for preprocessing, and runs the library's frame flow over the repository's window
engine.

Limits (model config parameters, each refused with a clear error): ``max_pixels``, ``max_steps``,
``max_stride``, ``max_video_bytes``, ``max_video_frames`` and ``max_video_seconds`` (checked from
the headers before decoding and again while decoding: a decompression bomb or a 10-hour file is
refused, not decoded).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from avsal_deploy.errors import AvsalError
from avsal_deploy.pipeline import PredictOptions, Predictor
from avsal_deploy.serving.contract import (
    DECODER_PARAMETER,
    FPS_OUTPUT,
    MAPS_OUTPUT,
    VIDEO_INPUT,
    VIDEO_LIMITS,
    VIDEO_MODEL,
    ComponentCallError,
    RequestError,
    error_response,
    limits_of,
    parameter,
)
from avsal_deploy.serving.models.stream import request_getter, request_options

#: Windows per engine call of a whole video.
VIDEO_WINDOW_BATCH = 8


def _check_headers(path: str, limits: Mapping[str, float]) -> None:
    """Refuse a file whose frame size, duration or frame count exceed the limits, from its headers
    alone (nothing decoded)."""
    from avsal_deploy.data.decode import probe

    info = probe(path)
    if info.width * info.height > limits["max_pixels"]:
        raise RequestError(
            f"{VIDEO_MODEL}: {info.width}x{info.height} exceeds max_pixels={int(limits['max_pixels'])}"
        )
    if info.duration > limits["max_video_seconds"]:
        raise RequestError(
            f"{VIDEO_MODEL}: {info.duration:.0f} s exceeds max_video_seconds={limits['max_video_seconds']:g}"
        )
    if info.n_frames > limits["max_video_frames"]:
        raise RequestError(
            f"{VIDEO_MODEL}: {info.n_frames} frames exceed max_video_frames={int(limits['max_video_frames'])}"
        )


def predict_video_bytes(
    engine: Any, data: bytes, limits: Mapping[str, float], options: PredictOptions, decoder: str = "pyav"
) -> tuple[np.ndarray, float]:
    """Maps [N, h, w] and fps of an encoded video given as bytes, within ``limits``."""
    from avsal_deploy.data.source import MediaSource

    if not data:
        raise RequestError(f"{VIDEO_MODEL}: empty video")
    if len(data) > limits["max_video_bytes"]:
        raise RequestError(
            f"{VIDEO_MODEL}: {len(data)} bytes exceed max_video_bytes={int(limits['max_video_bytes'])}"
        )
    with tempfile.TemporaryDirectory(prefix="avsal-video-") as tmp:
        path = os.path.join(tmp, "video")
        with open(path, "wb") as f:
            f.write(data)
        _check_headers(path, limits)
        source = MediaSource(path, backend="dali-gpu" if decoder == "dali" else "pyav")
        try:
            flow = Predictor(engine, options).flow(source.fps, source.audio_rate)
            maps = []
            for frame, ts, chunk in source.media():
                if flow.n_frames >= limits["max_video_frames"] or ts > limits["max_video_seconds"]:
                    raise RequestError(
                        f"{VIDEO_MODEL}: the video runs past max_video_frames / max_video_seconds"
                    )
                maps += flow.push(frame, chunk, ts)
            maps += flow.flush()
        finally:
            source.close()
    return np.stack([m.saliency for m in maps]).astype(np.float32, copy=False), float(source.fps)


class VideoModel:
    """``avsal_video`` (see the module docstring): one whole encoded video per request."""

    def initialize(self, args: dict[str, str]) -> None:
        from avsal_deploy.serving.window_engine import window_engine

        config = json.loads(args["model_config"])
        self.engine = window_engine(args, config)
        self.limits = limits_of(config, VIDEO_LIMITS)
        self.decoder = parameter(config, DECODER_PARAMETER, str, "pyav")

    def _predict(self, pb_utils: Any, request: Any) -> tuple[np.ndarray, float]:
        get = request_getter(pb_utils, request)
        video = get(VIDEO_INPUT)
        if video is None or video.size != 1:
            raise RequestError(f"{VIDEO_MODEL}: video must be BYTES [1] holding one encoded file")
        data = video.reshape(-1)[0]
        data = data if isinstance(data, bytes) else bytes(data)
        options = request_options(get, self.limits, VIDEO_MODEL, VIDEO_WINDOW_BATCH)
        return predict_video_bytes(self.engine, data, self.limits, options, self.decoder)

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            try:
                maps, fps = self._predict(pb_utils, request)
            except ComponentCallError as exc:
                responses.append(error_response(pb_utils, exc))
                continue
            except AvsalError as exc:  # MediaError for corrupt files, RequestError for limits
                responses.append(error_response(pb_utils, exc, prefix=f"{VIDEO_MODEL}: "))
                continue
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor(MAPS_OUTPUT, maps),
                        pb_utils.Tensor(FPS_OUTPUT, np.array([fps], np.float64)),
                    ]
                )
            )
        return responses

    def finalize(self) -> None:
        """Release the window engine."""
        self.engine.close()
