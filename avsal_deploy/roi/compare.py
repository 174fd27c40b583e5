"""ROI encode vs uniform encode at equal bitrate, with PSNR / SSIM / EWPSNR and optional RD curves.

:func:`run_comparison` is what ``avsal roi`` calls: saliency maps -> smoothed QP offsets -> an ROI
encode (at ``crf``, or at the CRF that hits ``bitrate_kbps``) and a uniform encode whose CRF is
bisected to the ROI encode's bitrate (within 2%), both scored against the encoder input; with
``rate_points`` both are also encoded at N CRFs around the operating point for RD curves and
Bjontegaard deltas. :func:`write_comparison` writes ``roi.mp4``, ``uniform.mp4``, ``report.json``
(and ``rd.png``) into a directory atomically.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from avsal_deploy.engine.choice import EngineChoice
from avsal_deploy.errors import AvsalError, BackendUnavailableError, MediaError
from avsal_deploy.roi import quality
from avsal_deploy.roi.encode import Clip, EncodeResult, decode_planes, encode, match_bitrate, read_clip
from avsal_deploy.roi.mapping import RoiParams, codec_block, default_params, flicker, offsets_for_maps

PathLike = str | os.PathLike[str]
MATCH_TOLERANCE = 0.02


def _map_frames(path: Path) -> int:
    from avsal_deploy.outputs import read_map_info

    if not path.is_file():
        raise MediaError(f"{path}: no such maps file")
    return int(read_map_info(path)["n_frames"])


def read_maps_for(path: PathLike, clip: Clip, what: str = "maps") -> np.ndarray:
    """All maps of ``path`` at the clip's size, float32 [N, H, W]; AvsalError naming the file if the
    file is missing, unreadable, or has a different number of frames than the video."""
    from avsal_deploy.outputs import load_maps

    p = Path(path)
    n = _map_frames(p)
    if n != clip.n_frames:
        raise AvsalError(f"{p}: {n} {what} for a video of {clip.n_frames} frames")
    return load_maps(p, size=clip.size)


def predict_maps(video: PathLike, out_dir: Path, engine: EngineChoice | None = None) -> Path:
    """Predict ``video``'s saliency maps into ``out_dir/maps.npz`` with the model ``engine`` names
    (default: the shipped checkpoint on ONNX Runtime); the one place this package touches the
    prediction pipeline."""
    from avsal_deploy.pipeline import Predictor, predict_to_directory

    with (engine or EngineChoice()).open() as eng:
        predict_to_directory(video, out_dir, Predictor(eng), overlay=False, pngs=False)
    return out_dir / "maps.npz"


def _scored(res: EncodeResult, clip: Clip, weights: np.ndarray, with_ssim: bool = True) -> dict[str, Any]:
    q = quality.score(clip.frames, decode_planes(res.data), weights, with_ssim=with_ssim)
    return {
        "bitrate_kbps": res.bitrate_kbps,
        **q,
        "crf": res.crf,
        "encode_seconds": res.encode_seconds,
        "roi_seconds": res.roi_seconds,
        "regions_per_frame": res.regions_per_frame,
    }


def run_comparison(
    clip: Clip,
    maps: np.ndarray,
    *,
    gt: np.ndarray | None = None,
    codec: str = "x264",
    bitrate_kbps: float | None = None,
    crf: float | None = None,
    params: RoiParams | None = None,
    preset: str = "medium",
    step: float = 1.0,
    rate_points: int = 0,
    crf_span: float = 12.0,
    threads: int = 0,
    route: str = "graph",
) -> tuple[dict[str, Any], EncodeResult, EncodeResult]:
    """Encode ``clip`` with the ROI offsets of ``maps`` [N, H, W] and uniformly at the same bitrate.

    Exactly one of ``bitrate_kbps`` (the ROI encode's CRF is bisected to it) or ``crf`` (the ROI
    encode's CRF) is given. EWPSNR is weighted by ``gt`` [N, H, W] when given, else by ``maps``.
    ``rate_points >= 4`` adds RD curves at CRFs spread over ``crf_span`` around the ROI CRF and
    BD-rates (uniform = reference; negative = ROI saves bits). ``route``: how side data is attached
    (:func:`~avsal_deploy.roi.encode.encode`). Returns (report, roi, uniform).
    """
    if (bitrate_kbps is None) == (crf is None):
        raise AvsalError("give exactly one of --bitrate or --crf")
    codec_block(codec)
    if len(maps) != clip.n_frames:
        raise AvsalError(f"{len(maps)} maps for a video of {clip.n_frames} frames")
    if rate_points and rate_points < 4:
        raise AvsalError(f"--rate-points {rate_points}: BD-rate needs at least 4")
    p = params or default_params(codec)
    offsets = offsets_for_maps(maps, clip.size, codec, p)
    weights = gt if gt is not None else maps

    def at(c: float, roi: bool) -> EncodeResult:
        return encode(
            clip, c, codec, offsets if roi else None, preset=preset, step=step, threads=threads, route=route
        )

    if crf is not None:
        roi = at(float(crf), True)
    else:
        roi = match_bitrate(lambda c: at(c, True), float(bitrate_kbps), accept=MATCH_TOLERANCE)
    uniform = match_bitrate(
        lambda c: at(c, False), roi.bitrate_kbps, accept=MATCH_TOLERANCE, start_crf=roi.crf - 2.0
    )
    r, u = _scored(roi, clip, weights), _scored(uniform, clip, weights)
    report: dict[str, Any] = {
        "roi": r,
        "uniform": u,
        "gain_db": {k: r[k] - u[k] for k in ("psnr", "psnr_y", "ewpsnr")},
        "ssim_gain": r["ssim"] - u["ssim"],
        "bitrate_mismatch": roi.bitrate_kbps / uniform.bitrate_kbps - 1.0,
        "roi_cost": {
            "roi_ms_per_frame": 1000.0 * roi.roi_seconds / clip.n_frames,
            "encode_ms_per_frame": 1000.0 * (roi.encode_seconds - roi.roi_seconds) / clip.n_frames,
            "fraction_of_encode": roi.roi_seconds / max(roi.encode_seconds - roi.roi_seconds, 1e-9),
            "uniform_encode_ms_per_frame": 1000.0 * uniform.encode_seconds / clip.n_frames,
        },
        "offsets": {
            "mean_qp": float(offsets.mean()),
            "min_qp": float(offsets.min()),
            "max_qp": float(offsets.max()),
            "flicker_qp": flicker(offsets),
            "grid": list(offsets.shape[1:]),
            "block": codec_block(codec),
        },
        "settings": {
            "codec": codec,
            "preset": preset,
            "target_bitrate_kbps": bitrate_kbps,
            "crf": crf,
            "offset_step_qp": step,
            "roi_route": route,
            "mapping": p.to_dict(),
            "weights": "gt" if gt is not None else "maps",
            "frames": clip.n_frames,
            "size": list(clip.size),
            "fps": clip.fps,
            "match_tolerance": MATCH_TOLERANCE,
            "bitrate": "video packet payload bits / clip duration",
            "psnr": "YUV 6:1:1 weighted, per-frame mean; psnr_y luma; ewpsnr luma weighted by the GT map",
            "ssim": "luma, Gaussian 11x11 sigma 1.5 (Wang et al. 2004), per-frame mean",
        },
    }
    if rate_points:
        report["rd"] = rate_distortion(
            clip, offsets, weights, codec, roi.crf, rate_points, crf_span, preset, step, threads, route
        )
    return report, roi, uniform


def rate_distortion(
    clip: Clip,
    offsets: np.ndarray,
    weights: np.ndarray,
    codec: str,
    centre_crf: float,
    points: int,
    span: float = 12.0,
    preset: str = "medium",
    step: float = 1.0,
    threads: int = 0,
    route: str = "graph",
) -> dict[str, Any]:
    """RD curves of the ROI and uniform encodes at ``points`` CRFs spread evenly over ``span`` around
    ``centre_crf`` (clipped to [0, 51]) and their BD-rate / BD-quality on EWPSNR and PSNR."""
    lo = min(max(centre_crf - span / 2, 0.0), 51.0 - span)
    crfs = [float(c) for c in np.linspace(lo, lo + span, points)]
    curves: dict[str, list[dict[str, float]]] = {"roi": [], "uniform": []}
    for c in crfs:
        for name, offs in (("roi", offsets), ("uniform", None)):
            res = encode(clip, c, codec, offs, preset=preset, step=step, threads=threads, route=route)
            s = quality.score(clip.frames, decode_planes(res.data), weights, with_ssim=False)
            curves[name].append({"crf": c, "bitrate_kbps": res.bitrate_kbps, **s})
    out: dict[str, Any] = {"crfs": crfs, **curves, "bd_rate_percent": {}, "bd_quality_db": {}}
    for metric in ("ewpsnr", "psnr"):
        args = [[pt[k] for pt in curves[n]] for n in ("uniform", "roi") for k in ("bitrate_kbps", metric)]
        out["bd_rate_percent"][metric] = quality.bd_rate(*args)
        out["bd_quality_db"][metric] = quality.bd_quality(*args)
    return out


def plot_rd(rd: dict[str, Any], path: Path, title: str = "") -> Path:
    """RD curves (EWPSNR and PSNR against bitrate) as a PNG."""
    try:
        import matplotlib
    except ImportError as exc:
        raise BackendUnavailableError(
            "the RD plot needs matplotlib: pip install 'avsal-deploy[roi]'"
        ) from exc

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("ewpsnr", "psnr"), strict=True):
        for name, style in (("uniform", "o--"), ("roi", "s-")):
            pts = rd[name]
            ax.plot([p["bitrate_kbps"] for p in pts], [p[metric] for p in pts], style, label=name)
        bd = rd["bd_rate_percent"][metric]
        ax.set_xscale("log")
        ax.set_xlabel("bitrate (kbps)")
        ax.set_ylabel(f"{metric.upper()} (dB)")
        ax.set_title(f"{metric.upper()}: BD-rate {bd:+.1f}%")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _install(tmp: Path, out: Path, names: list[str]) -> None:
    for name in names:
        os.replace(tmp / name, out / name)


def compare_video(
    video: PathLike,
    out_dir: PathLike,
    *,
    maps: PathLike | None = None,
    engine: EngineChoice | None = None,
    gt: PathLike | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """``avsal roi``: compare ROI and uniform encodes of ``video`` and write the results to ``out_dir``.

    Maps come from ``maps`` (a maps.npz / float ``maps`` npz, one map per frame) or are predicted
    with the model ``engine`` names (default: the shipped checkpoint on ONNX Runtime). Files appear in ``out_dir`` only once everything has succeeded
    (built in a temporary directory there, then moved into place): ``roi.mp4``, ``uniform.mp4``,
    ``report.json`` and, with ``rate_points``, ``rd.png``. Returns the report.
    """
    from avsal_deploy.outputs import check_writable

    video = Path(video)
    if not video.is_file():
        raise MediaError(f"{video}: no such video file")
    if maps is not None and engine is not None:
        raise AvsalError(
            "give --maps or a model to predict them (--engine, --checkpoint, --export, --url), not both"
        )
    out = Path(out_dir)
    if gt is not None:
        _map_frames(Path(gt))  # a missing / unreadable GT fails before any work
    if maps is not None:
        _map_frames(Path(maps))
    check_writable(out)
    clip = read_clip(str(video))
    tmp = Path(tempfile.mkdtemp(prefix=".avsal-roi-", dir=out))
    try:
        if maps is None:
            maps_path = predict_maps(video, tmp / "predicted", engine)
            source = "predicted"
        else:
            maps_path, source = Path(maps), str(maps)
        m = read_maps_for(maps_path, clip)
        g = read_maps_for(gt, clip, "ground-truth maps") if gt is not None else None
        report, roi, uniform = run_comparison(clip, m, gt=g, **kwargs)
        report["video"] = str(video)
        report["maps"] = source
        report["gt"] = str(gt) if gt is not None else None
        (tmp / "roi.mp4").write_bytes(roi.data)
        (tmp / "uniform.mp4").write_bytes(uniform.data)
        names = ["roi.mp4", "uniform.mp4"]
        if "rd" in report:
            plot_rd(report["rd"], tmp / "rd.png", f"{video.name} ({report['settings']['codec']})")
            names.append("rd.png")
        (tmp / "report.json").write_text(json.dumps(report, indent=2))
        names.append("report.json")
        _install(tmp, out, names)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report
