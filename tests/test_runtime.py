"""The light runtime: one frame flow, compact maps, torch-free imports, a plain install."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from media_utils import write_video

import avsal_deploy
from avsal_deploy import engine as engines
from avsal_deploy.cli import RESEARCH_HINT
from avsal_deploy.data.audio import audio_input, envelope_input
from avsal_deploy.data.decode import iter_frames, read_video
from avsal_deploy.data.preprocess import gather_clip, postprocess_maps, preprocess_frames
from avsal_deploy.errors import AvsalError, MediaError
from avsal_deploy.outputs import MapWriter, iter_maps, load_maps, read_map_info
from avsal_deploy.pipeline import PredictOptions, Predictor
from avsal_deploy.windows import plan

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 frames, 120x160 at 25 fps, AAC at 44.1 kHz (resampled by both encoders' features)."""
    return write_video(tmp_path_factory.mktemp("rt") / "clip.mp4", n=30, fps=25, size=(120, 160), audio="aac")


@pytest.fixture(scope="module")
def default_engine() -> engines.Engine:
    return engines.open()  # the shipped export: no torch, no export step


# ----------------------------------------------------------------------------- one frame flow
@pytest.mark.parametrize(("stride", "batch"), [(1, 1), (3, 2)])
def test_file_flow_equals_a_live_stream_and_the_window_plan(
    clip: Path, default_engine, stride: int, batch: int
) -> None:
    """The file flow, a live push of the same frames and audio, and the offline window plan give
    bit-identical maps for every frame (the plan's windows run one by one: at batch 1)."""
    predictor = Predictor(default_engine, PredictOptions(stride=stride, batch_size=batch))
    offline = predictor.predict(clip)

    video = read_video(clip)  # whole-file decode: frames and the aligned soundtrack
    flow = predictor.flow(video.fps, video.audio_rate)
    live = []
    for i, (frame, ts) in enumerate(iter_frames(clip)):
        live += flow.push(frame, video.audio if i == 0 else None, ts)  # the soundtrack is ahead
    live += flow.flush()
    assert [m.index for m in live] == list(range(video.n_frames))
    for m in live:
        assert np.array_equal(m.saliency, offline.frame_maps[m.index]), m.index

    # The same maps, window by window, from the planner (no windower, no flow).
    p = plan(video.n_frames, default_engine.config, default_engine.variant, stride=stride)
    pre = preprocess_frames(video.frames, default_engine.config)
    noise = default_engine.make_noise(1, 0)
    for w in p.windows:
        env = envelope_input(video.track, w, default_engine.config)[None]
        aud = audio_input(video.track, w, default_engine.config, default_engine.variant)[None]
        m = default_engine.predict_window(
            gather_clip(pre, w)[None], aud, predictor.steps, noise, envelope=env
        )
        expected = postprocess_maps(m[:, 0], m.shape[-2:])[0]
        if batch == 1:
            assert np.array_equal(expected, offline.frame_maps[w.target]), w.target
        else:  # ONNX Runtime's batch-2 kernels round differently
            assert np.abs(expected - offline.frame_maps[w.target]).max() <= 1e-4, w.target
    assert offline.sources.tolist() == [int(p.targets[i]) for i in p.assignment]


# ----------------------------------------------------------------------------- map format
def test_map_format_round_trip_and_sizes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((5, 24, 32)).astype(np.float32)
    with MapWriter(tmp_path / "full.npz", (24, 32), 25.0) as w:
        for m in maps:
            w.write(m)
    got = load_maps(tmp_path / "full.npz")
    assert got.dtype == np.float32 and got.shape == (5, 24, 32)
    assert np.abs(got - maps).max() <= 0.5 / 255 + 1e-7  # uint8 quantisation
    info = read_map_info(tmp_path / "full.npz")
    assert info["n_frames"] == 5 and info["dtype"] == "uint8" and info["fps"] == 25.0
    assert info["source_size"] == (24, 32) and info["format_version"] == 2  # Python scalars
    assert type(info["fps"]) is float and type(info["format_version"]) is int
    assert np.allclose(info["timestamps"], np.arange(5) / 25.0)
    with zipfile.ZipFile(tmp_path / "full.npz") as z:
        assert z.testzip() is None
    # Stored at the model's size: load_maps gives the video's size back.
    with MapWriter(tmp_path / "small.npz", (48, 64), 25.0, map_size=(24, 32)) as w:
        for m in maps:
            w.write(m)
    assert load_maps(tmp_path / "small.npz").shape == (5, 48, 64)
    assert next(iter_maps(tmp_path / "small.npz", size=(24, 32))).shape == (24, 32)
    # Plain float arrays (ground truth) read as they are.
    np.savez(tmp_path / "gt.npz", maps=maps)
    assert np.array_equal(load_maps(tmp_path / "gt.npz"), maps)
    # A map of the wrong size is refused; a failed writer leaves no file.
    with pytest.raises(ValueError, match="expected"), MapWriter(tmp_path / "bad.npz", (24, 32), 25.0) as w:
        w.write(np.zeros((3, 3), np.float32))
    assert not (tmp_path / "bad.npz").exists()
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(MediaError, match="junk.npz"):
        load_maps(tmp_path / "junk.npz")


