"""``avsal score``: batch scoring from the command line (parse, call :func:`score`, report).

Exit code 0 when every video is done or skipped, 1 when some failed (listed at the end), 2 for
bad usage (any :class:`~avsal_deploy.errors.AvsalError` before the run), 130 when SIGINT or SIGTERM
stopped it (:mod:`avsal_deploy.interrupt`): finished videos are kept, the ones in flight are
discarded and redone by the next run.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from avsal_deploy.scoring.core import GT_METRICS
from avsal_deploy.scoring.engines import SCORING_ENGINES


def cmd_score(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from avsal_deploy.errors import AvsalError
    from avsal_deploy.scoring.core import GroundTruth, VideoResult, score

    gt = None
    if args.gt:
        if not args.dataset:
            raise AvsalError("--gt ROOT needs --dataset NAME (e.g. synthetic, DIEM, DHF1K)")
        metrics = tuple(args.metrics.split(",")) if args.metrics else GT_METRICS
        gt = GroundTruth(args.gt, args.dataset, args.split, args.fold, metrics)
    elif args.dataset:
        raise AvsalError("--dataset is used with --gt ROOT")
    bar: Any = None
    counts = {"frames": 0, "failed": 0}
    t0 = time.perf_counter()

    def progress(done: int, total: int, result: VideoResult | None) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, unit="video", desc="score", disable=args.quiet, file=sys.stderr)
            return
        bar.update(1)
        if result is not None and result.status == "done":
            counts["frames"] += result.frames
        counts["failed"] += result is not None and result.status == "failed"
        rate = counts["frames"] / max(time.perf_counter() - t0, 1e-9)
        bar.set_postfix(frames=counts["frames"], fps=f"{rate:.1f}", failed=counts["failed"])

    results: list[VideoResult] = []
    try:
        for result in score(
            args.inputs,
            args.out,
            engine=args.engine,
            checkpoint=args.checkpoint,
            export_dir=args.export_dir,
            urls=args.url or (),
            jobs=args.jobs,
            steps=args.steps,
            stride=args.stride,
            seed=args.seed,
            batch_size=args.batch_size,
            overlay=args.overlay,
            pngs=args.png,
            gt=gt,
            ray_address=args.ray,
            progress=progress,
        ):
            results.append(result)
            if result.status == "failed" and bar is not None:
                bar.write(f"failed: {result.error}")
    finally:
        if bar is not None:
            bar.close()
    done = sum(r.status == "done" for r in results)
    skipped = sum(r.status == "skipped" for r in results)
    failed = [r for r in results if r.status == "failed"]
    seconds = time.perf_counter() - t0
    frames = sum(r.frames for r in results if r.status == "done")
    print(
        f"{len(results)} videos: {done} done, {skipped} skipped, {len(failed)} failed; "
        f"{frames} frames in {seconds:.1f} s ({frames / max(seconds, 1e-9):.1f} frames/s)"
    )
    if gt is not None:
        import json
        from pathlib import Path

        mean = json.loads((Path(args.out) / "summary.json").read_text())["gt"]["mean"]
        print(
            f"{gt.dataset} {gt.split} (mean over videos): "
            + "  ".join(f"{k} {v:.3f}" for k, v in mean.items())
        )
    print(f"summary: {args.out}/summary.json, {args.out}/summary.csv")
    if failed:
        print(f"\n{len(failed)} failed:")
        for r in failed:
            print(f"  {r.error}")
        return 1
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``score`` to the ``avsal`` parser."""
    p = sub.add_parser(
        "score",
        help="score many videos (resumable; threads, Triton servers or a Ray cluster)",
        description="Predict saliency maps for every video of INPUTS into OUT/<relative path>/ "
        "(the outputs of `avsal predict`), skipping videos a previous run finished.",
    )
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="video files, directories (searched recursively) or .txt/.lst files listing paths; "
        "none with --gt: the data set's own videos",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--engine", default="onnxruntime", choices=SCORING_ENGINES)
    p.add_argument("--checkpoint", default=None, help="avsal checkpoint (default: the shipped synthetic one)")
    p.add_argument("--export-dir", default=None, help="use this `avsal export` directory")
    p.add_argument(
        "--url",
        action="append",
        default=None,
        metavar="URL",
        help="a Triton server for --engine triton (host:port); repeat it to spread the work over servers",
    )
    p.add_argument("--jobs", type=int, default=1, help="videos in flight (threads, or Ray actors with --ray)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (0 = one-shot map on hybrid)")
    p.add_argument("--stride", type=int, default=None, help="predict every K-th frame, reuse in between")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise x_T (one per video)")
    p.add_argument("--batch-size", type=int, default=1, help="windows per engine call")
    p.add_argument("--overlay", action="store_true", help="also write overlay.mp4 and contact_sheet.png")
    p.add_argument("--png", action="store_true", help="also write the per-frame PNG maps")
    p.add_argument("--gt", default=None, metavar="ROOT", help="score against this data set's ground truth")
    p.add_argument("--dataset", default=None, help="set name under --gt ROOT (synthetic, DIEM, DHF1K, ...)")
    p.add_argument("--split", default="test", help="split of the data set (default: test)")
    p.add_argument("--fold", type=int, default=1, help="STAViS fold (default: 1)")
    p.add_argument("--metrics", default=None, help=f"comma-separated subset of {','.join(GT_METRICS)}")
    p.add_argument("--ray", default=None, metavar="ADDRESS", help="run on this Ray cluster (auto, host:port)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_score, stops_cleanly=True)


__all__ = ["register"]
