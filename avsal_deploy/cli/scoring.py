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

from avsal_deploy.cli.grammar import (
    EXIT_DONE,
    EXIT_SOME_FAILED,
    add_engine_options,
    add_out,
    add_output_options,
    add_predict_options,
    add_quiet_alias,
    command,
    engine_choice,
    list_alias,
    predict_options,
)
from avsal_deploy.metrics import VIDEO_METRICS as GT_METRICS


def cmd_score(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from avsal_deploy.errors import AvsalError
    from avsal_deploy.scoring.core import GroundTruth, VideoResult, score

    gt = None
    if args.gt:
        if not args.dataset:
            raise AvsalError("--gt ROOT needs --dataset NAME (e.g. synthetic, DIEM, DHF1K)")
        metrics = tuple(args.metric) if args.metric else GT_METRICS
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
            engine=engine_choice(args),
            urls=args.url if args.url and len(args.url) > 1 else (),
            jobs=args.jobs,
            options=predict_options(args),
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
        return EXIT_SOME_FAILED
    return EXIT_DONE


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``score`` to the ``avsal`` parser."""
    p = command(
        sub,
        "score",
        "score many videos (resumable; threads, Triton servers or a Ray cluster)",
        cmd_score,
        description="Predict saliency maps for every video of INPUTS into OUT/<relative path>/ "
        "(the outputs of `avsal predict`), skipping videos a previous run finished.",
        stops_cleanly=True,
    )
    p.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="video files, directories (searched recursively) or .txt/.lst files listing paths; "
        "none with --gt: the data set's own videos",
    )
    add_out(p, "output directory", required=True)
    add_engine_options(p, urls=True)
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="videos in flight (threads, or Ray actors with --ray)",
    )
    add_predict_options(p)
    add_output_options(p)
    p.add_argument("--gt", default=None, metavar="ROOT", help="score against this data set's ground truth")
    p.add_argument(
        "--dataset",
        default=None,
        metavar="NAME",
        help="set name under --gt ROOT (synthetic, DIEM, DHF1K, ...)",
    )
    p.add_argument("--split", default="test", help="split of the data set")
    p.add_argument("--fold", type=int, default=1, metavar="N", help="STAViS fold")
    p.add_argument(
        "--metric",
        action="append",
        default=None,
        choices=list(GT_METRICS),
        help=f"a metric to report (repeatable; default: {' '.join(GT_METRICS)})",
    )
    list_alias(p, "--metrics", "metric")
    p.add_argument("--ray", default=None, metavar="ADDRESS", help="run on this Ray cluster (auto, host:port)")
    add_quiet_alias(p)


__all__ = ["register"]