def test_predict_writes_compact_maps_and_the_summary(tmp_path: Path, clip: Path, default_engine) -> None:
    from avsal_deploy.pipeline import predict_to_directory

    frames = []
    summary = predict_to_directory(
        clip, tmp_path / "o", Predictor(default_engine), progress=lambda done, total: frames.append(done)
    )
    assert frames == list(range(1, 31))  # the bar counts frames written, one by one
    maps = load_maps(tmp_path / "o" / "maps.npz")
    assert maps.shape == (30, 120, 160) and 0.0 <= maps.min() and maps.max() <= 1.0
    assert summary["peak_rss_mb"] > 0 and set(summary["timings"]) == {
        "decode",
        "preprocess",
        "inference",
        "write",
    }
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["frames"] == 30
    assert summary["map_size"] == [default_engine.config.video.height, default_engine.config.video.width]
    source = predict_to_directory(
        clip, tmp_path / "m", Predictor(default_engine), overlay=False, pngs=False, map_size="source"
    )
    assert source["map_size"] == [120, 160]
    full = load_maps(tmp_path / "m" / "maps.npz")
    assert full.shape == maps.shape and np.abs(full - maps).mean() < 0.02
    with pytest.raises(AvsalError, match="map_size"):
        predict_to_directory(clip, tmp_path / "x", Predictor(default_engine), map_size="huge")


