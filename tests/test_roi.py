"""ROI video coding: mapping, exporters, the encoder route, equal-bitrate comparisons, CLI."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from avsal_deploy.cli import main
from avsal_deploy.data.synthetic import make_sample_clip
from avsal_deploy.engine import EngineChoice
from avsal_deploy.errors import AvsalError, MediaError
from avsal_deploy.outputs import load_maps
from avsal_deploy.roi import encode as encoding
from avsal_deploy.roi import exporters as ex
from avsal_deploy.roi import quality
from avsal_deploy.roi.compare import compare_video, predict_maps, read_maps_for, run_comparison
from avsal_deploy.roi.encode import (
    _attach_rois,
    block_side_data,
    encode,
    read_clip,
    regions_of_interest,
    side_data_writer,
)
from avsal_deploy.roi.mapping import (
    OffsetSmoother,
    RoiParams,
    block_grid,
    flicker,
    offsets_for_maps,
    qp_offsets,
)

SIZE = (144, 256)  # (H, W): a 9 x 16 macroblock grid
SECONDS = 1.28  # 32 frames at 25 fps


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A synthetic benchmark clip ('relevant' scene) with its ground-truth maps, decoded once."""
    path = make_sample_clip(tmp_path_factory.mktemp("roi") / "clip.mp4", seconds=SECONDS, size=SIZE, seed=3)
    clip = read_clip(str(path))
    gt_path = path.with_name("clip_gt.npz")
    return {"path": path, "gt_path": gt_path, "clip": clip, "gt": load_maps(gt_path, size=SIZE)}


def _blob(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r)).astype(np.float32)


# ----------------------------------------------------------------------------- mapping
def test_grid_is_ceil_division_and_offsets_have_its_shape() -> None:
    assert block_grid((100, 70)) == (7, 5)
    assert block_grid((720, 1280)) == (45, 80)
    m = _blob(50, 40, 20, 10, 6)  # any map size: resized to the source
    assert qp_offsets(m, (100, 70), "x264").shape == (7, 5)
    assert qp_offsets(m, (100, 70), "x265").dtype == np.float32


def test_budget_neutral_offsets_average_to_zero_even_when_clamped() -> None:
    m = _blob(144, 256, 40, 60, 10)
    for params in (RoiParams(), RoiParams(strength=6, max_delta=4, floor=0.01), RoiParams(gamma=2, floor=0)):
        o = qp_offsets(m, SIZE, "x264", params)
        assert abs(float(o.mean())) < 1e-4
        assert np.all(np.abs(o) <= params.max_delta + 1e-5)
    clamped = qp_offsets(m, SIZE, "x264", RoiParams(strength=6, max_delta=4, floor=0.01))
    assert np.isclose(clamped.min(), -4) and np.sum(np.isclose(clamped, -4)) > 4  # the clamp was active


def test_salient_blocks_get_negative_offsets_and_log_ratio_mapping() -> None:
    m = np.zeros(SIZE, np.float32)
    m[:16, :16] = 1.0  # one salient block
    p = RoiParams(strength=3, floor=0.5, max_delta=40, neutral=False)
    o = qp_offsets(m, SIZE, "x264", p)
    n = o.size
    w_hot = 0.5 + 0.5 * n  # floor + (1 - floor) * s / mean(s)
    assert o[0, 0] == pytest.approx(-3 * np.log2(w_hot), rel=1e-5)
    assert np.allclose(o.ravel()[1:], -3 * np.log2(0.5))  # background: +3 QP
    assert np.allclose(qp_offsets(np.zeros(SIZE), SIZE), 0)  # no saliency: no ROI


