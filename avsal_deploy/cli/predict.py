"""``avsal predict``: saliency maps of a video (and, on request, an overlay video and PNG maps)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from avsal_deploy.cli.grammar import (
    add_engine_options,
    add_out,
    add_output_options,
    add_predict_options,
    add_quiet_alias,
    command,
    engine_choice,
    predict_options,
)
from avsal_deploy.errors import AvsalError


def cmd_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from avsal_deploy.outputs import check_writable
    from avsal_deploy.pipeline import Predictor, predict_to_directory

    out = Path(args.out)
    choice = engine_choice(args)  # a wrong combination fails before any work
    options = predict_options(args)
    check_writable(out)
    if args.sample:
        from avsal_deploy.data.synthetic import make_sample_clip

        video = make_sample_clip(out / "sample.mp4")
        print(f"sample clip: {video} (synthetic; ground truth in {video.with_name(video.stem + '_gt.npz')})")
    elif args.video:
        video = Path(args.video)
    else:
        raise AvsalError("give a VIDEO to predict, or --sample for the generated sample clip")

    def exporting(directory: Path) -> None:
        if not args.quiet:
            print(f"exporting ONNX components once into {directory} ...", file=sys.stderr)

    with choice.open(on_export=exporting) as engine:
        bar = tqdm(total=None, unit="frame", desc="predict", disable=args.quiet, file=sys.stderr)

        def progress(done: int, total: int) -> None:  # frames written, frames expected
            bar.total = total
            bar.update(done - bar.n)

        try:
            summary = predict_to_directory(
                video,
                out,
                Predictor(engine, options),
                overlay=args.overlay,
                pngs=args.png,
                map_size=args.map_size,
                progress=progress,
            )
        finally:
            bar.close()
    t = summary["timings"]
    print(
        f"{summary['frames']} frames ({summary['engine']}, {summary['steps']} DDIM steps, stride "
        f"{summary['stride']}) in {summary['seconds']:.2f} s: decode {t['decode']:.2f} s, preprocess "
        f"{t['preprocess']:.2f} s, inference {t['inference']:.2f} s, write {t['write']:.2f} s (own thread) "
        f"({summary['frames_per_second']:.1f} frames/s, peak RSS {summary['peak_rss_mb']:.0f} MB)"
    )
    written = [f"{name}/" if name == "maps" else name for name in summary["files"]]
    print(f"outputs in {out}: {', '.join(written)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``predict`` to the ``avsal`` parser."""
    p = command(
        sub,
        "predict",
        "saliency maps of a video (maps.npz; with --overlay an overlay video and contact sheet)",
        cmd_predict,
        stops_cleanly=True,
    )
    p.add_argument("video", nargs="?", help="video file (any container/codec FFmpeg reads)")
    p.add_argument("--sample", action="store_true", help="generate and predict the synthetic sample clip")
    add_out(p, "output directory", default="out/predict")
    add_engine_options(p)
    add_predict_options(p)
    add_output_options(p, old_negatives=True)
    p.add_argument(
        "--map-size",
        default="model",
        choices=["model", "source"],
        help="store maps.npz at the model's size (default: what the network computed, ~100x smaller "
        "at 720p; load_maps returns the video's size) or upsampled to the video's",
    )
    add_quiet_alias(p)
