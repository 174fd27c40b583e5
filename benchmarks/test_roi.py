"""ROI video coding: EWPSNR gain at equal bitrate, BD-rate, and the cost of ROI handling.

Run with ``pytest benchmarks/test_roi.py --benchmark-enable -s``. Numbers go to ``extra_info`` and
are printed. Clips are synthetic benchmark scenes (``make_sample_clip``) whose ground-truth maps
stand in for eye tracking; predicted maps come from the shipped checkpoint (torch engine).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from avsal_deploy.data.synthetic import make_sample_clip
from avsal_deploy.outputs import load_maps
from avsal_deploy.roi.compare import predict_maps, read_maps_for, run_comparison
from avsal_deploy.roi.encode import decode_planes, encode, match_bitrate, read_clip
from avsal_deploy.roi.mapping import naive_offsets, offsets_for_maps
from avsal_deploy.roi.quality import score

SIZE = (360, 640)
SECONDS = 1.92  # 48 frames at 25 fps
BITRATE = {"x264": 300.0, "x265": 250.0}
PRESET = "faster"


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("roi-bench")
    path = make_sample_clip(root / "clip.mp4", seconds=SECONDS, size=SIZE, seed=1)
    clip = read_clip(str(path))
    gt = load_maps(path.with_name("clip_gt.npz"), size=SIZE)
    import torch

    torch.set_num_threads(2)
    pred = read_maps_for(predict_maps(path, root / "pred", engine="torch"), clip)
    return {"clip": clip, "gt": gt, "pred": pred}


def _show(name: str, info: dict) -> None:
    print(
        f"\n[{name}] "
        + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
    )


@pytest.mark.parametrize("codec", ["x264", "x265"])
def test_ewpsnr_gain_at_equal_bitrate(benchmark, scene: dict, codec: str) -> None:
    clip, gt = scene["clip"], scene["gt"]
    info: dict = {"codec": codec, "preset": PRESET, "size": f"{SIZE[1]}x{SIZE[0]}", "frames": clip.n_frames}

    def run() -> None:
        for label, maps in (("gt", gt), ("pred", scene["pred"])):
            rep, _, _ = run_comparison(
                clip, maps, gt=gt, codec=codec, bitrate_kbps=BITRATE[codec], preset=PRESET
            )
            info[f"{label}_ewpsnr_gain_db"] = rep["gain_db"]["ewpsnr"]
            info[f"{label}_psnr_gain_db"] = rep["gain_db"]["psnr"]
            info[f"{label}_ssim_gain"] = rep["ssim_gain"]
            info[f"{label}_bitrate_mismatch"] = rep["bitrate_mismatch"]
            info[f"{label}_flicker_qp"] = rep["offsets"]["flicker_qp"]
            if label == "gt":
                info["uniform_ewpsnr_db"] = rep["uniform"]["ewpsnr"]
                info["bitrate_kbps"] = rep["roi"]["bitrate_kbps"]
        # the naive mapping (top 60 blocks, qoffset = -0.4 x saliency) at the same bitrate
        naive = np.stack([naive_offsets(m, SIZE) for m in gt])
        res = match_bitrate(
            lambda c: encode(clip, c, codec, naive, preset=PRESET), info["bitrate_kbps"], accept=0.02
        )
        q = score(clip.frames, decode_planes(res.data), gt, with_ssim=False)
        info["naive_ewpsnr_gain_db"] = q["ewpsnr"] - info["uniform_ewpsnr_db"]
        info["naive_bitrate_kbps"] = res.bitrate_kbps

    benchmark.group = "roi quality"
    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(info)
    _show(f"equal bitrate {codec}", info)
    assert info["gt_ewpsnr_gain_db"] > 0


@pytest.mark.parametrize("codec", ["x264", "x265"])
def test_bd_rate_on_ewpsnr(benchmark, scene: dict, codec: str) -> None:
    clip, gt = scene["clip"], scene["gt"]
    info: dict = {"codec": codec, "preset": PRESET}

    def run() -> None:
        for label, maps in (("gt", gt), ("pred", scene["pred"])):
            rep, _, _ = run_comparison(clip, maps, gt=gt, codec=codec, crf=30.0, preset=PRESET, rate_points=5)
            rd = rep["rd"]
            info[f"{label}_bd_rate_ewpsnr_pct"] = rd["bd_rate_percent"]["ewpsnr"]
            info[f"{label}_bd_rate_psnr_pct"] = rd["bd_rate_percent"]["psnr"]
            info[f"{label}_bd_ewpsnr_db"] = rd["bd_quality_db"]["ewpsnr"]
            info["crfs"] = ",".join(f"{c:.0f}" for c in rd["crfs"])
            info[f"{label}_kbps_range"] = (
                f"{rd['uniform'][-1]['bitrate_kbps']:.0f}-{rd['uniform'][0]['bitrate_kbps']:.0f}"
            )

    benchmark.group = "roi bd-rate"
    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(info)
    _show(f"BD-rate {codec}", info)


def test_roi_cost_at_720p(benchmark, tmp_path: Path) -> None:
    """ROI handling per frame (mapping: map -> smoothed offsets; attaching: offsets -> side data, by
    the filter-graph and the ctypes route) against the plain encode time per frame, x264 medium."""
    size = (720, 1280)
    path = make_sample_clip(tmp_path / "hd.mp4", seconds=0.96, size=size, seed=2)
    clip = read_clip(str(path))
    gt = load_maps(path.with_name("hd_gt.npz"), size=size)
    info: dict = {"size": "1280x720", "frames": clip.n_frames, "preset": "medium", "threads": 2}

    def run() -> None:
        n = clip.n_frames
        t0 = time.perf_counter()
        offsets = offsets_for_maps(gt, size, "x264")
        mapping = (time.perf_counter() - t0) / n
        plain = encode(clip, 26, "x264", None, preset="medium", threads=2)
        graph = encode(clip, 26, "x264", offsets, preset="medium", threads=2, route="graph")
        fast = encode(clip, 26, "x264", offsets, preset="medium", threads=2, route="ctypes")
        enc = plain.encode_seconds / n
        info["encode_ms_per_frame"] = 1000 * enc
        info["mapping_ms_per_frame"] = 1000 * mapping
        for name, res in (("graph", graph), ("ctypes", fast)):
            info[f"{name}_attach_ms_per_frame"] = 1000 * res.roi_seconds / n
            info[f"{name}_regions_per_frame"] = res.regions_per_frame
            info[f"{name}_cost_fraction"] = (mapping + res.roi_seconds / n) / enc
        info["routes_bit_identical"] = graph.data == fast.data

    benchmark.group = "roi cost 720p"
    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(info)
    _show("ROI cost 720p x264", info)