def test_smoother_attacks_at_once_and_releases_slowly() -> None:
    a, b = _blob(*SIZE, 40, 60, 12), _blob(*SIZE, 100, 200, 12)
    params = RoiParams(release=0.6)
    s = OffsetSmoother(SIZE, "x264", params)
    first = s(a)
    assert np.allclose(first, qp_offsets(a, SIZE, "x264", params))
    second = s(b)
    fresh = qp_offsets(b, SIZE, "x264", params)
    r, c = 100 // 16, 200 // 16
    assert second[r, c] <= fresh[r, c] + 0.5  # the new ROI is there at once
    r0, c0 = 40 // 16, 60 // 16
    assert second[r0, c0] < fresh[r0, c0] - 1.0  # the old one fades instead of vanishing
    s.reset()
    assert np.allclose(s(b), fresh)
    # flickering maps: smoothing reduces the frame-to-frame change of the offsets
    maps = np.stack([a if i % 2 else 0.3 * a for i in range(8)])
    assert flicker(offsets_for_maps(maps, SIZE, "x264", params)) < flicker(
        offsets_for_maps(maps, SIZE, "x264", RoiParams(release=0.0))
    )


def test_bad_mapping_inputs() -> None:
    with pytest.raises(AvsalError, match="codec"):
        qp_offsets(np.ones(SIZE), SIZE, "vp9")
    with pytest.raises(AvsalError, match="floor"):
        RoiParams(floor=1.5)
    with pytest.raises(AvsalError, match="NaN"):
        qp_offsets(np.full(SIZE, np.nan), SIZE)


# ----------------------------------------------------------------------------- exporters
@pytest.fixture(scope="module")
def offsets() -> np.ndarray:
    maps = np.stack([_blob(*SIZE, 40 + 4 * i, 60 + 8 * i, 14) for i in range(5)])
    maps[3] = maps[2]  # a repeated map: one SVT-AV1 event covers two frames
    return offsets_for_maps(maps, SIZE, "x264", RoiParams(release=0.0))


def test_nvenc_maps_round_trip(tmp_path: Path, offsets: np.ndarray) -> None:
    delta = ex.nvenc_qp_delta(offsets)
    assert delta.dtype == np.int8 and delta.shape == (5, 9, 16)
    assert np.array_equal(delta, np.rint(offsets).astype(np.int8))
    back = ex.read_nvenc_map(ex.write_nvenc_map(tmp_path / "qp.bin", delta), (9, 16))
    assert np.array_equal(back, delta)
    levels = ex.nvenc_emphasis_levels(offsets, max_delta=10)
    assert levels.min() == 0 and levels.max() <= 5 and levels.max() > 0
    assert np.all(levels[offsets >= 0] == 0)
    hevc = ex.nvenc_qp_delta(offsets, block=32)  # per 32x32 CTB
    assert hevc.shape == (5, 5, 8)
    assert np.array_equal(ex.read_nvenc_map(ex.write_nvenc_map(tmp_path / "h.bin", hevc), (5, 8)), hevc)
    with pytest.raises(MediaError):
        ex.read_nvenc_map(tmp_path / "qp.bin", (7, 7))


def test_svtav1_roi_map_round_trip(tmp_path: Path, offsets: np.ndarray) -> None:
    q = ex.svtav1_qindex_offsets(offsets)
    assert q.shape == (5, 3, 4)  # 64x64 superblocks over 144x256
    assert np.allclose(q[0, 0, 0], np.rint(4 * offsets[0, :4, :4].mean()))
    path = ex.write_svtav1_roi_map(tmp_path / "roi.txt", q)
    lines = path.read_text().splitlines()
    assert [int(line.split()[0]) for line in lines] == [0, 1, 2, 4]  # frame 3 repeats frame 2
    assert all(len(line.split()) == 1 + 12 for line in lines)
    assert np.array_equal(ex.read_svtav1_roi_map(path, (3, 4), 5), q)


def test_kvazaar_roi_round_trip(tmp_path: Path, offsets: np.ndarray) -> None:
    d = ex.kvazaar_delta_qp(offsets)
    path = ex.write_kvazaar_roi(tmp_path / "roi.txt", d)
    assert path.read_text().splitlines()[0] == "16 9"  # "cols rows"
    assert np.array_equal(ex.read_kvazaar_roi(path), d)


