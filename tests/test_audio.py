"""Audio alignment and features: resampling, the SoundNet buffer, VGGish log-mel (ours vs DALI)."""

from __future__ import annotations

import numpy as np
import pytest

from avsal_deploy.config import load_config
from avsal_deploy.data.audio import (
    audio_input,
    envelope_frames,
    envelope_input,
    excerpt,
    frame_span,
    hertz_to_mel,
    log_mel,
    log_mel_dali,
    mel_matrix,
    resample,
    slice_bounds,
    soundnet_excerpt,
    vggish_slices,
)
from avsal_deploy.data.dali import dali_available
from avsal_deploy.data.decode import VideoData
from avsal_deploy.errors import BackendUnavailableError, ConfigError
from avsal_deploy.windows import plan

PAPER = load_config("paper")
TINY = load_config("tiny")
RNG = np.random.default_rng(0)


def _tone(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


# ----------------------------------------------------------------------------- resampling
@pytest.mark.parametrize(("src", "dst"), [(44100, 16000), (48000, 22050), (8000, 22050), (22050, 22050)])
def test_resample_keeps_pitch_and_duration(src: int, dst: int) -> None:
    y = resample(_tone(440.0, src, 1.0), src, dst)
    assert y.dtype == np.float32 and abs(y.shape[0] - dst) <= 1
    assert np.argmax(np.abs(np.fft.rfft(y))) * dst / y.shape[0] == pytest.approx(440, abs=1.5)


@pytest.mark.parametrize(
    ("src", "dst"), [(44100, 16000), (44100, 22050), (48000, 16000), (8000, 22050), (16000, 16000)]
)
def test_excerpt_equals_slicing_the_resampled_track(src: int, dst: int) -> None:
    x = RNG.standard_normal(src * 2).astype(np.float32)
    full = resample(x, src, dst)
    for start, stop in [(0, 300), (7, 2000), (1234, 5678), (dst - 333, dst + 4000)]:
        np.testing.assert_allclose(excerpt(x, src, start, stop, dst), full[start:stop], atol=1e-5)
    # a buffer that dropped its first `offset` samples (streaming) gives the same samples
    offset = src // 2
    start = dst // 2 + 500
    np.testing.assert_allclose(
        excerpt(x[offset:], src, start, start + 800, dst, audio_offset=offset),
        full[start : start + 800],
        atol=1e-5,
    )
    assert not excerpt(x, src, 10 * dst, 10 * dst + 50, dst).any()  # far beyond the track: silence


# ----------------------------------------------------------------------------- alignment
def test_frame_span_follows_the_vinet_convention() -> None:
    # frame k owns [k/fps*Fs - n/2, k/fps*Fs + n/2] with n = Fs/fps; the end is inclusive
    start, stop = frame_span(range(10, 42), 30.0, 22050)
    assert start == int(10 / 30 * 22050 - 367.5) and stop == int(41 / 30 * 22050 + 367.5) + 1
    assert frame_span([0], 30.0, 22050) == (0, 368)  # clipped at 0
    assert frame_span([5, 4, 3], 30.0, 22050) == frame_span([3, 4, 5], 30.0, 22050)
    vfr = {3: 0.5, 4: 0.9}  # timestamps override k / fps
    assert frame_span([3, 4], 30.0, 1000, timestamps=vfr) == (int(500 - 1000 / 60), int(900 + 1000 / 60) + 1)
    with pytest.raises(ConfigError):
        frame_span([], 30.0, 22050)


def test_soundnet_buffer_is_a_centred_hanning_excerpt() -> None:
    rate, fps = PAPER.audio.soundnet_rate, 30.0
    audio = np.ones(rate * 3, np.float32)
    frames = list(range(20, 52))
    out = soundnet_excerpt(audio, rate, frames, fps, PAPER)
    assert out.shape == PAPER.audio_input_shape("avrsp") == (1, 70560, 1) and out.dtype == np.float32
    buf = out[0, :, 0]
    start, stop = frame_span(frames, fps, rate)
    n = stop - start
    first = 70560 // 2 - n // 2
    np.testing.assert_allclose(buf[first : first + n], 256.0 * np.hanning(n), atol=1e-3)
    assert not buf[:first].any() and not buf[first + n :].any()
    assert buf.max() == pytest.approx(256.0, rel=1e-3)  # legacy SoundNet range


def test_soundnet_resamples_and_reverses() -> None:
    src = 44100
    audio = np.linspace(0.0, 1.0, src * 2, dtype=np.float32)  # a ramp: later is louder
    forward = soundnet_excerpt(audio, src, list(range(8, 16)), 30.0, TINY)[0, :, 0]
    backward = soundnet_excerpt(audio, src, list(range(15, 7, -1)), 30.0, TINY)[0, :, 0]
    nz_f, nz_b = np.flatnonzero(forward), np.flatnonzero(backward)
    np.testing.assert_allclose(backward[nz_b], forward[nz_f][::-1], atol=1e-4)
    mid = (nz_f[0] + nz_f[-1]) // 2
    assert forward[mid + 200] > forward[mid - 200] and backward[mid + 200] < backward[mid - 200]
    explicit = soundnet_excerpt(audio, src, list(range(8, 16)), 30.0, TINY, reverse=True)[0, :, 0]
    np.testing.assert_allclose(explicit, backward, atol=1e-6)


def test_soundnet_crops_long_excerpts_centrally() -> None:
    rate = PAPER.audio.soundnet_rate
    audio = np.ones(rate * 10, np.float32)
    out = soundnet_excerpt(audio, rate, list(range(32)), 5.0, PAPER)[0, :, 0]  # 6.4 s > 3.2 s buffer
    assert out.shape == (70560,) and out[0] > 0 and out[-1] > 0
    assert out[35280] == pytest.approx(256.0, rel=1e-3)


# ----------------------------------------------------------------------------- VGGish log-mel
def _reference_log_mel(x: np.ndarray) -> np.ndarray:
    """A literal, loop-based transcription of VGGish's mel_features.log_mel_spectrogram."""
    win, hop, nfft = 400, 160, 512
    window = 0.5 - 0.5 * np.cos(2 * np.pi / win * np.arange(win))
    n_frames = 1 + (len(x) - win) // hop
    spec = np.stack([np.abs(np.fft.rfft(x[i * hop : i * hop + win] * window, nfft)) for i in range(n_frames)])
    bins_mel = 1127.0 * np.log(1.0 + np.linspace(0.0, 8000.0, 257) / 700.0)
    edges = np.linspace(1127.0 * np.log(1 + 125 / 700), 1127.0 * np.log(1 + 7500 / 700), 66)
    weights = np.empty((257, 64))
    for i in range(64):
        lo, ce, up = edges[i : i + 3]
        weights[:, i] = np.maximum(0.0, np.minimum((bins_mel - lo) / (ce - lo), (up - bins_mel) / (up - ce)))
    weights[0, :] = 0.0
    return np.log(spec @ weights + 0.01)


def test_log_mel_matches_vggish_mel_features() -> None:
    x = (0.3 * _tone(700.0, 16000, 1.0) + 0.05 * RNG.standard_normal(16000)).astype(np.float32)
    ours = log_mel(x, 16000, PAPER)
    assert ours.shape == (98, 64) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, _reference_log_mel(x.astype(np.float64)), atol=1e-4)
    assert log_mel(np.zeros(399, np.float32), 16000, PAPER).shape == (0, 64)


