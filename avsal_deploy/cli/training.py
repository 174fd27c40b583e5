"""``avsal train``, ``avsal eval`` and ``avsal synthetic``: parse, call the library, report.

Progress bars (tqdm) and tables are drawn here only; the library reports through callbacks. Under
``torchrun`` only rank 0 draws.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from avsal_deploy import interrupt
from avsal_deploy.cli.grammar import (
    add_engine_options,
    add_json,
    add_out,
    add_predict_options,
    add_quiet_alias,
    alias,
    command,
    deprecation,
    engine_choice,
    list_alias,
    predict_options,
)
from avsal_deploy.config import parse_overrides
from avsal_deploy.errors import ConfigError
from avsal_deploy.metrics import METRIC_NAMES


def set_threads(args: argparse.Namespace) -> None:
    """``--threads N``: torch intra-op threads (1 is fastest when other jobs share the cores)."""
    if getattr(args, "threads", None):
        if args.threads < 1:
            raise ConfigError(f"--threads {args.threads}: must be >= 1")
        import torch

        torch.set_num_threads(args.threads)


def fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def format_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    ]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append(
            "  ".join(
                str(c).ljust(w) if i == 0 else str(c).rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------- train
class TrainBars:
    """tqdm bars driven by :class:`~avsal_deploy.training.trainer.TrainEvent` values."""

    def __init__(self) -> None:
        self.bar: Any = None

    def __call__(self, event: Any) -> None:
        from tqdm import tqdm

        if event.kind == "stage":
            budget = f", at most {event.values['max_steps']} steps" if event.values.get("max_steps") else ""
            tqdm.write(f"stage {event.stage}: from epoch {event.done} of {event.total}{budget}")
        elif event.kind == "epoch":
            self.close()
            self.bar = tqdm(
                total=event.total,
                initial=event.done,
                desc=f"{event.stage} epoch {event.epoch + 1}",
                unit="step",
            )
        elif event.kind == "step" and self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{event.values['loss']:.4f}", lr=f"{event.values['lr']:.2e}")
        elif event.kind == "val":
            self.close()
            shown = {k: v for k, v in event.values.items() if isinstance(v, float)}
            tqdm.write(
                f"  validation after epoch {event.epoch}: "
                + "  ".join(f"{k} {fmt(v)}" for k, v in shown.items())
            )
        elif event.kind == "end":
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def cmd_train(args: argparse.Namespace) -> int:
    from avsal_deploy.training.recipe import load_recipe
    from avsal_deploy.training.trainer import Trainer

    set_threads(args)
    recipe = load_recipe(args.config, parse_overrides(args.set))
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    main_rank = int(os.environ.get("RANK", "0")) == 0
    bars = TrainBars() if main_rank and not args.quiet else None
    result = Trainer(recipe, out, resume=args.resume, device=args.device, progress=bars).fit()
    if main_rank:
        best = "" if result.best_metric is None else f", best {result.monitor} {fmt(result.best_metric)}"
        print(
            f"{result.stopped}: {result.steps} steps, {result.epochs} epochs in {result.seconds:.0f} s{best}\n"
            f"  weights: {result.last_checkpoint}"
            + (f"\n  best:    {result.best_checkpoint}" if result.best_checkpoint else "")
            + f"\n  log:     {out / 'metrics.jsonl'}"
        )
    if result.stopped == "interrupted":  # resumable: `avsal train ... --resume`
        raise interrupt.Interrupted(interrupt.describe())
    return 0


# --------------------------------------------------------------------------------- eval
def _metric_rows(
    rows: dict[str, dict[str, Any]], metrics: Sequence[str], extra: str | None = None
) -> list[list[str]]:
    out = []
    for name, values in rows.items():
        row = [name]
        if extra is not None:
            row.append(str(values.get(extra) or "-"))
        row += [fmt(values[m]) for m in metrics]
        out.append(row)
    return out


def cmd_eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from avsal_deploy.training.evaluate import DEFAULT_METRICS, evaluate_checkpoint

    set_threads(args)
    choice = engine_choice(args)
    metrics = tuple(args.metric) if args.metric else DEFAULT_METRICS
    bar = tqdm(desc="videos", unit="video", disable=args.quiet, file=sys.stderr)

    def progress(done: int, total: int, name: str) -> None:
        bar.total = total
        bar.update(1)
        bar.set_postfix_str(name)

    try:
        ev = evaluate_checkpoint(
            args.evaluated,
            args.dataset_root,
            args.dataset,
            args.split,
            fold=args.fold,
            options=predict_options(args),
            audio=args.audio,
            metrics=metrics,
            device=args.device,
            progress=progress,
            engine=choice,
            noise=args.noise,
        )
    finally:
        bar.close()
    report = ev.to_dict()
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
        os.replace(tmp, out)
    if args.json:
        print(json.dumps(report, indent=2, allow_nan=True))
        return 0
    print(
        f"{ev.checkpoint}: {ev.variant} ({ev.profile}) on {ev.engine}, {ev.steps} DDIM step(s), "
        f"noise {ev.noise}, audio {ev.audio}, "
        f"{ev.dataset} {ev.split}, stride {ev.stride}"
    )
    print("\nper video")
    print(
        format_table(_metric_rows(report["videos"], metrics, "condition"), ["video", "condition", *metrics])
    )
    if report["conditions"]:
        print("\nper condition (mean over videos)")
        print(format_table(_metric_rows(report["conditions"], metrics), ["condition", *metrics]))
    print("\ndata set (mean over videos)")
    print(format_table(_metric_rows({ev.dataset: report["dataset"]}, metrics), ["data set", *metrics]))
    if args.out:
        print(f"\nwrote {args.out}")
    return 0


# --------------------------------------------------------------------------------- synthetic
def cmd_synthetic(args: argparse.Namespace) -> int:
    from avsal_deploy.data.synthetic import SceneOptions, generate

    def numbers(text: str | None, kind: type) -> tuple | None:
        return None if text is None else tuple(kind(v) for v in text.split(","))

    options: dict[str, Any] = {}
    out = args.out or args.legacy_out
    if out is None:
        raise ConfigError("avsal synthetic: --out DIR is required (the data root to write)")
    if args.legacy_out is not None:
        deprecation("avsal synthetic OUT", "avsal synthetic --out OUT")
    for key, value in (
        ("objects", numbers(args.objects, int)),
        ("audio_lag_ms", numbers(args.audio_lag_ms, float)),
        ("rhythm_grid_hz", tuple(args.rate) if args.rate else None),
        ("rhythm_jitter_hz", args.rate_jitter),
        ("shapes", tuple(args.shape) if args.shape else None),
        ("hues", args.hues),
    ):
        if value is not None:
            options[key] = value
    root = generate(
        out,
        args.videos,
        profile=args.profile,
        seed=args.seed,
        n_frames=args.frames,
        audio_rate=args.audio_rate,
        options=SceneOptions(**options),
        train_per_condition=args.train_per_condition,
        test_per_condition=args.test_per_condition,
    )
    print(f"wrote {root} (synthetic set, conditions.json, annotations/synthetic/generator.json)")
    return 0


# --------------------------------------------------------------------------------- register
def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``train``, ``eval`` and ``synthetic`` to the ``avsal`` parser."""
    p = command(
        sub,
        "train",
        "train a model from a recipe (resumable; DDP under torchrun)",
        cmd_train,
        description="Train from a TOML recipe. Multi-GPU / multi-node: "
        "torchrun --nproc_per_node N -m avsal_deploy.cli train RECIPE ...",
        stops_cleanly=True,
    )
    p.add_argument("config", help="TOML recipe (see training/*.toml)")
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.FIELD=VALUE",
        help="override a recipe value, e.g. --set train.lr=3e-4 --set data.root=DIR (repeatable)",
    )
    add_out(p, "output folder (default: runs/<recipe name>)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoints/last.safetensors")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when available)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch CPU threads per process (default: torch's)",
    )

    p = command(
        sub,
        "eval",
        "score a checkpoint on a data set with the MIT metrics",
        cmd_eval,
        description="Score CHECKPOINT on a split of the data set under DATASET_ROOT with the MIT "
        "saliency metrics: per video, per condition and over the data set (mean over videos).",
    )
    p.add_argument("evaluated", metavar="CHECKPOINT", help="an avsal .safetensors checkpoint")
    p.add_argument("dataset_root", help="data set root (STAViS layout or DHF1K)")
    p.add_argument("--dataset", default="synthetic", metavar="NAME", help="set name under the root")
    alias(p, "--name", "dataset")
    p.add_argument("--split", default="test", help="split list to score")
    p.add_argument("--fold", type=int, default=1, metavar="N", help="STAViS fold")
    add_engine_options(p, checkpoint=False)
    add_predict_options(
        p, stride_help="score every K-th frame (default: the config's window stride, 1 = every frame)"
    )
    p.add_argument(
        "--audio",
        choices=("real", "silent"),
        default=None,
        help="the audio the model hears (default: as trained)",
    )
    p.add_argument(
        "--metric",
        action="append",
        default=None,
        choices=list(METRIC_NAMES),
        help=f"a metric to report (repeatable; default: {' '.join(METRIC_NAMES)})",
    )
    list_alias(p, "--metrics", "metric")
    p.add_argument("--device", default="cpu", help="torch device of the checkpoint (and of --engine torch)")
    p.add_argument(
        "--noise",
        default="per-video",
        choices=("per-video", "per-window"),
        help="sampling noise: one x_T per video as deployed (default), or fresh per window (--engine torch only)",
    )
    add_out(p, "also write the per-video / per-condition / data-set report here (JSON)")
    add_json(p, "the report")
    p.add_argument(
        "--threads", type=int, default=None, metavar="N", help="torch CPU threads (default: torch's)"
    )
    add_quiet_alias(p)

    p = command(
        sub,
        "synthetic",
        "write the synthetic audio-visual saliency benchmark (STAViS layout)",
        cmd_synthetic,
        description="avsal_deploy.data.synthetic.generate with the task's options (SceneOptions).",
    )
    add_out(p, "output data root (required)")
    p.add_argument("legacy_out", nargs="?", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--videos",
        type=int,
        default=0,
        metavar="N",
        help="number of videos (cycling the conditions, ~2/3 train)",
    )
    p.add_argument(
        "--train-per-condition", type=int, default=None, metavar="N", help="exact train videos per condition"
    )
    p.add_argument(
        "--test-per-condition", type=int, default=None, metavar="N", help="exact test videos per condition"
    )
    p.add_argument("--profile", default="tiny", metavar="PROFILE", help="frame size of this profile")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the generator")
    p.add_argument(
        "--frames", type=int, default=None, metavar="N", help="frames per video (default: 6 clip lengths)"
    )
    p.add_argument("--audio-rate", type=int, default=22050, metavar="HZ", help="audio sample rate (Hz)")
    p.add_argument(
        "--objects", default=None, metavar="MIN,MAX", help="objects per video, a range (2-4; default: 2,3)"
    )
    p.add_argument(
        "--audio-lag-ms",
        default=None,
        metavar="MIN,MAX",
        help="lag of the sound behind the picture, a range in ms (default: 0,0)",
    )
    p.add_argument(
        "--rate",
        action="append",
        type=float,
        default=None,
        metavar="HZ",
        help="a pulse rate of the grid, Hz (repeatable; default: 2 3 4 5 6)",
    )
    list_alias(p, "--rates", "rate", kind=float)
    p.add_argument(
        "--rate-jitter", type=float, default=None, metavar="HZ", help="pulse-rate jitter (Hz, default 0.15)"
    )
    p.add_argument(
        "--shape", action="append", default=None, help="a shape to draw from (repeatable; default: all)"
    )
    list_alias(p, "--shapes", "shape")
    p.add_argument(
        "--hues", choices=("spread", "random"), default=None, help="how hues are chosen (default: spread)"
    )


__all__ = ["register"]