def test_ffmpeg_regions_rasterise_back_to_the_grid(tmp_path: Path, offsets: np.ndarray) -> None:
    for o in offsets:
        regions = ex.rois_from_offsets(o, SIZE, step=1.0)
        assert len(regions) < o.size  # merged into rectangles
        assert all(-1 <= r.qoffset <= 1 for r in regions)
        assert np.array_equal(ex.offsets_from_rois(regions, SIZE), ex.quantize_offsets(o, 1.0))
        assert ex.unpack_side_data(ex.pack_side_data(regions)) == regions
    half = ex.rois_from_offsets(offsets[0], SIZE, step=0.5)
    assert np.array_equal(ex.offsets_from_rois(half, SIZE), ex.quantize_offsets(offsets[0], 0.5))
    frames, size = ex.read_ffmpeg_rois(ex.write_ffmpeg_rois(tmp_path / "rois.json", offsets, SIZE))
    assert size == SIZE and len(frames) == 5
    for regs, o in zip(frames, offsets, strict=True):
        assert np.array_equal(ex.offsets_from_rois(regs, SIZE), ex.quantize_offsets(o))
    odd = (100, 70)  # partial edge blocks
    o = qp_offsets(_blob(*odd, 90, 60, 8), odd)
    assert np.array_equal(ex.offsets_from_rois(ex.rois_from_offsets(o, odd), odd), ex.quantize_offsets(o))