def test_log_mel_band_of_a_tone_and_resampling() -> None:
    mel = log_mel(_tone(1000.0, 44100, 1.0), 44100, PAPER)  # resampled to 16 kHz inside
    assert mel.shape == (98, 64)
    centres = np.linspace(hertz_to_mel(125.0), hertz_to_mel(7500.0), 66)[1:-1]
    expected_band = int(np.argmin(np.abs(centres - hertz_to_mel(1000.0))))
    assert abs(int(np.argmax(mel.mean(axis=0))) - expected_band) <= 1
    assert mel_matrix(PAPER).shape == (257, 64) and not mel_matrix(PAPER)[0].any()


@pytest.mark.skipif(not dali_available(), reason="nvidia-dali is not installed")
def test_dali_log_mel_agrees_with_ours() -> None:
    """DALI's STFT equals ours to float32 rounding (same periodic Hann, no centring, magnitude);
    its HTK filter bank draws each triangle linearly in hertz between the same mel-spaced edges
    where VGGish draws it linearly in mel. Over one band (at most ~150 Hz wide) the mel scale is
    nearly linear, so weights differ by about 1 %, i.e. ~0.01 in log(mel + 0.01). We require at
    most 0.03 anywhere and 0.005 on average (measured: 0.011 and 0.0015)."""
    x = (0.3 * _tone(440.0, 22050, 1.0) + 0.05 * RNG.standard_normal(22050)).astype(np.float32)
    ours = log_mel(x, 22050, PAPER)
    theirs = log_mel_dali(x, 22050, PAPER)
    assert theirs.shape == ours.shape == (98, 64)
    diff = np.abs(theirs - ours)
    assert diff.max() < 0.03 and diff.mean() < 0.005
    assert log_mel_dali(np.zeros(100, np.float32), 16000, PAPER).shape == (0, 64)
    with pytest.raises(BackendUnavailableError, match="needs an NVIDIA GPU"):
        log_mel_dali(x, 22050, PAPER, device="gpu")


