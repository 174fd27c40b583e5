"""``avsal train``, ``avsal eval`` and ``avsal experiment``: parse, call the library, report.

Registered on the top-level parser by :mod:`avsal_deploy.cli`. Progress bars (tqdm) and tables are
drawn here only; the library reports through callbacks. Under ``torchrun`` only rank 0 draws.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from avsal_deploy import interrupt
from avsal_deploy.config import parse_overrides
from avsal_deploy.errors import ConfigError


def _set_threads(args: argparse.Namespace) -> None:
    """``--threads N``: torch intra-op threads (1 is fastest when other jobs share the cores)."""
    if getattr(args, "threads", None):
        if args.threads < 1:
            raise ConfigError(f"--threads {args.threads}: must be >= 1")
        import torch

        torch.set_num_threads(args.threads)


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _table(rows: list[list[str]], header: list[str]) -> str:
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
class _TrainBars:
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
                + "  ".join(f"{k} {_fmt(v)}" for k, v in shown.items())
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

    _set_threads(args)
    recipe = load_recipe(args.config, parse_overrides(args.set))
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    main_rank = int(os.environ.get("RANK", "0")) == 0
    bars = _TrainBars() if main_rank else None
    result = Trainer(recipe, out, resume=args.resume, device=args.device, progress=bars).fit()
    if main_rank:
        best = "" if result.best_metric is None else f", best {result.monitor} {_fmt(result.best_metric)}"
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
        row += [_fmt(values[m]) for m in metrics]
        out.append(row)
    return out


def cmd_eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from avsal_deploy.training.evaluate import DEFAULT_METRICS, evaluate_checkpoint

    _set_threads(args)
    metrics = tuple(args.metrics.split(",")) if args.metrics else DEFAULT_METRICS
    bar = tqdm(desc="videos", unit="video", disable=args.quiet)

    def progress(done: int, total: int, name: str) -> None:
        bar.total = total
        bar.update(1)
        bar.set_postfix_str(name)

    try:
        ev = evaluate_checkpoint(
            args.checkpoint,
            args.dataset_root,
            args.name,
            args.split,
            fold=args.fold,
            steps=args.steps,
            stride=args.stride,
            audio=args.audio,
            metrics=metrics,
            batch_size=args.batch_size,
            seed=args.seed,
            device=args.device,
            progress=progress,
            engine=args.engine,
            noise=args.noise,
            export_dir=args.export_dir,
            triton_url=args.triton_url,
        )
    finally:
        bar.close()
    report = ev.to_dict()
    print(
        f"{ev.checkpoint}: {ev.variant} ({ev.profile}) on {ev.engine}, {ev.steps} DDIM step(s), "
        f"noise {ev.noise}, audio {ev.audio}, "
        f"{ev.dataset} {ev.split}, stride {ev.stride}"
    )
    print("\nper video")
    print(_table(_metric_rows(report["videos"], metrics, "condition"), ["video", "condition", *metrics]))
    if report["conditions"]:
        print("\nper condition (mean over videos)")
        print(_table(_metric_rows(report["conditions"], metrics), ["condition", *metrics]))
    print("\ndata set (mean over videos)")
    print(_table(_metric_rows({ev.dataset: report["dataset"]}, metrics), ["data set", *metrics]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
        print(f"\nwrote {args.json}")
    return 0


# --------------------------------------------------------------------------------- experiment
def cmd_audio_relevance(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from avsal_deploy.training.experiment import run_audio_relevance

    _set_threads(args)
    bars = _TrainBars()

    def progress(message: str, event: Any = None) -> None:
        if event is None:
            bars.close()
            tqdm.write(message)
        else:
            bars(event)

    if (args.data is None) == (args.grid is None):
        raise ConfigError("experiment audio-relevance: give exactly one of --data DIR and --grid GRID.toml")
    if args.grid is not None and args.summary_only:
        from avsal_deploy.training.grid import summarise_grid

        summary = summarise_grid(args.grid, args.out)
        print((Path(args.out) / "summary.md").read_text())
        return 0
    if args.grid is not None:
        from avsal_deploy.training.grid import run_grid

        summary = run_grid(
            args.grid,
            args.out,
            recipe_path=args.recipe,
            overrides=parse_overrides(args.set),
            jobs=args.jobs,
            device=args.device,
            cells=args.cells.split(",") if args.cells else None,
            progress=lambda m: progress(m),
            experiment_progress=progress,
        )
        bars.close()
        print((Path(args.out) / "summary.md").read_text())
        print(
            f"wrote {Path(args.out) / 'summary.json'} ({'all' if summary['all_hold'] else 'not all'} criteria hold)"
        )
        return 0
    results = run_audio_relevance(
        args.data,
        args.out,
        seeds=args.seeds,
        quick=args.quick,
        recipe_path=args.recipe,
        overrides=parse_overrides(args.set),
        device=args.device,
        jobs=args.jobs,
        progress=progress,
        stride=args.stride,
        control=not args.no_control,
    )
    bars.close()
    models = results["models"]
    rows = []
    for cond, by_model in results["conditions"].items():
        for key in models:
            m = by_model[key]
            rows.append(
                [
                    cond,
                    key,
                    f"{m['cc']['mean']:.3f} ± {m['cc']['std']:.3f}",
                    f"{m['nss']['mean']:.3f} ± {m['nss']['std']:.3f}",
                ]
            )
        for ref in ("visual_ceiling", "oracle"):
            if ref in results.get("references", {}):
                r = results["references"][ref][cond]
                rows.append([cond, ref, f"{r['cc']:.3f}", f"{r['nss']:.3f}"])
    print(f"\naudio-relevance, {len(results['seeds'])} seed(s), {results['variant']} (mean ± std over seeds)")
    print(_table(rows, ["condition", "model", "CC", "NSS"]))
    print("\nclaims:")
    for claim in results["claims"]:
        print(f"  [{'x' if claim['holds'] else ' '}] {claim['text']}")
    print(f"\nwrote {Path(args.out) / 'results.json'}")
    return 0


# --------------------------------------------------------------------------------- synthetic
def cmd_synthetic(args: argparse.Namespace) -> int:
    from avsal_deploy.data.synthetic import SceneOptions, generate

    def numbers(text: str | None, kind: type) -> tuple | None:
        return None if text is None else tuple(kind(v) for v in text.split(","))

    options: dict[str, Any] = {}
    for key, value in (
        ("objects", numbers(args.objects, int)),
        ("audio_lag_ms", numbers(args.audio_lag_ms, float)),
        ("rhythm_grid_hz", numbers(args.rates, float)),
        ("rhythm_jitter_hz", args.rate_jitter),
        ("shapes", numbers(args.shapes, str)),
        ("hues", args.hues),
    ):
        if value is not None:
            options[key] = value
    root = generate(
        args.out,
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
    """Add ``train``, ``eval`` and ``experiment`` to the ``avsal`` parser."""
    p = sub.add_parser(
        "train",
        help="train a model from a recipe (resumable; DDP under torchrun)",
        description="Train from a TOML recipe. Multi-GPU / multi-node: "
        "torchrun --nproc_per_node N -m avsal_deploy.cli train RECIPE ...",
    )
    p.add_argument("config", help="TOML recipe (see training/*.toml)")
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.FIELD=VALUE",
        help="override a recipe value, e.g. --set train.lr=3e-4 --set data.root=DIR (repeatable)",
    )
    p.add_argument("--out", help="output folder (default: runs/<recipe name>)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoints/last.safetensors")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.set_defaults(handler=cmd_train, stops_cleanly=True)

    p = sub.add_parser("eval", help="score a checkpoint on a data set with the MIT metrics")
    p.add_argument("checkpoint", help="an avsal .safetensors checkpoint")
    p.add_argument("dataset_root", help="data set root (STAViS layout or DHF1K)")
    p.add_argument("--name", default="synthetic", help="set name under the root (default: synthetic)")
    p.add_argument("--split", default="test", help="split list to score (default: test)")
    p.add_argument("--fold", type=int, default=1, help="STAViS fold (default: 1)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the checkpoint's config)")
    p.add_argument("--stride", type=int, default=1, help="score every k-th frame (default: 1 = all)")
    p.add_argument("--audio", choices=("real", "silent"), default=None, help="default: as trained")
    p.add_argument("--metrics", default=None, help="comma-separated subset of cc,nss,kld,sim,auc_j,sauc")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="seed of the DDIM noise")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--engine",
        default="torch",
        choices=("torch", "onnxruntime", "tensorrt", "triton"),
        help="engine running the networks (default: torch, the checkpoint in process)",
    )
    p.add_argument(
        "--noise",
        default="per-video",
        choices=("per-video", "per-window"),
        help="sampling noise: one x_T per video as deployed (default), or fresh per window (torch only)",
    )
    p.add_argument("--export-dir", default=None, help="`avsal export` directory for onnxruntime/tensorrt")
    p.add_argument("--triton-url", default=None, help="Triton server for --engine triton (host:port)")
    p.add_argument("--json", help="write the per-video / per-condition / data-set report here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(handler=cmd_eval)

    p = sub.add_parser("experiment", help="reproducible experiments")
    exp = p.add_subparsers(dest="experiment", required=True)
    q = exp.add_parser(
        "audio-relevance",
        help="AV model vs its visual-only twin vs centre bias, per audio condition",
        description="Train the audio-visual model and its visual-only twin (same architecture and budget, "
        "silence instead of audio) per seed on DIR's train split, score CC and NSS per condition on its "
        "test split, with a centre-bias baseline; writes OUT/results.json.",
    )
    q.add_argument("--data", default=None, help="data root in the STAViS layout with set 'synthetic'")
    q.add_argument(
        "--grid",
        default=None,
        help="a grid of task variants (TOML, see avsal_deploy.training.grid): generate each cell's data, "
        "run the experiment per cell, write OUT/<cell>/results.json and OUT/summary.{json,md,png}",
    )
    q.add_argument("--cells", default=None, help="with --grid: only these cells (comma-separated names)")
    q.add_argument(
        "--summary-only",
        action="store_true",
        help="with --grid: write the summary from the cells' existing results.json, run nothing",
    )
    q.add_argument("--stride", type=int, default=None, help="score every k-th test frame (default 1)")
    q.add_argument("--no-control", action="store_true", help="skip the mismatched-soundtrack control")
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("--seeds", type=int, default=3, help="number of seeds (default 3)")
    q.add_argument("--quick", action="store_true", help="a few steps only (smoke test, not the claim)")
    q.add_argument(
        "--recipe",
        default=None,
        help="recipe (default: the built-in one, equal to training/audio_relevance.toml)",
    )
    q.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="override a recipe value")
    q.add_argument("--device", default=None)
    q.add_argument("--threads", type=int, default=None, help="torch CPU threads (split between jobs)")
    q.add_argument("--jobs", type=int, default=1, help="train the models in N parallel processes")
    q.set_defaults(handler=cmd_audio_relevance)

    p = sub.add_parser(
        "synthetic",
        help="write the synthetic audio-visual saliency benchmark (STAViS layout)",
        description="avsal_deploy.data.synthetic.generate with the task's options (SceneOptions).",
    )
    p.add_argument("out", help="output data root")
    p.add_argument(
        "--videos", type=int, default=0, help="number of videos (cycling the conditions, ~2/3 train)"
    )
    p.add_argument("--train-per-condition", type=int, default=None, help="exact train videos per condition")
    p.add_argument("--test-per-condition", type=int, default=None, help="exact test videos per condition")
    p.add_argument("--profile", default="tiny", help="frame size of this profile (default tiny)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=None, help="frames per video (default 6 clip lengths)")
    p.add_argument("--audio-rate", type=int, default=22050, help="audio sample rate (Hz)")
    p.add_argument("--objects", default=None, help="MIN,MAX objects per video (2-4; default 2,3)")
    p.add_argument("--audio-lag-ms", default=None, help="MIN,MAX lag of the sound behind the picture (ms)")
    p.add_argument("--rates", default=None, help="pulse-rate grid in Hz, comma-separated (default 2,3,4,5,6)")
    p.add_argument("--rate-jitter", type=float, default=None, help="pulse-rate jitter (Hz, default 0.15)")
    p.add_argument("--shapes", default=None, help="shapes to draw from, comma-separated")
    p.add_argument("--hues", choices=("spread", "random"), default=None)
    p.set_defaults(handler=cmd_synthetic)


__all__ = ["register"]
