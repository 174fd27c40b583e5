"""``avsal bench``: the benchmark report (see :mod:`avsal_deploy.bench.report`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from avsal_deploy.cli.grammar import add_out, alias, command
from avsal_deploy.config import PROFILES
from avsal_deploy.errors import AvsalError


def cmd_bench(args: argparse.Namespace) -> int:
    from avsal_deploy.bench import report as rep

    if args.out is None:
        raise AvsalError("avsal bench: --out DIR is required (where the report goes)")
    out = Path(args.out)
    if args.from_json:
        raws = [Path(p) for p in args.from_json]
        for raw in raws:
            if not raw.exists():
                raise AvsalError(f"{raw}: no such pytest-benchmark JSON")
    else:
        suites = Path(args.suites) if args.suites else rep.default_suites_dir()
        if suites is None or not (suites / "conftest.py").exists():
            raise AvsalError(
                f"{suites or 'benchmarks/'}: the benchmark suites are not here; `avsal bench` runs the "
                "repository's benchmarks/ (give --suites DIR in a source checkout)"
            )
        profiles = args.profile or (["tiny", "small"] if args.quick else ["tiny", "small", "paper"])
        if not args.quiet:
            print(
                f"running the benchmark suites ({', '.join(profiles)}{', quick' if args.quick else ''}) ..."
            )
        raws = [rep.run_suites(out, profiles, args.quick, suites, args.suite or rep.SUITES)]
    node_profiles = None
    if not args.no_node_profile:
        data = rep.merge_raw(raws)
        # the engine suites' profiles (the model-zoo suite's sizes are not profiled per node)
        infos = [b.get("extra_info") or {} for b in data.get("benchmarks", [])]
        profiles_run = {i.get("profile") for i in infos if i.get("metric") != "zoo"}
        largest = rep.largest_profile(p for p in profiles_run if p)
        if largest:
            if not args.quiet:
                print(f"profiling the {largest} components per ONNX node ...")
            node_profiles = rep.profile_nodes(largest)
    report = rep.build_report(raws, out, node_profiles)
    _print_summary(report, out)
    return 0


def _print_summary(report: dict[str, Any], out: Path) -> None:
    for t in report["targets"]:
        met = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        value = "–" if t["value"] is None else f"{t['value']:.3g}"
        print(f"  {t['key']:<24} {value:>8}  target {t['target']:<8} {met}")
    print(f"report: {out / 'report.md'} and {out / 'report.json'}")


def register(sub: Any) -> None:
    """Add ``bench`` to the ``avsal`` parser."""
    p = command(
        sub, "bench", "run the benchmark suites and write a report (json, markdown, plots)", cmd_bench
    )
    add_out(p, "where report.json, report.md and the plots go (required)")
    alias(p, "--report", "out")
    p.add_argument(
        "--quick", action="store_true", help="tiny and small profiles only (about 13 minutes on 2 cores)"
    )
    p.add_argument(
        "--profile",
        action="append",
        choices=PROFILES,
        help="an engine profile to run (repeatable; default: tiny small paper, tiny small with --quick)",
    )
    p.add_argument(
        "--suite",
        action="append",
        metavar="FILE",
        help="only this suite file (repeatable; default: every suite)",
    )
    p.add_argument(
        "--suites", default=None, metavar="DIR", help="the benchmarks/ directory (default: the checkout's)"
    )
    p.add_argument(
        "--from-json",
        action="append",
        default=None,
        metavar="FILE",
        help="rebuild the report from a pytest-benchmark JSON (repeatable; a case in a later file replaces an "
        "earlier one)",
    )
    p.add_argument("--no-node-profile", action="store_true", help="skip the per-node ONNX Runtime profile")
