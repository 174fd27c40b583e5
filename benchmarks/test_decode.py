"""Decode + preprocess throughput against model throughput: can the CPU feed the engine?

A 10 s 720p clip (VP9 in WebM, which DALI's CPU backend decodes, and H.264 in MP4, which only PyAV
decodes on CPU) is decoded frame by frame and each frame resized and normalised to the model's
input (the frame flow's own preprocessing). frames/s in ``extra_info``; the report sets them beside
the engines' windows/s. DALI's GPU decoder (NVDEC) needs a GPU and is skipped here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from avsal_deploy.config import load_config
from avsal_deploy.data.dali import dali_available, gpu_available
from avsal_deploy.data.decode import read_video
from avsal_deploy.data.preprocess import preprocess_frames

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from media_utils import write_video  # noqa: E402

FRAMES = 100
CODECS = {
    "h264": ("libx264", "mp4", {"preset": "ultrafast"}),
    "vp9": ("libvpx-vp9", "webm", {"deadline": "realtime", "cpu-used": "8"}),
}
CASES = [("h264", "pyav"), ("vp9", "pyav"), ("vp9", "dali"), ("h264", "dali-gpu")]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("decode")
    return {
        name: write_video(root / f"clip.{ext}", codec=codec, n=FRAMES, fps=25, size=(720, 1280), options=opts)
        for name, (codec, ext, opts) in CODECS.items()
    }


@pytest.mark.parametrize(("codec", "decoder"), CASES)
@pytest.mark.parametrize("profile", ["small"])
def test_decode_preprocess_fps(benchmark, clips, profile, codec, decoder) -> None:
    if decoder.startswith("dali") and not dali_available():
        pytest.skip("DALI is not installed (the dali extra)")
    if decoder == "dali-gpu" and not gpu_available():
        pytest.skip("DALI's mixed (NVDEC) decoder needs an NVIDIA GPU")
    config = load_config(profile)

    def run() -> int:
        video = read_video(clips[codec], backend=decoder)
        return preprocess_frames(video.frames, config).shape[0]

    n = benchmark.pedantic(run, rounds=2, warmup_rounds=1, iterations=1)
    benchmark.group = f"decode + preprocess, 720p -> {profile} input"
    benchmark.extra_info.update(
        metric="decode",
        profile=profile,
        codec=codec,
        decoder=decoder,
        frames=n,
        frames_per_second=round(n / benchmark.stats.stats.median, 1),
    )
    assert n == FRAMES
