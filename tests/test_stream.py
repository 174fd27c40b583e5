"""Streaming windows equal the offline plan: same windows, clips and audio inputs."""

from __future__ import annotations

import numpy as np
import pytest

from avsal_deploy.config import load_config
from avsal_deploy.data.audio import audio_input, envelope_input
from avsal_deploy.data.decode import VideoData
from avsal_deploy.data.preprocess import gather_clip, preprocess_frames
from avsal_deploy.data.stream import StreamWindow, StreamWindower
from avsal_deploy.errors import ConfigError
from avsal_deploy.windows import plan

TINY = load_config("tiny")  # L = 8
FPS = 25.0


def _media(n: int, rate: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(n, 20, 30, 3), dtype=np.uint8)
    audio = rng.standard_normal(int(np.ceil((n + 1) / FPS * rate))).astype(np.float32)
    return frames, audio


def _offline(frames: np.ndarray, audio: np.ndarray, rate: int) -> VideoData:
    n = frames.shape[0]
    return VideoData(
        frames=frames,
        fps=FPS,
        timestamps=np.arange(n) / FPS,
        audio=audio,
        audio_rate=rate,
        has_audio=True,
        path="stream",
        source_size=frames.shape[1:3],
    )


def _run(
    streamer: StreamWindower, frames: np.ndarray, audio: np.ndarray, rate: int
) -> tuple[list[StreamWindow], dict[int, int], list[tuple[int, int]]]:
    """Push frame k with the audio of [k/fps, (k+1)/fps); return windows, their emission frame
    and every (frame, source) that source_of settled before the end."""
    out: list[StreamWindow] = []
    emitted_at: dict[int, int] = {}
    settled: list[tuple[int, int]] = []
    edges = (np.arange(frames.shape[0] + 1) / FPS * rate).astype(int)
    edges[-1] = audio.shape[0]
    for k in range(frames.shape[0]):
        ready = streamer.push(frames[k], audio[edges[k] : edges[k + 1]])
        emitted_at.update({w.window.target: k for w in ready})
        out += ready
        settled += [(f, s) for f in range(k + 1) if (s := streamer.source_of(f)) is not None]
    out += streamer.flush()
    return out, emitted_at, settled


@pytest.mark.parametrize("variant", ["hybrid", "diffsal"])
@pytest.mark.parametrize("mode", ["causal", "centre"])
@pytest.mark.parametrize("stride", [1, 3])
def test_stream_equals_offline_plan(variant: str, mode: str, stride: int) -> None:
    rate = TINY.audio.soundnet_rate if variant == "hybrid" else TINY.audio.vggish_rate  # no resampling
    for n in (1, 3, 7, 9, 15, 26):
        frames, audio = _media(n, rate, seed=n)
        streamer = StreamWindower(TINY, variant, fps=FPS, audio_rate=rate, stride=stride, mode=mode)
        got, _, settled = _run(streamer, frames, audio, rate)
        expected = plan(n, TINY, variant, stride=stride, mode=mode)
        assert sorted((w.window for w in got), key=lambda w: w.target) == list(expected.windows)
        video = _offline(frames, audio, rate)
        pre = preprocess_frames(frames, TINY)
        for w in got:
            np.testing.assert_array_equal(w.clip, gather_clip(pre, w.window))
            np.testing.assert_allclose(w.audio, audio_input(video.track, w.window, TINY, variant), atol=1e-5)
            if variant == "hybrid":  # the tiny profile's fusion decoder takes the envelope
                np.testing.assert_allclose(w.envelope, envelope_input(video.track, w.window, TINY), atol=1e-5)
            else:
                assert w.envelope is None
            assert w.timestamp == pytest.approx(w.window.target / FPS)
        final = [int(expected.targets[i]) for i in expected.assignment]
        assert [streamer.source_of(f) for f in range(n)] == final
        assert all(final[f] == s for f, s in settled)  # early answers never change


def test_latency_of_the_causal_rule() -> None:
    L = TINY.clip_len("hybrid")
    frames, audio = _media(30, 22050)
    _, emitted_at, _ = _run(StreamWindower(TINY, fps=FPS, audio_rate=22050), frames, audio, 22050)
    for t in range(30):
        assert emitted_at[t] == (t + L - 1 if t < L - 1 else t)  # reversed windows wait for the future


def test_resampled_audio_stays_close_to_offline() -> None:
    """With a 44.1 kHz source the resampling filter of a window's last samples reaches a few
    samples beyond the audio that has arrived; under the Hanning taper the difference is tiny."""
    rate = 44100
    frames, audio = _media(20, rate)
    got, _, _ = _run(StreamWindower(TINY, fps=FPS, audio_rate=rate), frames, audio, rate)
    video = _offline(frames, audio, rate)
    worst = max(np.abs(w.audio - audio_input(video.track, w.window, TINY, "hybrid")).max() for w in got)
    assert worst < 1e-2 * TINY.audio.soundnet_scale


def test_memory_is_bounded() -> None:
    L, rate = TINY.clip_len("hybrid"), 22050
    frames, audio = _media(200, rate)
    streamer = StreamWindower(TINY, fps=FPS, audio_rate=rate)
    edges = (np.arange(201) / FPS * rate).astype(int)
    for k in range(200):
        streamer.push(frames[k], audio[edges[k] : edges[k + 1]])
        assert len(streamer._frames) <= L
        assert streamer._audio.shape[0] <= (L + 3) / FPS * rate
    assert streamer.n_frames == 200


def test_stream_lifecycle_and_timestamps() -> None:
    streamer = StreamWindower(TINY, fps=FPS)
    assert streamer.flush() == [] and streamer.closed
    with pytest.raises(ConfigError, match="after flush"):
        streamer.push(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ConfigError):
        StreamWindower(TINY, fps=0.0)
    # wall-clock timestamps are made relative to the first frame; no audio means silence
    s = StreamWindower(TINY, fps=FPS)
    for k in range(8):
        ready = s.push(np.zeros((4, 4, 3), np.uint8), timestamp=1000.0 + k / FPS)
    assert [w.window.target for w in ready] == [0, 7]  # sorted by target
    assert ready[1].timestamp == pytest.approx(7 / FPS) and not ready[1].audio.any()