# ----------------------------------------------------------------------------- encoder route
def test_filter_graph_attaches_the_regions_as_side_data(offsets: np.ndarray) -> None:
    regions = ex.rois_from_offsets(offsets[0], SIZE)
    frame = av.VideoFrame.from_ndarray(np.zeros((SIZE[0] * 3 // 2, SIZE[1]), np.uint8), format="yuv420p")
    frame.pts, frame.time_base = 0, Fraction(1, 25)
    out = _attach_rois(frame, regions, SIZE[1], SIZE[0], Fraction(1, 25))
    sd = regions_of_interest(out)
    assert len(sd) == 1
    assert ex.unpack_side_data(sd[0]) == regions


@pytest.mark.parametrize("codec", ["x264", "x265"])
def test_side_data_reaches_the_encoder(sample: dict, codec: str) -> None:
    clip = sample["clip"]
    o = offsets_for_maps(sample["gt"], clip.size, codec)
    plain = encode(clip, 30, codec, None, preset="ultrafast", threads=1)
    zero = encode(clip, 30, codec, np.zeros_like(o), preset="ultrafast", threads=1)
    roi = encode(clip, 30, codec, o, preset="ultrafast", threads=1)
    assert zero.data == plain.data  # offsets of 0 change nothing
    assert roi.data != plain.data and roi.regions_per_frame > 0
    # uniformly negative offsets must cost bits: the encoder applies them
    finer = encode(clip, 30, codec, np.full_like(o, -6), preset="ultrafast", threads=1)
    assert finer.bitrate_kbps > 1.5 * plain.bitrate_kbps


@pytest.mark.parametrize("codec", ["x264", "x265"])
def test_ctypes_route_gives_the_same_bitstream_as_the_filter_graph(sample: dict, codec: str) -> None:
    if side_data_writer() is None:
        pytest.skip(f"ctypes route unavailable: {encoding.ctypes_unavailable}")
    clip = sample["clip"]
    o = offsets_for_maps(sample["gt"], clip.size, codec)
    graph = encode(clip, 28, codec, o, preset="veryfast", threads=1, route="graph")
    fast = encode(clip, 28, codec, o, preset="veryfast", threads=1, route="ctypes")
    assert fast.route == "ctypes" and graph.route == "graph"
    assert fast.data == graph.data
    # its per-block regions rasterise to the same grid as the merged rectangles
    regions = ex.unpack_side_data(block_side_data(o[5], clip.size))
    assert np.array_equal(ex.offsets_from_rois(regions, clip.size), ex.quantize_offsets(o[5]))
    frame = av.VideoFrame(SIZE[1], SIZE[0], "yuv420p")
    side_data_writer().attach(frame, ex.pack_side_data(regions))
    got = regions_of_interest(frame)
    assert got == [ex.pack_side_data(regions)]


def test_ctypes_route_refuses_unchecked_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encoding, "CTYPES_PYAV_MAJORS", (999,))
    with pytest.raises(RuntimeError, match="not checked"):
        encoding.SideDataWriter()


def test_aq_mode_zero_is_refused(sample: dict) -> None:
    with pytest.raises(AvsalError, match="aq-mode"):
        encode(sample["clip"], 30, "x264", None, options={"aq-mode": "0"})
    with pytest.raises(AvsalError, match="codec"):
        encode(sample["clip"], 30, "vp9")


# ----------------------------------------------------------------------------- quality
def test_metrics() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (64, 80)).astype(np.uint8)
    noisy = np.clip(a + rng.normal(0, 8, a.shape), 0, 255).astype(np.uint8)
    assert quality.ssim(a, a) == pytest.approx(1.0)
    assert quality.ssim(a, noisy) < 1.0 and quality.ssim(a, noisy) == pytest.approx(quality.ssim(noisy, a))
    # one 11x11 window: SSIM computed directly with the Gaussian weights (sigma 1.5)
    x, y = a[:11, :11].astype(float), noisy[:11, :11].astype(float)
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    w2 = np.outer(g, g) / np.outer(g, g).sum()
    mx, my = (w2 * x).sum(), (w2 * y).sum()
    vx, vy, cxy = (w2 * (x - mx) ** 2).sum(), (w2 * (y - my) ** 2).sum(), (w2 * (x - mx) * (y - my)).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    direct = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert quality.ssim(x, y) == pytest.approx(direct, rel=1e-9)
    smooth = np.tile(np.linspace(60, 200, 80), (64, 1))
    assert quality.ssim(smooth, np.clip(smooth + rng.normal(0, 8, smooth.shape), 0, 255)) < 0.9
    mse = np.mean((a.astype(float) - noisy) ** 2)
    assert quality.ewpsnr_frame(a, noisy, None) == pytest.approx(10 * np.log10(255**2 / mse))
    assert quality.ewpsnr_frame(a, noisy, np.ones(a.shape)) == pytest.approx(10 * np.log10(255**2 / mse))
    w = np.zeros(a.shape)
    w[:32] = 1.0
    top = np.mean((a[:32].astype(float) - noisy[:32]) ** 2)
    assert quality.ewpsnr_frame(a, noisy, w) == pytest.approx(10 * np.log10(255**2 / top))
    # BD-rate: the test curve needs 20% fewer bits at every quality
    q = [30.0, 33.0, 36.0, 39.0]
    r = [100.0, 200.0, 400.0, 800.0]
    assert quality.bd_rate(r, q, [0.8 * x for x in r], q) == pytest.approx(-20.0, abs=1e-6)
    assert quality.bd_quality(r, q, r, [x + 1 for x in q]) == pytest.approx(1.0, abs=1e-6)


# ----------------------------------------------------------------------------- equal bitrate
@pytest.mark.parametrize("codec", ["x264", "x265"])
def test_roi_beats_uniform_on_ewpsnr_at_equal_bitrate_with_gt_maps(sample: dict, codec: str) -> None:
    clip, gt = sample["clip"], sample["gt"]
    report, roi, uniform = run_comparison(clip, gt, gt=gt, codec=codec, bitrate_kbps=80, preset="veryfast")
    assert abs(roi.bitrate_kbps / 80 - 1) <= 0.02
    assert abs(report["bitrate_mismatch"]) <= 0.02
    assert report["roi"]["ewpsnr"] > report["uniform"]["ewpsnr"]
    assert report["roi"]["psnr"] < report["uniform"]["psnr"]  # the bits moved: plain PSNR pays
    assert report["offsets"]["grid"] == [9, 16]


@pytest.fixture(scope="module")
def predicted(sample: dict, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """The shipped checkpoint's maps of the sample clip (predicted once for the module)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = predict_maps(sample["path"], tmp_path_factory.mktemp("pred"), EngineChoice("torch"))
    finally:
        torch.set_num_threads(before)
    return read_maps_for(path, sample["clip"])


def test_roi_beats_uniform_with_predicted_maps(sample: dict, predicted: np.ndarray) -> None:
    clip, gt = sample["clip"], sample["gt"]
    assert predicted.shape == gt.shape
    report, _, _ = run_comparison(clip, predicted, gt=gt, codec="x264", bitrate_kbps=80, preset="veryfast")
    assert abs(report["bitrate_mismatch"]) <= 0.02
    assert report["roi"]["ewpsnr"] > report["uniform"]["ewpsnr"]


# ----------------------------------------------------------------------------- CLI
def test_cli_writes_videos_report_and_rd_curves(sample: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    gt = str(sample["gt_path"])
    args = ["roi", str(sample["path"]), "--maps", gt, "--gt", gt, "--crf", "30", "--preset", "ultrafast"]
    assert main([*args, "--rate-points", "4", "--out", str(out)]) == 0
    assert "EWPSNR" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    for side in ("roi", "uniform"):
        assert {"bitrate_kbps", "psnr", "ewpsnr", "ssim", "encode_seconds"} <= set(report[side])
    assert report["roi"]["crf"] == 30
    assert abs(report["roi"]["bitrate_kbps"] / report["uniform"]["bitrate_kbps"] - 1) <= 0.02
    rd = report["rd"]
    assert len(rd["roi"]) == len(rd["uniform"]) == 4
    assert np.isfinite(rd["bd_rate_percent"]["ewpsnr"]) and rd["bd_rate_percent"]["ewpsnr"] < 0
    assert (out / "rd.png").stat().st_size > 1000
    for name in ("roi.mp4", "uniform.mp4"):
        with av.open(str(out / name)) as c:
            assert sum(1 for _ in c.decode(video=0)) == sample["clip"].n_frames
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_bad_inputs_give_clear_errors(sample: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("keep me")
    gt = str(sample["gt_path"])
    short = tmp_path / "short.npz"
    np.savez(short, maps=np.zeros((5, 18, 32), np.float32))
    cases = [
        (["roi", str(tmp_path / "nope.mp4"), "--maps", gt, "--crf", "30"], "nope.mp4"),
        (["roi", str(sample["path"]), "--maps", str(tmp_path / "none.npz"), "--crf", "30"], "none.npz"),
        (
            ["roi", str(sample["path"]), "--maps", str(short), "--crf", "30"],
            "short.npz: 5 maps for a video of 32",
        ),
        (["roi", str(sample["path"]), "--maps", gt, "--gt", str(short), "--crf", "30"], "short.npz"),
    ]
    for argv, message in cases:
        assert main([*argv, "--preset", "ultrafast", "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
    assert (out / "report.json").read_text() == "keep me"  # nothing already there is lost
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]
    with pytest.raises(SystemExit):  # argparse refuses an unknown codec
        main(["roi", str(sample["path"]), "--maps", gt, "--crf", "30", "--codec", "vp9", "--out", str(out)])
    with pytest.raises(AvsalError, match="codec"):
        compare_video(sample["path"], out, maps=gt, crf=30, codec="vp9")
    with pytest.raises(AvsalError, match="exactly one"):
        run_comparison(sample["clip"], sample["gt"], crf=30, bitrate_kbps=50)