# ----------------------------------------------------------------------------- torch-free runtime
def test_runtime_imports_no_torch(clip: Path, tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "import avsal_deploy.pipeline, avsal_deploy.engine, avsal_deploy.serving.client\n"
        "import avsal_deploy.serving.models.component, avsal_deploy.serving.models.pipeline\n"
        "import avsal_deploy.serving.models.stream, avsal_deploy.serving.repository, avsal_deploy.cli\n"
        "from avsal_deploy.engine import open\n"
        "from avsal_deploy.pipeline import Predictor, predict_to_directory\n"
        f"predict_to_directory({str(clip)!r}, {str(tmp_path / 'o')!r}, Predictor(open()), overlay=True)\n"
        "from avsal_deploy.engine import DEFAULT_EXPORT\n"
        f"avsal_deploy.serving.repository.build_repository(DEFAULT_EXPORT, {str(tmp_path / 'repo')!r})\n"
        "heavy = [m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'avsal_deploy.models',"
        " 'avsal_deploy.training', 'avsal_deploy.export'))]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    assert (tmp_path / "o" / "overlay.mp4").exists()


def test_shipped_export_matches_the_shipped_checkpoint(default_engine) -> None:
    """The ONNX components in the package are the shipped checkpoint's (same hash, same maps)."""
    from avsal_deploy.specs import sample_window, sha256_file

    manifest = json.loads((engines.DEFAULT_EXPORT / "manifest.json").read_text())
    assert manifest["checkpoint"]["sha256"] == sha256_file(engines.DEFAULT_CHECKPOINT)
    ref = engines.open(None, "torch")
    feeds = sample_window(default_engine.specs, batch=2, seed=3)
    a = default_engine.predict_window(feeds["frames"], feeds["audio"], envelope=feeds.get("envelope"))
    b = ref.predict_window(feeds["frames"], feeds["audio"], envelope=feeds.get("envelope"))
    assert np.abs(a - b).max() <= 1e-4


def test_sessions_run_without_the_memory_pattern_and_the_maps_do_not_change(default_engine) -> None:
    """ONNX Runtime's memory pattern is off in every session (it keeps a block per input shape in an
    arena that never shrinks); turning it on changes no map, at any batch."""
    from avsal_deploy.specs import sample_window

    assert not any(s.get_session_options().enable_mem_pattern for s in default_engine.sessions.values())
    with engines.open(None, "onnxruntime", memory_pattern=True) as patterned:
        assert all(s.get_session_options().enable_mem_pattern for s in patterned.sessions.values())
        for batch in (3, 1):
            w = sample_window(default_engine.specs, batch=batch, seed=batch)
            maps = [
                e.predict_window(w["frames"], w["audio"], 2, seed=1, envelope=w.get("envelope"))
                for e in (default_engine, patterned)
            ]
            assert np.array_equal(*maps)


# ----------------------------------------------------------------------------- memory and install
RSS_CHILD = r"""
import json, sys
from avsal_deploy.engine import open
from avsal_deploy.pipeline import Predictor, predict_to_directory
from avsal_deploy.pipeline import PredictOptions
s = predict_to_directory(sys.argv[1], sys.argv[2], Predictor(open(), PredictOptions(stride=2)), overlay=True)
print(json.dumps({"frames": s["frames"], "rss": s["peak_rss_mb"]}))
"""


@pytest.mark.slow
def test_memory_does_not_grow_with_the_video(tmp_path: Path) -> None:
    """10 and 30 seconds of 720p (5 fps, with sound) predicted in fresh processes: same peak RSS.
    Holding the video's frames would cost 2.7 MB a frame (+270 MB between the two)."""
    x264 = {"preset": "ultrafast"}
    runs = {}
    for seconds in (10, 30):
        n = 5 * seconds
        video = write_video(
            tmp_path / f"{seconds}.mp4", n=n, fps=5, size=(720, 1280), audio="aac", options=x264
        )
        out = subprocess.run(
            [sys.executable, "-c", RSS_CHILD, str(video), str(tmp_path / f"o{seconds}")],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        )
        runs[seconds] = json.loads(out.stdout.strip().splitlines()[-1])
        assert runs[seconds]["frames"] == n
    print(f"peak RSS: 10 s {runs[10]['rss']:.0f} MB, 30 s {runs[30]['rss']:.0f} MB")
    assert runs[30]["rss"] < runs[10]["rss"] + 100


@pytest.mark.slow
def test_plain_install_predicts_and_builds_a_repository(tmp_path: Path) -> None:
    """A non-editable install of the base runtime in a fresh venv (no torch) runs `avsal predict`
    with the shipped engine and `avsal triton-repo` with the packaged templates."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    # the installed copy alone: no source tree on the path (PYTHONPATH would put one first)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(ROOT)], check=True, env=env, cwd=tmp_path)
    avsal = venv / "bin" / "avsal"
    no_torch = subprocess.run([str(py), "-c", "import torch"], capture_output=True, cwd=tmp_path, env=env)
    assert no_torch.returncode != 0  # the base install carries no torch
    out = tmp_path / "demo"
    subprocess.run(
        [str(avsal), "-q", "predict", "--sample", "--out", str(out)], check=True, cwd=tmp_path, env=env
    )
    assert load_maps(out / "maps.npz").shape[0] == 75
    version = subprocess.run([str(avsal), "--version"], capture_output=True, text=True, check=True, env=env)
    assert version.stdout.strip() == f"avsal {avsal_deploy.__version__}"
    # the wheel carries no research code: `avsal experiment` says where it runs, in one line
    research = subprocess.run(
        [str(avsal), "experiment", "audio-relevance", "--data", "d", "--out", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert research.returncode == 2 and research.stderr.strip().splitlines() == [
        f"avsal: error: {RESEARCH_HINT}"
    ]
    found = subprocess.run(
        [str(py), "-c", "import importlib.util as u; print(u.find_spec('avsal_deploy.research'))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env=env,
    )
    assert found.stdout.strip() == "None"
    export = subprocess.run(
        [str(py), "-c", "from avsal_deploy.engine import DEFAULT_EXPORT; print(DEFAULT_EXPORT)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env=env,
    ).stdout.strip()
    assert str(ROOT) not in export  # the installed copy, not the source tree
    repo = tmp_path / "repo"
    subprocess.run(
        [str(avsal), "triton-repo", "--export", export, "--out", str(repo)], check=True, cwd=tmp_path, env=env
    )
    assert (repo / "avsal_pipeline" / "1" / "model.py").exists()
    assert (repo / "avsal_unet_step" / "config.pbtxt").exists()
