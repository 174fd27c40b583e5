"""A converted official checkpoint end to end: ViNet-S through every command a user runs.

The checkpoint is the session's converted ViNet-S (``conftest.vinet_s_checkpoint``: the official
layout with random weights from ``tests/golden/vinet_s.npz``'s layout and seed, saved as the
official script saves it, ``avsal convert --from vinet-s``) and its ``avsal export``
(``conftest.vinet_s_export``, shared with ``tests/test_official_vinet_s.py``). On it:
``avsal predict`` on a short synthetic video with sound, ``avsal score`` on two such videos,
``avsal roi`` on one, and ``avsal triton-repo`` + the real Triton server + ``avsal_stream``
(:func:`avsal_deploy.serving.client.stream`), whose maps equal offline prediction within 1e-4.

ViNet-S runs at 32 x 224 x 384 only (139 GFLOP a window): the videos are 5 frames predicted at
stride 4, two start-up windows each (frames 0 and 4: reversed, reflected clips).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from media_utils import write_video

from avsal_deploy.cli import main
from avsal_deploy.engine import open as open_engine
from avsal_deploy.outputs import load_maps

pytestmark = pytest.mark.slow
STRIDE = 4
FRAMES = 5
TOL = 1e-4
#: maps.npz stores 8-bit maps: within half a level of the float maps
STORED_TOL = 0.5 / 255 + 1e-6


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("zoo-videos")
    return [
        write_video(d / "a.mp4", n=FRAMES, fps=25, size=(72, 128), audio="aac"),
        write_video(d / "b.mp4", n=FRAMES, fps=20, size=(64, 96), audio="aac", audio_rate=22050),
    ]


@pytest.fixture(scope="module")
def ort(vinet_s_export: Path):
    with open_engine(vinet_s_export, "onnxruntime") as engine:
        yield engine


@pytest.fixture(scope="module")
def offline(ort, videos: list[Path]) -> np.ndarray:
    """The float maps of the first video (model size), predicted in process."""
    from avsal_deploy.pipeline import PredictOptions, Predictor

    prediction = Predictor(ort, PredictOptions(stride=STRIDE)).predict(videos[0])
    assert prediction.targets == [0, 4] and prediction.frame_maps.shape == (FRAMES, 224, 384)
    assert all(m.std() > 0.05 for m in prediction.frame_maps)  # maps that carry signal
    return prediction.frame_maps


@pytest.fixture(scope="module")
def predicted(vinet_s_export: Path, videos: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zoo-predict")
    args = ["-q", "predict", str(videos[0]), "--export", str(vinet_s_export), "--stride", str(STRIDE)]
    assert main([*args, "--map-size", "model", "--overlay", "--out", str(out)]) == 0
    return out


def test_predict_writes_the_maps_of_the_converted_model(predicted: Path, offline: np.ndarray) -> None:
    summary = json.loads((predicted / "summary.json").read_text())
    assert summary["frames"] == FRAMES and summary["steps"] == 0
    maps = load_maps(predicted / "maps.npz", size=(224, 384))
    assert np.abs(maps - offline).max() <= STORED_TOL
    assert (predicted / "overlay.mp4").stat().st_size > 0


def test_score_two_videos(vinet_s_export: Path, videos: list[Path], offline, tmp_path: Path) -> None:
    out = tmp_path / "scores"
    args = ["score", *map(str, videos), "--export", str(vinet_s_export), "--stride", str(STRIDE)]
    assert main([*args, "--jobs", "1", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["done"] == 2 and summary["failed"] == 0
    rows = {Path(v["path"]).name: v for v in summary["videos"]}
    assert rows["a.mp4"]["frames"] == rows["b.mp4"]["frames"] == FRAMES
    maps = load_maps(out / rows["a.mp4"]["rel"] / "maps.npz", size=(224, 384))
    assert np.abs(maps - offline).max() <= STORED_TOL  # the same maps as predict


def test_roi_codes_with_the_converted_models_maps(
    predicted: Path, videos: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "roi"
    maps = str(predicted / "maps.npz")
    args = ["roi", str(videos[0]), "--maps", maps, "--crf", "30", "--preset", "ultrafast", "--json"]
    assert main([*args, "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["roi"]["bitrate_kbps"] > 0 and report["uniform"]["bitrate_kbps"] > 0
    assert (out / "roi.mp4").stat().st_size > 0


@pytest.mark.triton
def test_triton_stream_equals_offline_prediction(
    vinet_s_export: Path, videos: list[Path], offline: np.ndarray, tmp_path: Path
) -> None:
    from avsal_deploy.data.source import MediaSource
    from avsal_deploy.serving.client import stream
    from avsal_deploy.serving.server import TritonServer

    repo = tmp_path / "repo"
    assert main(["triton-repo", "--export", str(vinet_s_export), "--out", str(repo)]) == 0
    source = MediaSource(videos[0])
    try:
        items = list(source.media())
    finally:
        source.close()
    frames = [(f, ts) for f, ts, _ in items]
    chunks = [c for _, _, c in items]
    with TritonServer(repo, models=["avsal_stream"]) as server:
        got = dict(
            stream(
                server.grpc_url, frames, chunks, fps=source.fps, audio_rate=source.audio_rate, stride=STRIDE
            )
        )
    assert sorted(got) == list(range(FRAMES))
    assert max(float(np.abs(got[i] - offline[i]).max()) for i in got) <= TOL
