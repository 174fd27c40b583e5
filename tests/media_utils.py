"""Real media files made with PyAV for the tests (shared by the decoding and prediction tests)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

W, H, FPS, N = 96, 64, 30, 30


def _frame(i: int, h: int = H, w: int = W) -> np.ndarray:
    """Frame i: red = 8 i, a green bar moving right, a horizontal blue ramp (smooth colours)."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = (8 * i) % 256
    img[..., 2] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    x = (3 * i) % max(w - 10, 1)
    img[h // 4 : h // 2, x : x + 10, 1] = 255
    return img


def write_video(
    path: Path,
    codec: str = "libx264",
    n: int = N,
    fps: int = FPS,
    size: tuple[int, int] = (H, W),
    pix_fmt: str = "yuv420p",
    audio: str | None = None,
    audio_rate: int = 44100,
    stereo: bool = False,
    pts_ms: list[int] | None = None,
    options: dict[str, str] | None = None,
    samples: np.ndarray | None = None,
) -> Path:
    """Encode n frames (and a 440 Hz tone on the left channel, or the mono float ``samples``) with PyAV."""
    h, w = size
    with av.open(str(path), "w") as out:
        vs = out.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, pix_fmt
        if options:
            vs.options = options
        if pts_ms is not None:
            vs.codec_context.time_base = vs.time_base = Fraction(1, 1000)
        stream_a = None
        if audio:
            stream_a = out.add_stream(audio, rate=audio_rate)
            stream_a.layout = "stereo" if stereo else "mono"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(_frame(i, h, w), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        if stream_a is not None:
            t = np.arange(int(audio_rate * n / fps)) / audio_rate
            tone = (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
            if samples is not None:
                tone = np.asarray(samples, np.float32)
            planes = np.stack([tone, np.zeros_like(tone)]) if stereo else tone[None]
            for first in range(0, tone.shape[0], 960):
                chunk = np.ascontiguousarray(planes[:, first : first + 960])
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=stream_a.layout.name)
                frame.sample_rate, frame.pts = audio_rate, first
                for packet in stream_a.encode(frame):
                    out.mux(packet)
            for packet in stream_a.encode():
                out.mux(packet)
    return path


def write_wav(path: Path, codec: str = "pcm_s16le", rate: int = 16000, seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    tone = (0.25 * np.sin(2 * np.pi * 300.0 * t)).astype(np.float32)
    with av.open(str(path), "w") as out:
        st = out.add_stream(codec, rate=rate)
        st.layout = "mono"
        frame = av.AudioFrame.from_ndarray(tone[None], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        for packet in st.encode(frame):
            out.mux(packet)
        for packet in st.encode():
            out.mux(packet)
    return tone
