"""``avsal roi``: saliency-driven ROI encoding compared with a uniform encode at the same bitrate.

``avsal roi VIDEO [--maps MAPS.npz | --engine E --checkpoint F --export D --url U] (--bitrate KBPS |
--crf N) [--codec x264|x265] [--gt GT.npz] [--rate-points N] --out DIR``
"""

from __future__ import annotations

import argparse
import json

from avsal_deploy.cli.grammar import add_engine_options, add_json, add_out, alias, command, engine_choice
from avsal_deploy.roi.mapping import DEFAULT_STRENGTH, RoiParams


def cmd_roi(args: argparse.Namespace) -> int:
    from avsal_deploy.roi.compare import compare_video

    params = RoiParams(
        strength=DEFAULT_STRENGTH[args.codec] if args.strength is None else args.strength,
        gamma=args.gamma,
        floor=args.floor,
        max_delta=args.max_delta,
        neutral=not args.not_neutral,
        release=args.release,
    )
    predicting = any(getattr(args, k) is not None for k in ("engine", "checkpoint", "export", "url"))
    report = compare_video(
        args.video,
        args.out,
        maps=args.maps,
        engine=engine_choice(args) if predicting else None,
        gt=args.gt,
        codec=args.codec,
        bitrate_kbps=args.bitrate,
        crf=args.crf,
        params=params,
        preset=args.preset,
        step=args.qp_step,
        rate_points=args.rate_points or 0,
        threads=args.threads,
        route=args.roi_route,
    )
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    r, u = report["roi"], report["uniform"]
    print(f"{'':10}{'kbps':>9}{'PSNR':>8}{'EWPSNR':>8}{'SSIM':>8}{'CRF':>7}{'enc s':>7}")
    for name, row in (("roi", r), ("uniform", u)):
        print(
            f"{name:10}{row['bitrate_kbps']:9.1f}{row['psnr']:8.2f}{row['ewpsnr']:8.2f}"
            f"{row['ssim']:8.4f}{row['crf']:7.2f}{row['encode_seconds']:7.2f}"
        )
    g = report["gain_db"]
    print(f"gain at equal bitrate: EWPSNR {g['ewpsnr']:+.2f} dB, PSNR {g['psnr']:+.2f} dB")
    if "rd" in report:
        bd = report["rd"]["bd_rate_percent"]
        print(f"BD-rate (ROI vs uniform): EWPSNR {bd['ewpsnr']:+.1f}%, PSNR {bd['psnr']:+.1f}%")
    print(f"wrote {args.out}/roi.mp4, uniform.mp4, report.json" + (", rd.png" if "rd" in report else ""))
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``roi`` to the ``avsal`` parser."""
    d = RoiParams()
    p = command(
        sub,
        "roi",
        "saliency-driven ROI encode vs uniform encode at equal bitrate",
        cmd_roi,
        description="Encode VIDEO with QP offsets from saliency maps (given with --maps, else predicted "
        "with the model the engine options name) and uniformly at the same bitrate; compare PSNR, "
        "SSIM and saliency-weighted EWPSNR.",
    )
    p.add_argument("video", help="input video")
    p.add_argument(
        "--maps",
        default=None,
        metavar="FILE",
        help="saliency maps (maps.npz from `avsal predict`, or an npz with float 'maps' [N,H,W]; "
        "default: predict them)",
    )
    add_engine_options(p, old_export=False, old_url=False)
    rate = p.add_mutually_exclusive_group(required=True)
    rate.add_argument("--bitrate", type=float, metavar="KBPS", help="target bitrate of both encodes, kbps")
    rate.add_argument("--crf", type=float, help="CRF of the ROI encode (the uniform one matches its bitrate)")
    p.add_argument("--codec", default="x264", choices=("x264", "x265"), help="encoder")
    p.add_argument(
        "--gt", default=None, metavar="FILE", help="ground-truth maps for EWPSNR (default: the maps used)"
    )
    p.add_argument(
        "--rate-points",
        type=int,
        default=None,
        metavar="N",
        help="also RD curves at N >= 4 CRFs, BD-rates and rd.png",
    )
    add_out(p, "output directory", required=True)
    p.add_argument("--preset", default="medium", help="x264/x265 preset")
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        metavar="N",
        help="encoder threads (default: 0, the encoder's choice)",
    )
    p.add_argument(
        "--strength",
        type=float,
        default=None,
        help="QP per halving of importance (default: "
        + ", ".join(f"{v:g} for {k}" for k, v in DEFAULT_STRENGTH.items())
        + ")",
    )
    p.add_argument("--gamma", type=float, default=d.gamma, help="exponent on block saliency")
    p.add_argument("--floor", type=float, default=d.floor, help="uniform share of the importance")
    p.add_argument("--max-delta", type=float, default=d.max_delta, help="clamp on |QP offset|")
    p.add_argument("--release", type=float, default=d.release, help="temporal release coefficient")
    p.add_argument("--qp-step", type=float, default=1.0, metavar="QP", help="QP quantisation of the offsets")
    alias(p, "--step", "qp_step", convert=lambda v, ns: float(v))
    p.add_argument(
        "--not-neutral", action="store_true", help="offsets relative to mean importance (default: mean zero)"
    )
    p.add_argument(
        "--roi-route",
        default="graph",
        choices=("graph", "ctypes"),
        help="how ROI side data reaches the encoder: addroi filter graphs (default) or the guarded ctypes route",
    )
    add_json(p, "the report")
