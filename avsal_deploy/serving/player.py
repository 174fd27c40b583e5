"""Play a video file (or a live input) through ``avsal_stream``, and keep what comes back.

:func:`play` decodes a file with the offline flow's own :class:`~avsal_deploy.data.source.MediaSource`
or opens a capture device / live URL with :class:`~avsal_deploy.data.source.CaptureSource`,
sends each frame with its audio (at the pace of its timestamps with ``realtime``), and writes the
returned maps (``maps.npz``) and an overlay video with the soundtrack through the one writer of a
prediction (:class:`~avsal_deploy.outputs.PredictionWriter`: every file appears complete, or not
at all), reporting per-frame latency (from sending a frame to receiving its map; start-up frames
wait for their reversed windows) and throughput.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from avsal_deploy import interrupt
from avsal_deploy.data.source import CaptureSource, MediaSource, is_capture_spec
from avsal_deploy.outputs import PredictionWriter
from avsal_deploy.pipeline import PredictOptions
from avsal_deploy.serving.client import stream


class _Sender:
    """The frames of a source as :func:`~avsal_deploy.serving.client.stream` sends them: paced
    by their timestamps (``realtime``), remembered until their maps come back, their audio handed
    to the writer and to the audio iterator, ending early on a stop request."""

    def __init__(self, source: Any, writer: PredictionWriter, realtime: bool) -> None:
        self.source = source
        self.writer = writer
        self.realtime = realtime
        self.sent: dict[int, tuple[np.ndarray, float, float]] = {}
        self.chunks: list[np.ndarray] = []
        self.t_start = time.perf_counter()

    def frames(self) -> Iterator[tuple[np.ndarray, float]]:
        for i, (frame, ts, chunk) in enumerate(self.source.media()):
            if interrupt.requested():  # end the stream here: the server flushes what was sent
                return
            if self.realtime:
                time.sleep(max(0.0, self.t_start + ts - time.perf_counter()))
            self.sent[i] = (frame, ts, time.perf_counter())
            self.chunks.append(chunk)
            self.writer.add_audio(chunk)
            yield frame, ts

    def audio(self) -> Iterator[np.ndarray]:
        while True:
            yield self.chunks.pop(0) if self.chunks else np.zeros(0, np.float32)


class _RoiRecorder:
    """The frames (yuv420p) and the server's QP offsets of a stream, encoded at its end."""

    def __init__(self, path: str | Path, codec: str, crf: float) -> None:
        self.path, self.codec, self.crf = Path(path), codec, crf
        self.frames: list[np.ndarray] = []
        self.offsets: list[np.ndarray] = []

    def add(self, frame: np.ndarray, offsets: np.ndarray) -> None:
        from avsal_deploy.roi.encode import to_yuv420p

        self.frames.append(to_yuv420p(frame))
        self.offsets.append(offsets)

    def write(self, fps: float) -> None:
        """Encode the stream and write it atomically (temporary file beside it, then a rename)."""
        from avsal_deploy.roi.encode import Clip, encode

        encoded = encode(Clip(self.frames, fps), self.crf, self.codec, self.offsets)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(encoded.data)
        os.replace(tmp, self.path)


def _report(
    video: str | Path, latencies: list[float], seconds: float, realtime: bool, live: bool
) -> dict[str, Any]:
    """``stream.json``: frames, speed and per-frame latency percentiles (none for a stream stopped
    before its first map)."""
    lat = np.asarray(latencies) * 1000.0
    return {
        "video": str(video),
        "frames": len(latencies),
        "seconds": round(seconds, 3),
        "frames_per_second": round(len(latencies) / max(seconds, 1e-9), 2),
        "realtime": realtime,
        "live_input": live,
        "latency_ms": {
            q: round(float(np.percentile(lat, p)), 2) for q, p in (("p50", 50), ("p95", 95), ("p99", 99))
        }
        if lat.size
        else {},
    }


def play(
    url: str,
    video: str | Path,
    out_dir: str | Path,
    *,
    realtime: bool = True,
    overlay: bool = True,
    options: PredictOptions | None = None,
    roi_out: str | Path | None = None,
    roi_codec: str = "x264",
    roi_crf: float = 28.0,
    capture_options: dict[str, str] | None = None,
    max_seconds: float | None = None,
) -> dict[str, Any]:
    """Stream ``video`` through the server at ``url`` (gRPC); returns and writes ``stream.json``.

    ``options``: the stream's steps, stride and seed (the batch size is the server's).
    ``roi_out``: also encode the stream with the QP offsets the server returns per frame
    (``roi_codec``, CRF ``roi_crf``; :func:`avsal_deploy.roi.encode.encode`; the frames are kept
    as yuv420p until the end of the stream, then encoded).

    ``video`` may name a live input (``FORMAT:TARGET`` such as ``v4l2:/dev/video0`` or
    ``lavfi:testsrc``, or a streaming URL; ``capture_options`` are its demuxer options): it plays
    until it ends or ``max_seconds`` pass. A stop request (SIGINT or SIGTERM under the CLI,
    :mod:`avsal_deploy.interrupt`) ends the stream cleanly after the current frame, file or live
    input alike: the sequence is closed on the server (its slot freed), the frames sent so far get
    their maps and every output is written; then :class:`~avsal_deploy.interrupt.Interrupted` is
    raised."""
    options = options if options is not None else PredictOptions()
    live = is_capture_spec(str(video))
    source = CaptureSource(str(video), capture_options, max_seconds) if live else MediaSource(video)
    roi = _RoiRecorder(roi_out, roi_codec, roi_crf) if roi_out is not None else None
    latencies: list[float] = []
    try:
        with PredictionWriter(
            out_dir,
            source_size=source.source_size,
            fps=source.fps,
            audio_rate=source.audio_rate if source.has_audio else 0,
            overlay=overlay,
            contact_sheet=False,
        ) as writer:
            sender = _Sender(source, writer, realtime)
            results = stream(
                url,
                sender.frames(),
                sender.audio(),
                fps=source.fps,
                audio_rate=source.audio_rate,
                steps=options.steps,
                stride=options.stride,
                seed=options.seed,
                roi_codec=roi_codec if roi is not None else None,
            )
            for item in results:
                index, saliency = item[0], item[1]
                frame, ts, t_sent = sender.sent.pop(index)
                if roi is not None:
                    roi.add(frame, item[2])
                latencies.append(time.perf_counter() - t_sent)
                writer.add_map(index, ts, saliency, frame if overlay else None)
            writer.add_audio(source.rest_of_audio())
            writer.finish()
            if roi is not None:
                roi.write(source.fps)
            report = _report(video, latencies, time.perf_counter() - sender.t_start, realtime, live)
            writer.publish({"stream.json": json.dumps(report, indent=2)})
    finally:
        source.close()
    interrupt.check()
    return report
