"""`avsal predict`: outputs, engines, stride, and every kind of bad input."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from media_utils import write_video

from avsal_deploy.cli import main
from avsal_deploy.config import load_config
from avsal_deploy.engine import open as open_engine
from avsal_deploy.engine.eager import TorchEngine
from avsal_deploy.models.build import build_model, load_pretrained
from avsal_deploy.models.weights import save_checkpoint
from avsal_deploy.pipeline import PredictOptions, Predictor


def predict(
    tmp_path: Path, video: Path, ckpt: Path, *extra: str, out: Path | None = None
) -> tuple[int, Path]:
    out = out or tmp_path / "out"
    code = main(["-q", "predict", str(video), "--out", str(out), "--checkpoint", str(ckpt), *extra])
    return code, out


def load_maps(out: Path) -> np.ndarray:
    from avsal_deploy.outputs import load_maps as load

    return load(out / "maps.npz")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """12 frames, 80x120, 25 fps, with an AAC tone."""
    return write_video(
        tmp_path_factory.mktemp("clip") / "clip.mp4", n=12, fps=25, size=(80, 120), audio="aac"
    )


def test_outputs_follow_the_contract(tmp_path, clip, tiny_checkpoint, tiny_export) -> None:
    code, out = predict(tmp_path, clip, tiny_checkpoint, "--overlay", "--png")
    assert code == 0
    maps = load_maps(out)
    assert maps.dtype == np.float32 and maps.shape == (12, 80, 120)
    assert maps.min() >= 0.0 and maps.max() <= 1.0 and maps.max() > 0.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 12 and summary["fps"] == pytest.approx(25.0)
    assert (
        summary["engine"] == "onnxruntime"
        and summary["steps"] == load_config("tiny").diffusion.sampling_steps
    )
    assert summary["seconds"] > 0 and summary["has_audio"] is True
    assert len(list((out / "maps").glob("*.png"))) == 12
    assert (out / "contact_sheet.png").stat().st_size > 0
    with av.open(str(out / "overlay.mp4")) as c:
        assert c.streams.video[0].codec_context.name == "h264" and len(c.streams.audio) == 1
        frames = [f for f in c.decode(video=0)]
    assert len(frames) == 12 and (frames[0].height, frames[0].width) == (80, 120)
    assert not list(out.glob(".avsal-*")), "temporary files left behind"


def test_torch_and_onnxruntime_give_the_same_maps(tmp_path, clip, tiny_checkpoint, tiny_export) -> None:
    a = load_maps(predict(tmp_path, clip, tiny_checkpoint, out=tmp_path / "a")[1])
    b = load_maps(predict(tmp_path, clip, tiny_checkpoint, "--engine", "torch", out=tmp_path / "b")[1])
    # maps.npz stores uint8: engines within 1e-4 round to the same level or a neighbour.
    assert np.abs(a - b).max() <= 1 / 255 + 1e-6 and np.abs(a - b).mean() < 1e-3


def test_batching_and_one_shot_steps(clip, tiny_checkpoint, tiny_export) -> None:
    engine = open_engine(tiny_checkpoint, "onnxruntime")
    m1 = Predictor(engine, PredictOptions(batch_size=1)).predict(clip).maps()
    m3 = Predictor(engine, PredictOptions(batch_size=3)).predict(clip).maps()
    assert np.abs(m1 - m3).max() <= 1e-5  # batching does not change the maps
    shot = Predictor(engine, PredictOptions(steps=0)).predict(clip)
    ref = TorchEngine(load_pretrained(tiny_checkpoint))
    assert shot.steps == 0
    assert np.abs(shot.maps() - Predictor(ref, PredictOptions(steps=0)).predict(clip).maps()).max() <= 1e-4


def test_stride_reuses_the_nearest_computed_window(clip, tiny_checkpoint, tiny_export) -> None:
    engine = open_engine(tiny_checkpoint, "onnxruntime")
    pred = Predictor(engine, PredictOptions(stride=4)).predict(clip)
    assert pred.targets == [0, 4, 8, 11]
    assert pred.sources.tolist() == [0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 11, 11]
    maps = pred.maps()
    assert np.array_equal(maps[1], maps[0]) and np.array_equal(maps[3], maps[4])
    full = Predictor(engine).predict(clip).maps()
    assert np.abs(maps[8] - full[8]).max() <= 1e-5


def test_sample_demo_runs(tmp_path, tiny_checkpoint, tiny_export) -> None:
    out = tmp_path / "demo"
    assert main(["-q", "predict", "--sample", "--out", str(out), "--checkpoint", str(tiny_checkpoint)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 75 and summary["has_audio"]
    assert load_maps(out).shape == (75, 192, 320)


# ------------------------------------------------------------------------------ odd but valid input
@pytest.mark.parametrize(
    ("name", "kwargs", "shape", "fps"),
    [
        ("one_frame", {"n": 1, "size": (64, 96)}, (1, 64, 96), 30),
        ("sixty_fps", {"n": 20, "fps": 60, "size": (64, 96), "audio": "aac"}, (20, 64, 96), 60),
        ("odd_size", {"n": 5, "size": (61, 97), "codec": "libx264", "pix_fmt": "yuv444p"}, (5, 61, 97), 30),
        ("vfr", {"n": 6, "size": (64, 96), "pts_ms": [0, 30, 90, 100, 170, 260]}, (6, 64, 96), None),
        ("uhd_4k", {"n": 2, "size": (2160, 3840), "codec": "libx264"}, (2, 2160, 3840), 30),
    ],
)
def test_unusual_videos_predict(tmp_path, tiny_checkpoint, tiny_export, name, kwargs, shape, fps) -> None:
    video = write_video(tmp_path / f"{name}.mp4", **kwargs)
    code, out = predict(
        tmp_path, video, tiny_checkpoint, "--overlay", *([] if name == "uhd_4k" else ["--png"])
    )
    assert code == 0
    maps = load_maps(out)
    assert maps.shape == shape and 0.0 <= maps.min() and maps.max() <= 1.0
    summary = json.loads((out / "summary.json").read_text())
    if fps is not None:
        assert summary["fps"] == pytest.approx(fps, rel=1e-3)
    with av.open(str(out / "overlay.mp4")) as c:
        vs = c.streams.video[0]
        assert max(vs.height, vs.width) <= 1280 and vs.height % 2 == 0 and vs.width % 2 == 0
        assert sum(1 for _ in c.decode(video=0)) == shape[0]


def test_video_without_audio_warns_and_predicts(tmp_path, tiny_checkpoint, tiny_export) -> None:
    video = write_video(tmp_path / "mute.mp4", n=4, size=(64, 96))
    with pytest.warns(UserWarning, match="mute.mp4"):
        code, out = predict(tmp_path, video, tiny_checkpoint, "--overlay")
    assert code == 0 and json.loads((out / "summary.json").read_text())["has_audio"] is False
    with av.open(str(out / "overlay.mp4")) as c:
        assert len(c.streams.audio) == 0


# ------------------------------------------------------------------------------ bad input
def _expect_user_error(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("avsal: error:"), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def _corrupt(tmp_path: Path) -> Path:
    good = write_video(tmp_path / "good.mp4", n=10, size=(64, 96))
    data = bytearray(good.read_bytes())
    data[: len(data) // 2] = b"\x00" * (len(data) // 2)
    path = tmp_path / "corrupt.mp4"
    path.write_bytes(bytes(data))
    return path


def _truncated(tmp_path: Path) -> Path:
    good = write_video(tmp_path / "whole.mp4", n=10, size=(64, 96))
    path = tmp_path / "truncated.mp4"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    return path


def _zero_frames(tmp_path: Path) -> Path:
    path = tmp_path / "empty.mp4"
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
    return path


def _text(tmp_path: Path) -> Path:
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 50)
    return path


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda p: p / "missing.mp4", "missing.mp4"),
        (_text, "notes.mp4"),
        (_corrupt, "corrupt.mp4"),
        (_truncated, "truncated.mp4"),
        (_zero_frames, "empty.mp4"),
        (lambda p: p, ""),  # a directory
    ],
    ids=["missing", "not_a_video", "corrupt", "truncated", "zero_frames", "directory"],
)
def test_bad_videos_fail_cleanly_and_leave_outputs_alone(
    tmp_path, capsys, tiny_checkpoint, make, needle
) -> None:
    video = make(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "maps.npz").write_bytes(b"earlier result")  # must survive a failed run
    code, _ = predict(tmp_path, video, tiny_checkpoint, out=out)
    _expect_user_error(capsys, code, needle or str(video))
    assert sorted(p.name for p in out.iterdir()) == ["maps.npz"]
    assert (out / "maps.npz").read_bytes() == b"earlier result"


def test_unwritable_output_directory(tmp_path, capsys, clip, tiny_checkpoint) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _ = predict(tmp_path, clip, tiny_checkpoint, out=blocker / "out")
    _expect_user_error(capsys, code, str(blocker / "out"), "not writable")


def test_checkpoint_problems(tmp_path, capsys, clip) -> None:
    code, _ = predict(tmp_path, clip, tmp_path / "nope.safetensors")
    _expect_user_error(capsys, code, "nope.safetensors")
    # weights of the small profile under a tiny config: refused, naming the file
    small = build_model(load_config("small"), "hybrid")
    bad = tmp_path / "mislabelled.safetensors"
    save_checkpoint(small, bad, load_config("tiny"), "hybrid")
    code, _ = predict(tmp_path, clip, bad)
    _expect_user_error(capsys, code, "mislabelled.safetensors")
    # a safetensors file that is not an avsal checkpoint
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    code, _ = predict(tmp_path, clip, foreign)
    _expect_user_error(capsys, code, "foreign.safetensors", "not an avsal checkpoint")


def test_bad_arguments(tmp_path, capsys, clip, tiny_checkpoint) -> None:
    code, _ = predict(tmp_path, clip, tiny_checkpoint, "--batch-size", "0")
    _expect_user_error(capsys, code, "batch_size")
    code, _ = predict(tmp_path, clip, tiny_checkpoint, "--steps", "-1")
    _expect_user_error(capsys, code, "steps")
    code = main(["predict", "--out", str(tmp_path / "o")])
    _expect_user_error(capsys, code, "VIDEO")


def test_npz_is_a_plain_numpy_archive(tmp_path, clip, tiny_checkpoint, tiny_export) -> None:
    code, out = predict(tmp_path, clip, tiny_checkpoint)  # maps.npz only, by default
    assert code == 0
    with zipfile.ZipFile(out / "maps.npz") as z:
        assert z.namelist() == [
            "maps.npy",
            "source_size.npy",
            "timestamps.npy",
            "fps.npy",
            "format_version.npy",
        ]
        assert z.testzip() is None  # every CRC checks
    with np.load(out / "maps.npz") as z:
        assert z["maps"].dtype == np.uint8 and z["maps"].shape == (12, 64, 96)  # the model's size
        assert z["source_size"].tolist() == [80, 120] and int(z["format_version"][0]) == 2
    assert not (out / "overlay.mp4").exists() and not (out / "maps").exists()
