"""``avsal experiment``: the research experiments of :mod:`avsal_deploy.research`.

The research code runs from a source checkout (an editable install); the wheel does not ship it,
so there the command stops with one line saying so (:data:`RESEARCH_HINT`, exit status 2).
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from avsal_deploy.cli.grammar import add_out, command, list_alias
from avsal_deploy.cli.training import TrainBars, format_table, set_threads
from avsal_deploy.config import parse_overrides
from avsal_deploy.errors import AvsalError, ConfigError

#: Why ``avsal experiment`` does not run from a wheel.
RESEARCH_HINT = (
    "`avsal experiment` runs the research code, which the installed package does not ship; it needs a "
    "source checkout (git clone the repository, then pip install -e .)"
)


def research(module: str) -> ModuleType:
    """``avsal_deploy.research.<module>``, or the one-line error of a wheel install."""
    try:
        return importlib.import_module(f"avsal_deploy.research.{module}")
    except ModuleNotFoundError as exc:
        if exc.name in ("avsal_deploy.research", f"avsal_deploy.research.{module}"):
            raise AvsalError(RESEARCH_HINT) from None
        raise


def cmd_audio_relevance(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    run_audio_relevance = research("experiment").run_audio_relevance
    set_threads(args)
    bars = TrainBars()

    def progress(message: str, event: Any = None) -> None:
        if event is None:
            bars.close()
            tqdm.write(message)
        else:
            bars(event)

    if (args.data is None) == (args.grid is None):
        raise ConfigError("experiment audio-relevance: give exactly one of --data DIR and --grid GRID.toml")
    if args.grid is not None and args.summary_only:
        summary = research("grid").summarise_grid(args.grid, args.out)
        print((Path(args.out) / "summary.md").read_text())
        return 0
    if args.grid is not None:
        summary = research("grid").run_grid(
            args.grid,
            args.out,
            recipe_path=args.recipe,
            overrides=parse_overrides(args.set),
            jobs=args.jobs,
            device=args.device,
            cells=args.cell,
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
    print(format_table(rows, ["condition", "model", "CC", "NSS"]))
    print("\nclaims:")
    for claim in results["claims"]:
        print(f"  [{'x' if claim['holds'] else ' '}] {claim['text']}")
    print(f"\nwrote {Path(args.out) / 'results.json'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``experiment`` to the ``avsal`` parser."""
    p = sub.add_parser(
        "experiment",
        help="reproducible research experiments (a source checkout)",
        description="Research experiments; they run from a source checkout (pip install -e .).",
    )
    exp = p.add_subparsers(dest="experiment", required=True)
    q = command(
        exp,
        "audio-relevance",
        "AV model vs its visual-only twin vs centre bias, per audio condition",
        cmd_audio_relevance,
        description="Train the audio-visual model and its visual-only twin (same architecture and budget, "
        "silence instead of audio) per seed on DIR's train split, score CC and NSS per condition on its "
        "test split, with a centre-bias baseline; writes OUT/results.json.",
    )
    q.add_argument(
        "--data", default=None, metavar="DIR", help="data root in the STAViS layout with set 'synthetic'"
    )
    q.add_argument(
        "--grid",
        default=None,
        metavar="FILE",
        help="a grid of task variants (TOML, see avsal_deploy.research.grid): generate each cell's data, "
        "run the experiment per cell, write OUT/<cell>/results.json and OUT/summary.{json,md,png}",
    )
    q.add_argument(
        "--cell",
        action="append",
        default=None,
        metavar="NAME",
        help="with --grid: only this cell (repeatable)",
    )
    list_alias(q, "--cells", "cell")
    q.add_argument(
        "--summary-only",
        action="store_true",
        help="with --grid: write the summary from the cells' existing results.json, run nothing",
    )
    q.add_argument(
        "--stride", type=int, default=None, metavar="K", help="score every K-th test frame (default: 1)"
    )
    q.add_argument("--no-control", action="store_true", help="skip the mismatched-soundtrack control")
    add_out(q, "output folder", required=True)
    q.add_argument("--seeds", type=int, default=3, metavar="N", help="number of seeds")
    q.add_argument("--quick", action="store_true", help="a few steps only (smoke test, not the claim)")
    q.add_argument(
        "--recipe",
        default=None,
        metavar="FILE",
        help="recipe (default: the built-in one, equal to training/audio_relevance.toml)",
    )
    q.add_argument(
        "--set", action="append", metavar="SECTION.FIELD=VALUE", help="override a recipe value (repeatable)"
    )
    q.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when available)")
    q.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="torch CPU threads, split between jobs (default: torch's)",
    )
    q.add_argument(
        "--jobs", type=int, default=1, metavar="N", help="train the models in N parallel processes"
    )


__all__ = ["RESEARCH_HINT", "register"]
