"""Decoding real files written here with PyAV, across codecs, containers, backends and damage."""

from __future__ import annotations

import tracemalloc
import warnings
from pathlib import Path

import av
import numpy as np
import pytest

from avsal_deploy.config import load_config
from avsal_deploy.data.dali import dali_available
from avsal_deploy.data.decode import (
    MediaWarning,
    VideoData,
    iter_frames,
    probe,
    read_audio,
    read_video,
)
from avsal_deploy.data.preprocess import (
    clip_tensor,
    gather_clip,
    letterbox_box,
    postprocess_map,
    postprocess_maps,
    preprocess_frames,
)
from avsal_deploy.errors import BackendUnavailableError, ConfigError, MediaError

needs_dali = pytest.mark.skipif(not dali_available(), reason="nvidia-dali is not installed")

from media_utils import FPS, H, N, W, write_video, write_wav  # noqa: E402


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    files = {
        "h264_aac": write_video(d / "h264_aac.mp4", audio="aac", stereo=True),
        "vp9_opus": write_video(d / "vp9_opus.webm", "libvpx-vp9", audio="libopus", audio_rate=48000),
        "mjpeg_pcm": write_video(d / "mjpeg_pcm.mkv", "mjpeg", n=10, pix_fmt="yuvj420p", audio="pcm_s16le"),
        "silent": write_video(d / "silent.mp4", n=12),
        "one": write_video(d / "one.mp4", n=1, audio="aac"),
        "odd_vp9": write_video(d / "odd.webm", "libvpx-vp9", n=6, size=(61, 97)),
        "odd_h264": write_video(d / "odd.mp4", n=6, size=(61, 97), pix_fmt="yuv444p"),
        "fps60": write_video(d / "fps60.mp4", n=20, fps=60, audio="aac"),
        "vfr": write_video(d / "vfr.mkv", n=7, pts_ms=[0, 33, 50, 200, 210, 400, 1000]),
    }
    webm = files["vp9_opus"].read_bytes()
    (d / "truncated.webm").write_bytes(webm[: len(webm) * 2 // 3])
    files["truncated_webm"] = d / "truncated.webm"
    mp4 = files["h264_aac"].read_bytes()
    (d / "truncated.mp4").write_bytes(mp4[: len(mp4) // 2])
    files["truncated_mp4"] = d / "truncated.mp4"
    (d / "notes.mp4").write_text("this is a text file, not a video\n" * 20)
    files["text"] = d / "notes.mp4"
    (d / "empty.mp4").write_bytes(b"")
    files["empty"] = d / "empty.mp4"
    files["tone_wav"] = d / "tone.wav"
    write_wav(files["tone_wav"])
    return files


def _one_line_error(exc: pytest.ExceptionInfo[BaseException], path: Path) -> None:
    message = str(exc.value)
    assert str(path) in message and "\n" not in message


def _expected_red(video: VideoData) -> np.ndarray:
    return (8 * np.arange(video.n_frames)) % 256


# ----------------------------------------------------------------------------- good files
def test_h264_aac_mp4(media: dict[str, Path]) -> None:
    v = read_video(media["h264_aac"])
    assert v.backend == "pyav" and v.frames.dtype == np.uint8 and v.frames.shape == (N, H, W, 3)
    assert v.fps == pytest.approx(FPS)
    np.testing.assert_allclose(v.timestamps, np.arange(N) / FPS, atol=1e-3)
    np.testing.assert_allclose(v.frames[..., 0].mean(axis=(1, 2)), _expected_red(v), atol=6)
    assert v.has_audio and v.audio_rate == 44100 and v.audio.dtype == np.float32
    assert abs(v.audio.shape[0] / 44100 - N / FPS) < 0.1
    spectrum = np.abs(np.fft.rfft(v.audio[:32768]))
    assert np.argmax(spectrum) * 44100 / 32768 == pytest.approx(440, abs=3)
    # stereo (tone left, silence right) is averaged to mono: amplitude 0.5 -> 0.25
    assert np.percentile(np.abs(v.audio[4096:-4096]), 99.9) == pytest.approx(0.25, abs=0.03)


def test_vp9_opus_webm_and_resampling(media: dict[str, Path]) -> None:
    v = read_video(media["vp9_opus"], audio_rate=22050)
    assert v.frames.shape == (N, H, W, 3)
    assert v.backend == ("dali" if dali_available() else "pyav")
    np.testing.assert_allclose(v.frames[..., 0].mean(axis=(1, 2)), _expected_red(v), atol=6)
    assert v.audio_rate == 22050 and abs(v.audio.shape[0] / 22050 - 1.0) < 0.05
    spectrum = np.abs(np.fft.rfft(v.audio[:16384]))
    assert np.argmax(spectrum) * 22050 / 16384 == pytest.approx(440, abs=3)


@needs_dali
def test_dali_cpu_and_pyav_agree_on_vp9(media: dict[str, Path]) -> None:
    """Same FFmpeg VP9 decoder underneath; only the YUV->RGB step differs (chroma up-sampling
    and rounding): about 1.4 grey levels on average here, up to tens at sharp colour edges. We
    allow a mean of 3 (and 4 after both resize, with different filters) on 0..255."""
    dali = read_video(media["vp9_opus"], backend="dali")
    ref = read_video(media["vp9_opus"], backend="pyav")
    assert dali.backend == "dali" and ref.backend == "pyav"
    assert dali.frames.shape == ref.frames.shape
    np.testing.assert_allclose(dali.timestamps, ref.timestamps)
    np.testing.assert_array_equal(dali.audio, ref.audio)  # audio always comes from PyAV
    assert np.abs(dali.frames.astype(int) - ref.frames.astype(int)).mean() < 3.0
    small_dali = read_video(media["vp9_opus"], backend="dali", size=(32, 48))
    small_ref = read_video(media["vp9_opus"], backend="pyav", size=(32, 48))
    assert small_dali.frames.shape == small_ref.frames.shape == (N, 32, 48, 3)
    assert np.abs(small_dali.frames.astype(int) - small_ref.frames.astype(int)).mean() < 4.0


@needs_dali
def test_mjpeg_pcm_mkv_on_dali_cpu(media: dict[str, Path]) -> None:
    v = read_video(media["mjpeg_pcm"], backend="dali")
    ref = read_video(media["mjpeg_pcm"], backend="pyav")
    assert v.backend == "dali" and v.frames.shape == ref.frames.shape == (10, H, W, 3)
    assert np.abs(v.frames.astype(int) - ref.frames.astype(int)).mean() < 3.0
    assert v.has_audio and v.audio_rate == 44100


@needs_dali
def test_dali_gpu_paths_fail_clearly_without_gpu(media: dict[str, Path]) -> None:
    with pytest.raises(BackendUnavailableError, match="needs an NVIDIA GPU"):
        read_video(media["h264_aac"], backend="dali")  # h264: NVDEC only
    with pytest.raises(BackendUnavailableError, match="needs an NVIDIA GPU"):
        read_video(media["vp9_opus"], backend="dali-gpu")


def test_no_audio_track_gives_silence_and_a_warning(media: dict[str, Path]) -> None:
    with pytest.warns(MediaWarning, match="silent.mp4: no audio track"):
        v = read_video(media["silent"], audio_rate=22050)
    assert not v.has_audio and v.n_frames == 12 and v.audio_rate == 22050
    assert v.audio.shape[0] == round(12 / FPS * 22050) and not v.audio.any()


def test_one_frame_video(media: dict[str, Path]) -> None:
    v = read_video(media["one"])
    assert v.frames.shape == (1, H, W, 3) and v.timestamps.tolist() == [0.0] and v.fps > 0


@pytest.mark.parametrize("key", ["odd_vp9", "odd_h264"])
def test_odd_sizes(media: dict[str, Path], key: str) -> None:
    with pytest.warns(MediaWarning):  # no audio track
        v = read_video(media[key])
    assert v.frames.shape == (6, 61, 97, 3) and v.source_size == (61, 97)
    np.testing.assert_allclose(v.frames[..., 0].mean(axis=(1, 2)), _expected_red(v), atol=8)


def test_sixty_fps(media: dict[str, Path]) -> None:
    v = read_video(media["fps60"])
    assert v.fps == pytest.approx(60) and v.n_frames == 20
    np.testing.assert_allclose(np.diff(v.timestamps), 1 / 60, atol=1e-3)


def test_variable_frame_rate_timestamps_follow_pts(media: dict[str, Path]) -> None:
    with pytest.warns(MediaWarning):
        v = read_video(media["vfr"])
    np.testing.assert_allclose(v.timestamps, [0, 0.033, 0.05, 0.2, 0.21, 0.4, 1.0], atol=1e-6)


def test_audio_is_aligned_to_the_first_frame(tmp_path: Path) -> None:
    """Video starting 1/3 s after the audio: audio[0] must play at the first frame's time."""
    rate, path = 16000, tmp_path / "late_video.mkv"
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=30)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        sa = out.add_stream("pcm_s16le", rate=rate)
        sa.layout = "mono"
        for i in range(30):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            frame.pts = 10 + i  # first frame at 10/30 s
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        step = np.zeros(2 * rate, np.float32)
        step[rate // 2 :] = 0.5  # the sound starts at 0.5 s
        frame = av.AudioFrame.from_ndarray(step[None], format="flt", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        for packet in [*sa.encode(frame), *sa.encode()]:
            out.mux(packet)
    v = read_video(path)
    assert v.timestamps[0] == 0.0
    onset = np.argmax(v.audio > 0.25) / rate
    assert onset == pytest.approx(0.5 - 10 / 30, abs=1.5e-3)  # Matroska stores milliseconds


def test_max_frames_and_decode_time_resize(media: dict[str, Path]) -> None:
    v = read_video(media["h264_aac"], max_frames=5, max_side=48)
    assert v.frames.shape == (5, 32, 48, 3) and v.source_size == (H, W)
    assert v.audio.shape[0] == pytest.approx(5 / FPS * 44100, abs=2)
    exact = read_video(media["h264_aac"], size=(40, 40), max_frames=2)
    assert exact.frames.shape == (2, 40, 40, 3)
    with pytest.raises(ConfigError):
        read_video(media["h264_aac"], size=(40, 40), max_side=32)


def test_4k_is_downscaled_while_decoding(tmp_path: Path) -> None:
    """A 4K RGB frame is 24.9 MB; with max_side the decoder hands back small frames only."""
    path = tmp_path / "uhd.mp4"
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=30, options={"preset": "ultrafast"})
        vs.width, vs.height, vs.pix_fmt = 3840, 2160, "yuv420p"
        img = np.zeros((2160, 3840, 3), np.uint8)
        img[..., 1] = np.linspace(0, 255, 3840, dtype=np.uint8)[None]
        for _ in range(3):
            for packet in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
    tracemalloc.start()
    try:
        with pytest.warns(MediaWarning):  # no audio track
            v = read_video(path, max_side=384)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert v.frames.shape == (3, 216, 384, 3) and v.source_size == (2160, 3840)
    assert peak < 8e6  # numpy allocations stay far below one full-size frame
    np.testing.assert_allclose(v.frames[0, 100, ::64, 1], np.linspace(0, 255, 384)[::64], atol=6)


def test_probe_reads_headers(media: dict[str, Path]) -> None:
    info = probe(media["h264_aac"])
    assert (info.n_frames, info.fps, info.width, info.height, info.has_audio) == (N, 30.0, W, H, True)
    assert info.duration == pytest.approx(1.0, abs=0.05)
    assert probe(media["silent"]).has_audio is False


def test_iter_frames_streams_the_same_frames(media: dict[str, Path]) -> None:
    v = read_video(media["h264_aac"], backend="pyav")
    pairs = list(iter_frames(media["h264_aac"], backend="pyav"))
    np.testing.assert_array_equal(np.stack([f for f, _ in pairs]), v.frames)
    np.testing.assert_allclose([t for _, t in pairs], v.timestamps)
    first_three = list(iter_frames(media["vp9_opus"], max_frames=3))
    assert len(first_three) == 3 and first_three[0][1] == 0.0


# ----------------------------------------------------------------------------- damaged files
@pytest.mark.parametrize("backend", ["pyav", "auto"])
def test_truncated_webm_keeps_the_decodable_frames(media: dict[str, Path], backend: str) -> None:
    with pytest.warns(MediaWarning, match="truncated.webm: corrupt or truncated"):
        v = read_video(media["truncated_webm"], backend=backend)
    assert 0 < v.n_frames < N
    np.testing.assert_allclose(v.frames[..., 0].mean(axis=(1, 2)), _expected_red(v), atol=6)


def test_truncated_mp4_without_index_is_a_clear_error(media: dict[str, Path]) -> None:
    with pytest.raises(MediaError) as exc:
        read_video(media["truncated_mp4"])
    _one_line_error(exc, media["truncated_mp4"])


@pytest.mark.parametrize("key", ["text", "empty"])
def test_not_a_media_file(media: dict[str, Path], key: str) -> None:
    with pytest.raises(MediaError, match="not a readable media file") as exc:
        read_video(media[key])
    _one_line_error(exc, media[key])


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="no such file") as exc:
        read_video(tmp_path / "nope.mp4")
    _one_line_error(exc, tmp_path / "nope.mp4")
    with pytest.raises(MediaError, match="is a directory"):
        read_video(tmp_path)


def test_audio_only_file_is_not_a_video(media: dict[str, Path]) -> None:
    with pytest.raises(MediaError, match=r"not a video \(no video stream\)") as exc:
        read_video(media["tone_wav"])
    _one_line_error(exc, media["tone_wav"])
    with pytest.raises(MediaError, match="no video stream"):
        probe(media["tone_wav"])


def test_unknown_backend(media: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="unknown video backend"):
        read_video(media["h264_aac"], backend="opencv")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- audio files
@pytest.mark.parametrize(
    ("name", "codec", "rate"),
    [("t.wav", "pcm_s16le", 16000), ("t.flac", "flac", 16000), ("t.ogg", "libopus", 48000)],
)
def test_read_audio_backends_agree(tmp_path: Path, name: str, codec: str, rate: int) -> None:
    tone = write_wav(tmp_path / name, codec, rate)
    ref, ref_rate = read_audio(tmp_path / name, backend="pyav")
    assert ref_rate == rate
    if codec != "libopus":  # lossless: the samples themselves
        np.testing.assert_allclose(ref, tone, atol=1e-4)
    if dali_available():
        got, got_rate = read_audio(tmp_path / name, backend="dali")
        assert got_rate == rate and got.shape == ref.shape
        np.testing.assert_allclose(got, ref, atol=1e-4)
    resampled, new_rate = read_audio(tmp_path / name, rate=22050)
    assert new_rate == 22050 and abs(resampled.shape[0] - ref.shape[0] * 22050 / rate) <= 2


def test_read_audio_errors(media: dict[str, Path]) -> None:
    with pytest.raises(MediaError, match="no decodable audio stream"):
        read_audio(media["silent"], backend="pyav")
    with pytest.raises(MediaError, match="not a readable media file"):
        read_audio(media["text"])


# ----------------------------------------------------------------------------- preprocessing
def test_clip_tensor_layout_and_normalisation() -> None:
    c = load_config("tiny")
    frames = np.stack([np.full((50, 70, 3), v, np.uint8) for v in (0, 128, 255)])
    clip = clip_tensor(frames, c)
    assert clip.shape == (3, 3, c.video.height, c.video.width) and clip.dtype == np.float32
    for k, value in enumerate((0, 128, 255)):
        expected = (value / 255 - np.asarray(c.video.mean)) / np.asarray(c.video.std)
        np.testing.assert_allclose(clip[:, k].mean(axis=(1, 2)), expected, atol=1e-5)
    pre = preprocess_frames(frames, c)
    np.testing.assert_array_equal(gather_clip(pre, [2, 0]), clip[:, [2, 0]])


def test_letterbox_pads_with_the_mean_and_maps_crop_back() -> None:
    c = load_config("tiny")  # 64 x 96 model grid
    frames = np.full((1, 40, 40, 3), 255, np.uint8)  # square source: bars left and right
    pre = preprocess_frames(frames, c, letterbox=True)[0]
    top, left, h, w = letterbox_box((40, 40), (64, 96))
    assert (top, left, h, w) == (0, 16, 64, 64)
    assert not pre[:, :, :left].any() and not pre[:, :, left + w :].any()
    assert (pre[:, :, left : left + w] > 0).all()
    saliency = np.zeros((64, 96), np.float32)
    saliency[:, left : left + w // 2] = 1.0  # left half of the content
    back = postprocess_map(saliency, (40, 40), letterbox_from=(40, 40))
    assert back.shape == (40, 40) and back[:, :15].min() > 0.9 and back[:, 25:].max() < 0.1


def test_postprocess_map_range_and_constant_guard() -> None:
    m = np.linspace(-0.5, 2.0, 64 * 96, dtype=np.float32).reshape(64, 96)
    out = postprocess_map(m, (120, 200))
    assert out.shape == (120, 200) and out.dtype == np.float32
    assert out.min() == 0.0 and out.max() == pytest.approx(1.0)
    flat = postprocess_maps(np.full((2, 1, 64, 96), 0.3, np.float32), (10, 20))
    assert flat.shape == (2, 10, 20) and not flat.any() and np.isfinite(flat).all()


def test_library_does_not_warn_on_clean_files(media: dict[str, Path]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_video(media["h264_aac"], max_frames=2)


def test_capture_source_reads_a_live_input_with_its_audio() -> None:
    from avsal_deploy.data.source import CaptureSource, is_capture_spec, split_capture_spec

    spec = "lavfi:testsrc=size=96x64:rate=25:duration=1[out0];sine=frequency=440:sample_rate=16000:duration=1[out1]"
    assert is_capture_spec(spec) and split_capture_spec(spec)[0] == "lavfi"
    assert split_capture_spec("rtsp://cam/stream") == (None, "rtsp://cam/stream")
    source = CaptureSource(spec)
    assert (source.fps, source.source_size, source.audio_rate, source.has_audio) == (
        25.0,
        (64, 96),
        16000,
        True,
    )
    items = list(source.media())
    assert len(items) == 25 and items[1][1] == pytest.approx(0.04)
    audio = np.concatenate([c for _, _, c in items] + [source.rest_of_audio()])
    assert audio.shape == (16000,) and np.abs(audio).max() > 0.05  # the whole sine, mono float32
    source.close()
    stopped = CaptureSource(spec, max_seconds=0.2)
    assert len(list(stopped.media())) == 5
    stopped.close()


def test_capture_source_names_the_input_it_cannot_open() -> None:
    from avsal_deploy.data.source import CaptureSource

    with pytest.raises(MediaError, match="lavfi:nosuchfilter.*cannot open"):
        CaptureSource("lavfi:nosuchfilter")
