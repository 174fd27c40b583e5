"""Play a video file (or a live input) through ``avsal_stream``, and keep what comes back.

:func:`play` decodes a file with the offline flow's own :class:`~avsal_deploy.data.source.MediaSource`
or opens a capture device / live URL with :class:`~avsal_deploy.data.source.CaptureSource`,
sends each frame with its audio (at the pace of its timestamps with ``realtime``), and writes the
returned maps (``maps.npz``) and an overlay video with the soundtrack, reporting per-frame latency
(from sending a frame to receiving its map; start-up frames wait for their reversed windows) and
throughput.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from avsal_deploy import interrupt
from avsal_deploy.data.preprocess import postprocess_map
from avsal_deploy.data.source import CaptureSource, MediaSource, is_capture_spec
from avsal_deploy.serving.client import stream


def play(
    url: str,
    video: str | Path,
    out_dir: str | Path,
    *,
    realtime: bool = True,
    overlay: bool = True,
    steps: int | None = None,
    stride: int | None = None,
    seed: int = 0,
    roi_out: str | Path | None = None,
    roi_codec: str = "x264",
    roi_crf: float = 28.0,
    capture_options: dict[str, str] | None = None,
    max_seconds: float | None = None,
) -> dict[str, Any]:
    """Stream ``video`` through the server at ``url`` (gRPC); returns and writes ``stream.json``.

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
    from avsal_deploy import outputs

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    live = is_capture_spec(str(video))
    source = CaptureSource(str(video), capture_options, max_seconds) if live else MediaSource(video)
    sent: dict[int, tuple[np.ndarray, float, float]] = {}
    chunks: list[np.ndarray] = []
    writer = outputs.MapWriter(out / "maps.npz", source.source_size, source.fps)
    size = outputs.overlay_size(source.source_size, 1280)
    rate = source.audio_rate if source.has_audio else 0
    video_out = outputs.OverlayWriter(out / "overlay.mp4", source.fps, size, rate) if overlay else None
    latencies: list[float] = []
    roi_frames: list[np.ndarray] = []
    roi_offsets: list[np.ndarray] = []
    t_start = time.perf_counter()

    def frames() -> Iterator[tuple[np.ndarray, float]]:
        for i, (frame, ts, chunk) in enumerate(source.media()):
            if interrupt.requested():  # end the stream here: the server flushes what was sent
                return
            if realtime:
                time.sleep(max(0.0, t_start + ts - time.perf_counter()))
            sent[i] = (frame, ts, time.perf_counter())
            chunks.append(chunk)
            if video_out is not None:
                video_out.add_audio(chunk)
            yield frame, ts

    def audio() -> Iterator[np.ndarray]:
        while True:
            yield chunks.pop(0) if chunks else np.zeros(0, np.float32)

    try:
        results = stream(
            url,
            frames(),
            audio(),
            fps=source.fps,
            audio_rate=source.audio_rate,
            steps=steps,
            stride=stride,
            seed=seed,
            roi_codec=roi_codec if roi_out is not None else None,
        )
        for item in results:
            index, saliency = item[0], item[1]
            frame, ts, t_sent = sent.pop(index)
            if roi_out is not None:
                from avsal_deploy.roi.encode import to_yuv420p

                roi_frames.append(to_yuv420p(frame))
                roi_offsets.append(item[2])
            latencies.append(time.perf_counter() - t_sent)
            full = postprocess_map(saliency, source.source_size)
            writer.write(full, ts)
            if video_out is not None:
                video_out.add_frame(frame, full, ts)
        writer.close()
        if video_out is not None:
            video_out.add_audio(source.rest_of_audio())
            video_out.close()
        if roi_out is not None:
            from avsal_deploy.roi.encode import Clip, encode

            encoded = encode(Clip(roi_frames, source.fps), roi_crf, roi_codec, roi_offsets)
            Path(roi_out).write_bytes(encoded.data)
    except BaseException:
        writer.abort()
        raise
    finally:
        source.close()
    seconds = time.perf_counter() - t_start
    lat = np.asarray(latencies) * 1000.0
    report = {
        "video": str(video),
        "frames": len(latencies),
        "seconds": round(seconds, 3),
        "frames_per_second": round(len(latencies) / max(seconds, 1e-9), 2),
        "realtime": realtime,
        "live_input": live,
        "latency_ms": {
            q: round(float(np.percentile(lat, p)), 2) for q, p in (("p50", 50), ("p95", 95), ("p99", 99))
        },
    }
    (out / "stream.json").write_text(json.dumps(report, indent=2))
    interrupt.check()
    return report
