"""The model zoo's measured cost: what ``benchmarks/test_model_zoo.py`` times, the table the
report derives from it, the results file behind ``avsal models``' seconds per frame, and the
generated block of ``docs/models/index.md``.

The suite times one window per output frame (stride 1, the family's default DDIM steps) of every
family at its deployed size, randomly initialised (the cost is the architecture's), through ONNX
Runtime and torch eager at batch 1 and 8: ours at the profiles the report runs, the official ones
at their input mode (224 x 384). ``avsal bench`` writes the derived results file
``DIR/model_zoo_costs.json`` beside the report; then::

    python -m avsal_deploy.bench.zoo install DIR/model_zoo_costs.json   # into the package + docs page
    python -m avsal_deploy.bench.zoo docs            # rewrite the page's block from the packaged file
    python -m avsal_deploy.bench.zoo docs --check    # exit 1 if the block is not current

The quick form (``avsal bench --quick``) runs batch 1 only and the official families at 64 x 96
frames (AViNet, whose fusion takes 224 x 384 only, not at all): a smoke run whose results file
says ``"quick": true`` and is never installed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avsal_deploy.config import FAMILIES, PROFILES, Config, family_config, load_config
from avsal_deploy.errors import AvsalError, ConfigError
from avsal_deploy.models import costs as packaged
from avsal_deploy.models.costs import FORMAT, SPEEDS, cost_key, find_row, machine_line, read_costs

#: Timed rounds after warm-up rounds, per case (a paper-size window takes seconds on 2 cores).
ROUNDS, WARMUP = 3, 1
BATCHES = (1, 8)
#: Torch eager at batch 8 runs only where its rounds are estimated to take at most this long.
TORCH_B8_BUDGET_S = 120.0
#: The official families' sizes in the quick run, ones their networks take (None: not in the quick run).
QUICK_OFFICIAL: dict[str, dict[str, Any] | None] = {
    "diffsal-official": {
        "video.height": 64,
        "video.width": 96,
        "audio.vggish_slice_height": 32,
        "audio.vggish_slice_width": 48,
    },
    "diffsal-official-visual": {"video.height": 64, "video.width": 96},
    "vinet": {"video.height": 64, "video.width": 96},
    "avinet": None,  # the official bilinear fusion takes 224 x 384 only
    "vinet-s": {"video.height": 64, "video.width": 96},
    "tased": {"video.height": 64, "video.width": 96},
}
PAGE_BEGIN = "<!-- BEGIN GENERATED: per-frame cost of every family."
PAGE_END = "<!-- END GENERATED -->"
_BLOCK = re.compile(re.escape(PAGE_BEGIN) + r".*?" + re.escape(PAGE_END), re.DOTALL)


@dataclass(frozen=True)
class ZooEntry:
    """One family at one size, as the suite times it."""

    family: str
    profile: str | None  # ours: the profile; an official family: None (its input mode)
    config: Config
    reduced: bool = False  # an official family below its input mode's size (the quick run)

    @property
    def id(self) -> str:
        return f"{self.family}-{self.profile or 'official'}" + ("-reduced" if self.reduced else "")

    @property
    def input(self) -> str:
        """Frames per window x height x width."""
        return "x".join(str(d) for d in self.config.frames_shape(self.family)[1:])

    def info(self) -> dict[str, Any]:
        """What a case records about its entry (the results file matches rows on the cost key)."""
        return {
            "family": self.family,
            "origin": FAMILIES[self.family].origin,
            "profile": self.profile,
            "input": self.input,
            "reduced": self.reduced,
            **cost_key(self.config, self.family),
        }


def bench_families() -> list[str]:
    """Families the suite runs: ``$AVSAL_BENCH_FAMILIES`` (comma-separated) or every one."""
    names = [f.strip() for f in os.environ.get("AVSAL_BENCH_FAMILIES", "").split(",") if f.strip()]
    bad = [f for f in names if f not in FAMILIES]
    if bad:
        raise ConfigError(
            f"AVSAL_BENCH_FAMILIES: unknown famil(ies) {bad}: choose from {', '.join(FAMILIES)}"
        )
    return names or list(FAMILIES)


def bench_batches() -> tuple[int, ...]:
    """Batches the suite runs: ``$AVSAL_BENCH_BATCHES`` (comma-separated, e.g. ``1``) or :data:`BATCHES`."""
    raw = [b.strip() for b in os.environ.get("AVSAL_BENCH_BATCHES", "").split(",") if b.strip()]
    if not raw:
        return BATCHES
    if not all(b.isdigit() and int(b) >= 1 for b in raw):
        raise ConfigError(f"AVSAL_BENCH_BATCHES: {','.join(raw)!r} is not a list of batch sizes (e.g. 1,8)")
    return tuple(int(b) for b in raw)


def zoo_entries(
    profiles: Sequence[str], quick: bool = False, families: Iterable[str] | None = None
) -> list[ZooEntry]:
    """Every family at its deployed size: ours at ``profiles``, the official ones at their input
    mode (quick: at :data:`QUICK_OFFICIAL`'s sizes, AViNet left out)."""
    wanted = list(families) if families is not None else list(FAMILIES)
    entries = []
    for name in wanted:
        fam = FAMILIES[name]
        if fam.origin == "avsal":
            entries += [ZooEntry(name, p, load_config(p)) for p in PROFILES if p in profiles]
        elif not quick:
            entries.append(ZooEntry(name, None, family_config(name)))
        elif QUICK_OFFICIAL.get(name) is not None:
            entries.append(ZooEntry(name, None, family_config(name, QUICK_OFFICIAL[name]), True))
    return entries


def torch_b8_estimate(seconds_b1: float) -> float:
    """Seconds torch eager's batch-8 case would take: warm-up and rounds of 8 windows each."""
    return (WARMUP + ROUNDS) * 8 * seconds_b1


# ----------------------------------------------------------------------------- the report's table
def _group_key(c: dict[str, Any]) -> tuple:
    return (c["family"], c.get("profile"), c.get("input"))


def _order(row: dict[str, Any]) -> tuple:
    families = list(FAMILIES)
    profiles = list(PROFILES)
    fam = families.index(row["family"]) if row["family"] in families else len(families)
    prof = profiles.index(row["profile"]) if row.get("profile") in profiles else -1
    return (fam, prof, row.get("input") or "")


def zoo_table(cases: list[dict[str, Any]], peak: float | None) -> list[dict[str, Any]]:
    """One row per family and size from the suite's cases (``metric == "zoo"``): seconds per
    output frame per engine and batch, GFLOP per window (GEMM-class, counted from the ONNX
    graphs) and ONNX Runtime's share of the measured GEMM limit."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for c in cases:
        if c.get("metric") == "zoo":
            groups.setdefault(_group_key(c), []).append(c)
    rows = []
    for group in groups.values():
        first = group[0]
        per = {f"{c['backend']}_b{c['batch']}": c for c in group}
        gflop = float(first["gflop_per_window"])
        row: dict[str, Any] = {
            "family": first["family"],
            "profile": first.get("profile"),
            "input": first.get("input"),
            "steps": first.get("steps"),
            "gflop_per_window": round(gflop, 3),
        }
        for speed in SPEEDS:
            c = per.get(speed)
            row[speed] = round(c["_median"] / c["batch"], 5) if c else None
        for speed in ("onnxruntime_b1", "onnxruntime_b8"):
            c = per.get(speed)
            row[f"gemm_share_{speed}"] = (
                round(gflop * c["batch"] / c["_median"] / peak, 3) if c and peak else None
            )
        notes = []
        estimate = (per.get("torch_b1") or {}).get("torch_b8_estimate_s")
        if row["torch_b8"] is None and estimate and estimate > TORCH_B8_BUDGET_S:
            notes.append(f"torch b8 not run: about {estimate:.0f} s here (budget {TORCH_B8_BUDGET_S:.0f} s)")
        if first.get("reduced"):
            notes.append("reduced size (quick run), not the deployed one")
        row["note"] = "; ".join(notes)
        row.update({k: first.get(k) for k in ("fingerprint", "frames", "audio", "origin")})
        row["quick"] = any(c.get("quick") for c in group)
        rows.append(row)
    return sorted(rows, key=_order)


#: The table's columns in report.md (the rest are in report.json).
TABLE_COLUMNS = (
    "family",
    "profile",
    "input",
    "steps",
    "gflop_per_window",
    *SPEEDS,
    "gemm_share_onnxruntime_b1",
    "gemm_share_onnxruntime_b8",
    "note",
)


def costs_from_report(report: dict[str, Any]) -> dict[str, Any] | None:
    """The results file's content from a derived report (None when the zoo suite did not run)."""
    table = report.get("tables", {}).get("model_zoo") or []
    if not table:
        return None
    rows = [
        {
            **{
                k: r.get(k) for k in ("family", "profile", "input", "fingerprint", "frames", "audio", "steps")
            },
            "gflop_per_window": r["gflop_per_window"],
            "s_per_frame": {s: r[s] for s in SPEEDS},
            "gemm_share_onnxruntime_b1": r.get("gemm_share_onnxruntime_b1"),
            "note": r.get("note") or "",
        }
        for r in table
    ]
    return {
        "format": FORMAT,
        "what": "seconds per output frame: one window per frame (stride 1), the family's default DDIM "
        "steps, random weights; measured by benchmarks/test_model_zoo.py (avsal bench)",
        "quick": any(r.get("quick") for r in table),
        "measured": {**report.get("measured", {}), "gemm_gflops": report.get("gemm_gflops")},
        "rows": rows,
    }


# ----------------------------------------------------------------------------- the docs block
def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def render_block(costs: dict[str, Any] | None) -> str:
    """The generated block of docs/models/index.md for ``costs`` (None: not yet measured)."""
    head = (
        f"{PAGE_BEGIN} Do not edit by hand:\n`python -m avsal_deploy.bench.zoo docs` writes this block "
        "from avsal_deploy/assets/model_zoo_costs.json\n(its date, commit and machine shown with it). -->\n\n"
    )
    if not costs or not costs.get("rows"):
        body = (
            '!!! note "Measured per-frame cost: not yet measured"\n'
            "    This section will hold each family's measured per-frame cost (engine, machine, date,\n"
            "    commit), generated from a results file. Until then, `avsal models` gives each family's\n"
            "    parameters and GFLOP per window, which do not depend on the machine.\n"
        )
        return head + body + "\n" + PAGE_END
    m = costs.get("measured") or {}
    commit = (m.get("commit") or "unknown") + (" (with uncommitted changes)" if m.get("dirty") else "")
    libs = ", ".join(f"{k} {m[k]}" for k in ("onnxruntime", "torch") if m.get(k)) or "versions unknown"
    gemm = f"; fp32 GEMM limit {m['gemm_gflops']:.0f} GFLOP/s" if m.get("gemm_gflops") else ""
    lines = [
        f"Measured **{str(m.get('datetime') or 'date unknown')[:10]}** at commit **{commit}** on "
        f"{machine_line(m)} ({libs}{gemm}), with `avsal bench` (`benchmarks/test_model_zoo.py`). "
        "Seconds per output frame: one window per frame (stride 1) at the family's default DDIM "
        "steps, randomly initialised weights (the cost is the architecture's); batch 8 is eight "
        "windows per call, its time divided by 8. GFLOP are GEMM-class, counted from the ONNX "
        "graphs (2 per multiply-add). `avsal models` shows the ONNX Runtime batch-1 column.\n",
        "| family | profile | frames | DDIM steps | GFLOP/window | ONNX Runtime b1 | ONNX Runtime b8 "
        "| torch b1 | torch b8 | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(costs["rows"], key=_order):
        s = r.get("s_per_frame") or {}
        cells = [
            f"`{r['family']}`",
            r.get("profile") or "official",
            r.get("input"),
            r.get("steps"),
            r.get("gflop_per_window"),
            *(s.get(k) for k in SPEEDS),
            r.get("note") or "",
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return head + "\n".join(lines) + "\n\n" + PAGE_END


def default_page() -> Path:
    """docs/models/index.md of the source checkout the package runs from."""
    return Path(__file__).resolve().parents[2] / "docs" / "models" / "index.md"


def update_page(page: Path, costs: dict[str, Any] | None, check: bool = False) -> bool:
    """Rewrite ``page``'s generated block from ``costs``; True if it changed (``check``: only
    compare). An AvsalError when the page has no such block."""
    if not page.exists():
        raise AvsalError(f"{page}: no such page (the docs are in a source checkout)")
    text = page.read_text()
    if not _BLOCK.search(text):
        raise AvsalError(f"{page}: no `{PAGE_BEGIN} ... {PAGE_END}` block")
    new = _BLOCK.sub(lambda _: render_block(costs), text, count=1)
    if new != text and not check:
        page.write_text(new)
    return new != text


def install(source: Path, destination: Path | None = None) -> dict[str, Any]:
    """Copy a report's results file into the package (``destination``, default
    :data:`avsal_deploy.models.costs.COSTS_FILE`), refusing a quick or an empty one."""
    costs = read_costs(source)
    if costs is None:
        raise AvsalError(f"{source}: no such results file (avsal bench writes DIR/model_zoo_costs.json)")
    if costs.get("quick"):
        raise AvsalError(f"{source}: a quick run (reduced sizes, batch 1): measure without --quick")
    if not costs["rows"]:
        raise AvsalError(f"{source}: no family was measured")
    (destination or packaged.COSTS_FILE).write_text(json.dumps(costs, indent=2) + "\n")
    return costs


def unmatched(costs: dict[str, Any]) -> list[str]:
    """Rows of ``costs`` that no zoo entry uses (another size, architecture or step count)."""
    out = []
    for r in costs["rows"]:
        entries = zoo_entries(PROFILES, families=[r["family"]]) if r.get("family") in FAMILIES else []
        if not any(find_row({"rows": [r]}, e.family, cost_key(e.config, e.family)) for e in entries):
            out.append(f"{r.get('family')} {r.get('profile') or 'official'} {r.get('input')}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m avsal_deploy.bench.zoo", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "install", help="copy a report's model_zoo_costs.json into the package, update the docs"
    )
    p.add_argument("source", type=Path, help="DIR/model_zoo_costs.json written by avsal bench --out DIR")
    p.add_argument("--page", type=Path, default=None, help="the docs page (default: docs/models/index.md)")
    p = sub.add_parser("docs", help="rewrite the docs page's generated block from the packaged results")
    p.add_argument("--page", type=Path, default=None, help="the docs page (default: docs/models/index.md)")
    p.add_argument("--check", action="store_true", help="only compare; exit 1 if the block is not current")
    args = parser.parse_args(argv)
    page = args.page or default_page()
    try:
        if args.command == "install":
            update_page(page, None, check=True)  # the page and its block are there before installing
            costs = install(args.source)
            print(
                f"{packaged.COSTS_FILE}: {len(costs['rows'])} rows measured {str(costs['measured'].get('datetime'))[:10]}"
            )
            for row in unmatched(costs):
                print(f"  not shown by avsal models (no zoo entry of that size): {row}")
            update_page(page, costs)
            print(f"{page}: generated block rewritten")
            return 0
        changed = update_page(page, read_costs(), check=args.check)
    except AvsalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if changed:
            print(f"{page}: the generated block is not current: python -m avsal_deploy.bench.zoo docs")
        return int(changed)
    print(f"{page}: {'rewritten' if changed else 'already current'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