def test_slice_bounds_cover_every_frame_and_never_empty() -> None:
    assert slice_bounds(51, 9)[0] == (0, 5) and slice_bounds(51, 9)[-1] == (45, 51)
    for n_frames in (1, 3, 9, 50):
        bounds = slice_bounds(n_frames, 9)
        assert len(bounds) == 9 and all(hi > lo for lo, hi in bounds) and bounds[-1][1] == n_frames


@pytest.mark.parametrize("config", [TINY, PAPER], ids=["tiny", "paper"])
def test_vggish_slices_shape_and_time_order(config) -> None:  # noqa: ANN001
    rate, fps = 16000, 30.0
    audio = np.zeros(rate * 2, np.float32)
    audio[rate // 2 :] = 0.5 * RNG.standard_normal(rate + rate // 2)  # silence, then noise
    L = config.clip_len("diffsal")
    frames = list(range(15 - L // 2, 15 - L // 2 + L))  # a window straddling the onset (t = 0.5 s)
    out = vggish_slices(audio, rate, frames, fps, config)
    assert out.shape == config.audio_input_shape("diffsal") and out.dtype == np.float32
    energy = out.mean(axis=(1, 2, 3))
    assert energy[-1] > energy[0] + 1.0  # the loud part comes last
    reverse = vggish_slices(audio, rate, frames[::-1], fps, config)
    assert reverse.mean(axis=(1, 2, 3))[0] > reverse.mean(axis=(1, 2, 3))[-1] + 1.0
    one = vggish_slices(audio, rate, [40], fps, config)  # 1 frame: shorter than one STFT window
    assert one.shape == config.audio_input_shape("diffsal") and np.isfinite(one).all()


def test_audio_input_dispatches_per_variant_and_uses_windows() -> None:
    n, fps, rate = 20, 25.0, 22050
    video = VideoData(
        frames=np.zeros((n, 8, 8, 3), np.uint8),
        fps=fps,
        timestamps=np.arange(n) / fps,
        audio=RNG.standard_normal(int(rate * n / fps)).astype(np.float32),
        audio_rate=rate,
        has_audio=True,
        path="synthetic",
        source_size=(8, 8),
    )
    p = plan(n, TINY)
    for variant in ("avrsp", "hybrid", "diffsal"):
        assert audio_input(video.track, p.windows[3], TINY, variant).shape == TINY.audio_input_shape(variant)
    np.testing.assert_array_equal(
        audio_input(video.track, p.windows[3], TINY, "diffsal"),
        vggish_slices(video.audio, rate, p.windows[3].frames, fps, TINY, timestamps=video.timestamps),
    )
    w0 = p.windows[0]  # reversed: frames 7..0, so the Window's flag and the indices agree
    assert w0.reversed and w0.frames == tuple(range(7, -1, -1))
    np.testing.assert_allclose(
        audio_input(video.track, w0, TINY, "hybrid"),
        audio_input(video.track, list(w0.frames), TINY, "hybrid"),
    )


# ----------------------------------------------------------------------------- frame envelope
def _video(n: int, audio: np.ndarray, rate: int, timestamps: np.ndarray) -> VideoData:
    return VideoData(
        frames=np.zeros((n, 8, 8, 3), np.uint8),
        fps=25.0,
        timestamps=timestamps,
        audio=audio,
        audio_rate=rate,
        has_audio=True,
        path="synthetic",
        source_size=(8, 8),
    )


def _pulsed(rate: int, seconds: float, hz: float, carrier: float = 440.0) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(int(rate * seconds)) / rate
    env = (0.5 * (1 + np.cos(2 * np.pi * hz * t))) ** 2
    return (0.5 * np.sin(2 * np.pi * carrier * t) * env).astype(np.float32), env


def test_envelope_follows_the_loudness_of_each_frame() -> None:
    rate, fps = 22050, 25.0
    audio, env = _pulsed(rate, 2.0, hz=3.0)
    frames = list(range(5, 37))
    e = envelope_frames(audio, rate, frames, fps, TINY)
    assert e.shape == (TINY.audio.envelope_bands + 1, len(frames)) and e.dtype == np.float32
    # The loudness row rises and falls with the pulse: high correlation with the per-frame
    # mean square of the source envelope, and much higher than with a shifted copy.
    ms = np.array(
        [np.mean(env[int((f / fps - 0.02) * rate) : int((f / fps + 0.02) * rate)] ** 2) for f in frames]
    )
    assert np.corrcoef(e[-1], np.log1p(ms / 1e-6))[0, 1] > 0.95
    assert 0.0 <= float(e.min()) and float(e.max()) <= 1.0
    # Silence is exactly zero; a frame's column does not depend on the window it is in.
    assert not envelope_frames(np.zeros(rate, np.float32), rate, frames, fps, TINY).any()
    np.testing.assert_allclose(envelope_frames(audio, rate, [9, 12], fps, TINY), e[:, [4, 7]], atol=1e-6)


def test_envelope_bands_separate_pitches_and_ignore_the_input_rate() -> None:
    low = envelope_frames(_tone(300.0, 44100, 1.0), 44100, [10], 25.0, TINY)[:, 0]
    high = envelope_frames(_tone(4000.0, 44100, 1.0), 44100, [10], 25.0, TINY)[:, 0]
    assert np.argmax(low[:-1]) < np.argmax(high[:-1])
    assert low[-1] == pytest.approx(high[-1], abs=0.02)  # same loudness, different bands
    same = envelope_frames(_tone(300.0, 16000, 1.0), 16000, [10], 25.0, TINY)[:, 0]
    np.testing.assert_allclose(same, low, atol=0.02)


def test_envelope_of_windows_reverses_with_them_and_follows_timestamps() -> None:
    rate = 22050
    audio, _ = _pulsed(rate, 2.0, hz=4.0)
    video = _video(40, audio, rate, np.arange(40) / 25.0)
    windows = plan(40, TINY, "hybrid").windows
    first = windows[0]
    got = envelope_input(video.track, first, TINY)
    assert got.shape == TINY.envelope_shape("hybrid")
    assert first.reversed
    np.testing.assert_allclose(got, envelope_frames(audio, rate, first.frames, 25.0, TINY), atol=1e-6)
    forward = envelope_frames(audio, rate, sorted(first.frames), 25.0, TINY)
    np.testing.assert_allclose(got, forward[:, ::-1], atol=1e-6)
    assert not TINY.uses_envelope("diffsal") and not PAPER.uses_envelope("hybrid")  # no AV sync there
    # Variable frame rate: the timestamps, not index / fps, say where each frame's audio is.
    stamps = np.arange(40) / 25.0 * 1.5
    vfr = _video(40, audio, rate, stamps)
    got = envelope_input(vfr.track, [10], TINY)
    np.testing.assert_allclose(got, envelope_frames(audio, rate, [15], 25.0, TINY), atol=1e-5)
