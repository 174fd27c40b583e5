"""``avsal bench --out DIR``: run the benchmark suites, then write a report users can size from.

The suites are the repository's pytest-benchmark files (``benchmarks/``); each case records what
it measured in ``extra_info`` (``metric``, profile, backend, GFLOP, ...). This module runs them in
one pytest process (so every ratio compares numbers taken side by side, on one machine, in one
run), keeps the raw pytest-benchmark JSON, profiles the largest profile's components per ONNX node,
and derives:

``DIR/report.json``  the headline ratios (top-level keys below, each a number or null with the
                     reason in ``notes``) and every table behind them;
``DIR/report.md``    the same as tables, each ratio beside its target and how far it is;
``DIR/*.png``        latency vs batch, frames/s vs streams, a per-component time breakdown;
``DIR/model_zoo_costs.json``  each family's seconds per frame, with the machine and date (when
                     the model-zoo suite ran; :mod:`avsal_deploy.bench.zoo` installs it);
``DIR/raw/benchmarks.json``  pytest-benchmark's own output.

Times are medians. GFLOP are GEMM-class (2 per multiply-add, :mod:`avsal_deploy.bench.flops`);
"share of GEMM peak" divides achieved GFLOP/s by the machine's fp32 GEMM rate measured in the
same run (:mod:`avsal_deploy.bench.machine`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avsal_deploy.errors import AvsalError

HEADLINE = (
    "gemm_gflops",
    "ort_speedup",
    "gemm_fraction",
    "ddim_step_ratio",
    "triton_overhead",
    "stream_fps_small",
    "eca_memory_ratio",
    "int8_speedup",
)


@dataclass(frozen=True)
class Target:
    key: str
    op: str  # ">=" or "<="
    value: float
    what: str


TARGETS = (
    Target("gemm_fraction", ">=", 0.70, "hybrid DDIM-4 window, ONNX Runtime: achieved share of GEMM peak"),
    Target("unet_step_gemm_fraction", ">=", 0.50, "one UNet step, ONNX Runtime: share of GEMM peak"),
    Target("ddim_step_ratio", "<=", 3.3, "(t4 - t1) / t_step: encoders and fusion run once per window"),
    Target("ort_speedup", ">=", 2.0, "ONNX Runtime over torch eager, DDIM-4 window"),
    Target("int8_speedup", ">=", 1.5, "static INT8 over fp32, ONNX Runtime window (at CC >= 0.99 to fp32)"),
    Target("eca_memory_ratio", "<=", 1 / 3, "ECA peak memory over standard attention, paper size"),
    Target("triton_overhead", "<=", 1.15, "Triton (shared memory) over in-process ONNX Runtime, one window"),
    Target(
        "stream_fps_small", ">=", 25.0, "small profile, aggregate frames/s through avsal_stream, stride <= 4"
    ),
)

#: The suites a report runs (quick and full); test_runtime / test_roi / test_scoring stay `make bench`.
SUITES = (
    "test_machine.py",
    "test_engines.py",
    "test_precision.py",
    "test_memory.py",
    "test_decode.py",
    "test_attention_memory.py",
    "test_streams.py",
    "test_perf_analyzer.py",
    "test_model_zoo.py",
)
PROFILE_ORDER = ("tiny", "small", "paper")


def default_suites_dir() -> Path | None:
    """The repository's ``benchmarks/`` beside the package (an editable or source checkout)."""
    candidate = Path(__file__).resolve().parents[2] / "benchmarks"
    return candidate if (candidate / "conftest.py").exists() else None


# ----------------------------------------------------------------------------- running
def run_suites(
    out_dir: Path,
    profiles: Sequence[str],
    quick: bool,
    suites_dir: Path,
    suites: Iterable[str] = SUITES,
    extra_args: Sequence[str] = (),
) -> Path:
    """Run the suites in one pytest process; returns the pytest-benchmark JSON path."""
    raw = out_dir / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    json_path = raw / "benchmarks.json"
    files = [str(suites_dir / s) for s in suites if (suites_dir / s).exists()]
    if not files:
        raise AvsalError(f"{suites_dir}: none of the benchmark suites {list(suites)} is there")
    env = dict(os.environ, AVSAL_BENCH_PROFILES=",".join(profiles), AVSAL_BENCH_QUICK="1" if quick else "0")
    # In file order (no pytest-randomly shuffle): the model-zoo suite keeps one family's engines
    # open at a time and runs each family's batch-1 cases before its batch-8 ones.
    cmd = [
        sys.executable, "-m", "pytest", *files, "--benchmark-enable", "--benchmark-only",
        f"--benchmark-json={json_path}", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "-rs",
        *extra_args,
    ]  # fmt: skip
    if quick:
        cmd += ["--benchmark-max-time=0.5", "--benchmark-min-rounds=3"]
    log = raw / "pytest.log"
    with log.open("w") as f:
        done = subprocess.run(cmd, cwd=suites_dir.parent, env=env, stdout=f, stderr=subprocess.STDOUT)
    if not json_path.exists():
        raise AvsalError(f"the benchmark suites wrote no results (exit {done.returncode}); see {log}")
    return json_path


# ----------------------------------------------------------------------------- deriving
def _cases(raw: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for b in raw.get("benchmarks", []):
        info = dict(b.get("extra_info") or {})
        info["_median"] = float(b["stats"]["median"])
        info["_name"] = b.get("fullname") or b.get("name")
        out.append(info)
    return out


def _pick(cases: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    return [c for c in cases if all(c.get(k) == v for k, v in match.items())]


def _one(cases: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    found = _pick(cases, **match)
    return found[0] if found else None


def largest_profile(profiles: Iterable[str]) -> str | None:
    present = set(profiles)
    ranked = [p for p in PROFILE_ORDER if p in present]
    return ranked[-1] if ranked else None


#: The three parts of the report a section fills: headline values, their notes, the tables.
_Parts = tuple[dict[str, Any], dict[str, str], dict[str, Any]]


def _engines(cases: list[dict[str, Any]], peak: float | None, parts: _Parts) -> None:
    """Windows per engine at the largest profile that ran: ONNX Runtime's speed-up over torch, the
    GEMM fraction, the DDIM step ratio; the window, component and breakdown tables."""
    report, notes, tables = parts
    windows = _pick(cases, metric="window")
    profile = largest_profile(c["profile"] for c in windows)
    report["profile"] = profile
    if profile is None:
        for key in ("ort_speedup", "gemm_fraction", "ddim_step_ratio"):
            notes[key] = "the engine suite (test_engines.py) did not run"
        return
    t = {(c["backend"], c["steps"]): c["_median"] for c in _pick(windows, profile=profile)}
    g = {c["steps"]: c["gflop"] for c in _pick(windows, profile=profile, backend="onnxruntime")}
    step = _one(cases, metric="component", profile=profile, component="unet_step", backend="onnxruntime")
    if ("torch", 4) in t and ("onnxruntime", 4) in t:
        report["ort_speedup"] = round(t[("torch", 4)] / t[("onnxruntime", 4)], 3)
    if peak and ("onnxruntime", 4) in t:
        report["gemm_fraction"] = round(g[4] / t[("onnxruntime", 4)] / peak, 3)
    if peak and step:
        report["unet_step_gemm_fraction"] = round(step["gflop"] / step["_median"] / peak, 3)
    if step and ("onnxruntime", 4) in t and ("onnxruntime", 1) in t:
        report["ddim_step_ratio"] = round(
            (t[("onnxruntime", 4)] - t[("onnxruntime", 1)]) / step["_median"], 3
        )
    for key in ("ort_speedup", "gemm_fraction", "ddim_step_ratio"):
        notes.setdefault(key, f"{profile} profile, batch 1, stride 1")
    tables["windows"] = _window_table(windows, peak)
    tables["components"] = _component_table(_pick(cases, metric="component"), peak)
    tables["breakdown"] = _breakdown(cases, profile)


def _batches(cases: list[dict[str, Any]], peak: float | None, parts: _Parts) -> None:
    """Seconds per window and milliseconds per frame per batch size."""
    parts[2]["batch"] = [
        {"profile": c["profile"], "batch": c["batch"], "s_per_window": round(c["_median"], 5),
         "ms_per_frame": round(1e3 * c["_median"] / c["batch"], 3),
         "gemm_fraction": round(c["gflop"] / c["_median"] / peak, 3) if peak else None}
        for c in sorted(_pick(cases, metric="window_batch"), key=lambda c: (c["profile"], c["batch"]))
    ]  # fmt: skip


def _triton_window(cases: list[dict[str, Any]], parts: _Parts) -> None:
    """Triton over in-process, per window (shared memory): the small profile if it ran, else tiny."""
    report, notes, tables = parts
    tw = _pick(cases, metric="triton_window")
    tw_profile = "small" if _pick(tw, profile="small") else largest_profile(c["profile"] for c in tw)
    if not tw_profile:
        notes["triton_overhead"] = "the Triton suite (test_streams.py) did not run"
        return
    local = _one(tw, profile=tw_profile, engine="onnxruntime")
    shm = _one(tw, profile=tw_profile, engine="triton-shm")
    sock = _one(tw, profile=tw_profile, engine="triton")
    if local and shm:
        report["triton_overhead"] = round(shm["_median"] / local["_median"], 3)
        notes["triton_overhead"] = f"{tw_profile} profile, one window, system shared memory, gRPC"
    tables["triton_window"] = {
        e: round(c["_median"] * 1e3, 3)
        for e, c in (("onnxruntime", local), ("triton-shm", shm), ("triton", sock))
        if c
    }


_STREAM_COLUMNS = (
    "profile",
    "layout",
    "stride",
    "streams",
    "frames_per_stream",
    "aggregate_fps",
    "latency_ms",
)


def _streams(cases: list[dict[str, Any]], parts: _Parts) -> None:
    """Streams through Triton: every case, and the best small-profile aggregate frames/s."""
    report, notes, tables = parts
    streams = _pick(cases, metric="streams")
    tables["streams"] = [
        {k: c.get(k) for k in _STREAM_COLUMNS}
        for c in sorted(
            streams, key=lambda c: (c["profile"], c.get("layout", "1x0"), c["stride"], c["streams"])
        )
    ]
    small = [c for c in streams if c["profile"] == "small" and c["stride"] <= 4]
    if not small:
        notes["stream_fps_small"] = "no small-profile stream case ran (test_streams.py)"
        return
    best = max(small, key=lambda c: c["aggregate_fps"])
    report["stream_fps_small"] = best["aggregate_fps"]
    notes["stream_fps_small"] = (
        f"best of strides <= 4, 1-8 streams and the server layouts: stride {best['stride']}, "
        f"{best['streams']} streams, layout {best.get('layout', '1x0')} (instances x threads)"
    )


def _attention_memory(cases: list[dict[str, Any]], parts: _Parts) -> None:
    """The efficient attention's memory over the standard one, at the largest profile measured."""
    report, notes, tables = parts
    eca = sorted(
        (c for c in cases if "eca_memory_ratio" in c),
        key=lambda c: PROFILE_ORDER.index(c["profile"]) if c.get("profile") in PROFILE_ORDER else -1,
    )
    if not eca:
        notes["eca_memory_ratio"] = "the attention memory suite (test_attention_memory.py) recorded no ratio"
        return
    best = eca[-1]  # the largest profile measured (the target is stated at the paper size)
    report["eca_memory_ratio"] = round(float(best["eca_memory_ratio"]), 5)
    scope = best.get("scope", "the attention blocks alone")
    notes["eca_memory_ratio"] = f"{best.get('profile')} profile, {best.get('variant')} window: {scope}"
    tables["attention_memory"] = [
        {"profile": c.get("profile"), **{f"{m}_peak_gb": c.get(f"{m}_peak_gb") for m in ("eca", "standard", "eca3d")},
         "eca_memory_ratio": c["eca_memory_ratio"], "paper_ratio": c.get("paper_ratio")}
        for c in eca
    ]  # fmt: skip


def _precision(cases: list[dict[str, Any]], parts: _Parts) -> None:
    """INT8 over fp32 at the largest profile measured: speed-up and the maps' agreement."""
    report, notes, tables = parts
    prec = _pick(cases, metric="precision")
    p_profile = largest_profile(c["profile"] for c in prec)
    if not p_profile:
        notes["int8_speedup"] = "the precision suite (test_precision.py) did not run"
        return
    fp32 = _one(prec, profile=p_profile, precision="fp32")
    int8 = _one(prec, profile=p_profile, precision="int8")
    if fp32 and int8:
        report["int8_speedup"] = round(fp32["_median"] / int8["_median"], 3)
        report["int8_cc"] = int8.get("cc_mean")
        notes["int8_speedup"] = (
            f"{p_profile} profile, {int8['steps']} DDIM steps; maps' CC to fp32 {int8.get('cc_mean')} mean, "
            f"{int8.get('cc_min')} worst frame over {int8.get('frames')} frames"
        )
    tables["precision"] = [
        {"profile": c["profile"], "precision": c["precision"], "ms": round(c["_median"] * 1e3, 3),
         **{k: c[k] for k in ("cc_mean", "cc_min", "frames") if k in c}}
        for c in sorted(prec, key=lambda c: (c["profile"], c["precision"]))
    ]  # fmt: skip


def _model_zoo(cases: list[dict[str, Any]], peak: float | None, parts: _Parts) -> None:
    """Every family at its deployed size: seconds per frame per engine and batch (test_model_zoo.py)."""
    from avsal_deploy.bench.zoo import zoo_table

    rows = zoo_table(cases, peak)
    if rows:
        parts[2]["model_zoo"] = rows


#: Vector extensions recorded with the machine (pytest-benchmark's cpuinfo flags, filtered).
_SIMD = ("sse4", "avx", "fma", "f16c", "amx")


def measured(raw: dict[str, Any], cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Where and when the cases were measured: pytest-benchmark's date, commit and CPU, and the
    library versions the suites record (``onnxruntime``, ``torch`` in a case's ``extra_info``)."""
    cpu = (raw.get("machine_info") or {}).get("cpu") or {}
    commit = raw.get("commit_info") or {}
    out: dict[str, Any] = {
        "datetime": raw.get("datetime"),
        "commit": (commit.get("id") or "")[:7] or None,
        "dirty": commit.get("dirty"),
        "cpu": cpu.get("brand_raw"),
        "cpus": cpu.get("count"),
        "simd": sorted(f for f in cpu.get("flags", []) if f.startswith(_SIMD)),
    }
    for lib in ("onnxruntime", "torch"):
        out[lib] = next((c[lib] for c in cases if c.get(lib)), None)
    return out


def _plain_tables(cases: list[dict[str, Any]], node_profiles: dict[str, Any] | None, parts: _Parts) -> None:
    """Memory, decoding, perf_analyzer and the per-node profile, as measured."""
    tables = parts[2]
    tables["memory"] = [
        {k: c[k] for k in ("profile", "backend", "imports_mb", "engine_mb", "peak_rss_mb")}
        for c in sorted(_pick(cases, metric="memory"), key=lambda c: (c["profile"], c["backend"]))
    ]
    tables["memory_pattern"] = [
        {k: c[k] for k in ("profile", "memory_pattern", "engine_anon_mb", "anon_mb", "s_per_frame")}
        for c in sorted(
            _pick(cases, metric="memory_pattern"), key=lambda c: (c["profile"], c["memory_pattern"])
        )
    ]
    tables["decode"] = [
        {k: c[k] for k in ("profile", "codec", "decoder", "frames_per_second")}
        for c in _pick(cases, metric="decode")
    ]
    tables["perf_analyzer"] = [
        {"profile": c["profile"], "model": c["model"], "points": c["points"]}
        for c in _pick(cases, metric="perf_analyzer")
    ]
    if node_profiles:
        tables["node_profile"] = node_profiles


def derive(raw: dict[str, Any], node_profiles: dict[str, Any] | None = None) -> dict[str, Any]:
    """The report dict (headline keys, targets, tables) from pytest-benchmark JSON: each section
    of the suites fills its headline values, notes and tables."""
    cases = _cases(raw)
    notes: dict[str, str] = {}
    report: dict[str, Any] = {k: None for k in HEADLINE}
    tables: dict[str, Any] = {}
    parts = (report, notes, tables)
    gemm = _one(cases, metric="gemm")
    peak = float(gemm["gflops"]) if gemm else None
    report["gemm_gflops"] = peak
    if gemm is None:
        notes["gemm_gflops"] = "the machine suite (test_machine.py) did not run"
    _engines(cases, peak, parts)
    _batches(cases, peak, parts)
    _triton_window(cases, parts)
    _streams(cases, parts)
    _attention_memory(cases, parts)
    _precision(cases, parts)
    _model_zoo(cases, peak, parts)
    _plain_tables(cases, node_profiles, parts)
    report["targets"] = [_judge(t, report) for t in TARGETS]
    report["notes"] = {k: notes[k] for k in sorted(notes)}
    report["tables"] = tables
    report["machine"] = {"cpus": len(os.sched_getaffinity(0)), "gemm": gemm}
    report["measured"] = measured(raw, cases)
    return report


def _judge(target: Target, report: dict[str, Any]) -> dict[str, Any]:
    value = report.get(target.key)
    entry: dict[str, Any] = {
        "key": target.key,
        "target": f"{target.op} {target.value:.3g}",
        "what": target.what,
    }
    if value is None:
        return entry | {"value": None, "met": None, "gap": None}
    met = value >= target.value if target.op == ">=" else value <= target.value
    gap = value / target.value if target.op == ">=" else target.value / value if value else None
    return entry | {"value": value, "met": bool(met), "gap": None if gap is None else round(gap, 3)}


def _window_table(windows: list[dict[str, Any]], peak: float | None) -> list[dict[str, Any]]:
    rows = []
    for c in sorted(windows, key=lambda c: (PROFILE_ORDER.index(c["profile"]), c["steps"], c["backend"])):
        rate = c["gflop"] / c["_median"]
        rows.append(
            {"profile": c["profile"], "steps": c["steps"], "backend": c["backend"], "s": round(c["_median"], 5),
             "gflop": round(c["gflop"], 3), "gflops": round(rate, 2), "gemm_fraction": round(rate / peak, 3) if peak else None}
        )  # fmt: skip
    return rows


def _component_table(components: list[dict[str, Any]], peak: float | None) -> list[dict[str, Any]]:
    rows = []
    for c in sorted(
        components, key=lambda c: (PROFILE_ORDER.index(c["profile"]), c["component"], c["backend"])
    ):
        rate = c["gflop"] / c["_median"]
        rows.append(
            {"profile": c["profile"], "component": c["component"], "backend": c["backend"], "ms": round(c["_median"] * 1e3, 3),
             "gflop": round(c["gflop"], 4), "gemm_fraction": round(rate / peak, 3) if peak else None}
        )  # fmt: skip
    return rows


def _breakdown(cases: list[dict[str, Any]], profile: str) -> dict[str, float]:
    """Seconds of a DDIM-4 ONNX Runtime window by component (+ the rest: Python, copies, DDIM update)."""
    comp = {
        c["component"]: c["_median"]
        for c in _pick(cases, metric="component", profile=profile, backend="onnxruntime")
    }
    window = _one(cases, metric="window", profile=profile, backend="onnxruntime", steps=4)
    if not window or len(comp) < 4:
        return {}
    parts = {
        "video_encoder": comp["video_encoder"],
        "audio_encoder": comp["audio_encoder"],
        "fusion": comp["fusion"],
        "unet_step x4": 4 * comp["unet_step"],
    }
    parts["other"] = max(0.0, window["_median"] - sum(parts.values()))
    return {k: round(v, 5) for k, v in parts.items()}


# ----------------------------------------------------------------------------- node profile
def profile_nodes(profile: str, runs: int = 2) -> dict[str, Any]:
    """ONNX Runtime's per-node profile of each component of ``profile``'s bench export."""
    from avsal_deploy.bench.exports import bench_export
    from avsal_deploy.bench.ortprof import profile_component
    from avsal_deploy.specs import read_manifest

    export = bench_export(profile)
    _, _, specs = read_manifest(export)
    out = {}
    for name, spec in specs.items():
        if name == "ddim":
            continue
        prof = profile_component(export / spec.onnx_file, spec.sample_inputs(1), name, runs=runs)
        out[name] = prof.to_dict()
    return {"profile": profile, "components": out}


# ----------------------------------------------------------------------------- writing
def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _md_table(rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return "_(no rows: the suite did not run)_\n"
    cols = list(columns or dict.fromkeys(k for r in rows for k in r))  # every row's keys, in order
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_markdown(report: dict[str, Any], path: Path) -> None:
    t = report["tables"]
    m = report.get("measured") or {}
    parts = [
        "# avsal-deploy benchmark report\n",
        f"Machine: {report['machine']['cpus']} CPUs, fp32 GEMM {_fmt(report['gemm_gflops'])} GFLOP/s "
        f"(measured in this run). Largest engine profile: {report.get('profile')}. Times are medians.\n",
        f"Measured {_fmt(m.get('datetime'))} at commit {_fmt(m.get('commit'))}"
        f"{' (with uncommitted changes)' if m.get('dirty') else ''} on {_fmt(m.get('cpu'))}; "
        f"ONNX Runtime {_fmt(m.get('onnxruntime'))}, torch {_fmt(m.get('torch'))}; "
        f"vector extensions: {' '.join(m.get('simd') or []) or '–'}.\n",
        "## Targets\n",
        _md_table(
            [
                {
                    "ratio": x["key"],
                    "value": x["value"],
                    "target": x["target"],
                    "met": {True: "yes", False: "no", None: "–"}[x["met"]],
                    "value / target": x["gap"],
                    "what": x["what"],
                }
                for x in report["targets"]
            ]  # fmt: skip
        ),
        "## Notes\n",
        "\n".join(f"- `{k}`: {v}" for k, v in report["notes"].items()) + "\n",
        "## Windows (one window, batch 1)\n",
        _md_table(t.get("windows", [])),
        "## Components (batch 1)\n",
        _md_table(t.get("components", [])),
        "## Per-component time of a DDIM-4 window (ONNX Runtime, s)\n",
        _md_table([t["breakdown"]] if t.get("breakdown") else []),
        "## Window latency vs batch (ONNX Runtime, DDIM-4)\n",
        _md_table(t.get("batch", [])),
        "## INT8 vs fp32 (ONNX Runtime)\n",
        _md_table(t.get("precision", [])),
        "## Streams through Triton (`avsal_stream`)\n",
        _md_table(t.get("streams", [])),
        "## Triton vs in-process, one window (ms)\n",
        _md_table([t["triton_window"]] if t.get("triton_window") else []),
        "## perf_analyzer\n",
        _md_table(
            [
                {"profile": r["profile"], "model": r["model"], **p}
                for r in t.get("perf_analyzer", [])
                for p in r["points"]
            ]
        ),
        "## Peak memory, one DDIM-4 window (MB)\n",
        _md_table(t.get("memory", [])),
        "## ONNX Runtime's memory pattern, window batches of 1-8 (anonymous MB, s/frame)\n",
        _md_table(t.get("memory_pattern", [])),
        "## Decode + preprocess (720p -> model input)\n",
        _md_table(t.get("decode", [])),
    ]
    if t.get("model_zoo"):
        from avsal_deploy.bench.zoo import TABLE_COLUMNS, TORCH_B8_BUDGET_S

        parts += [
            "## Model zoo: seconds per output frame (one window per frame, stride 1)\n",
            "Every family at its deployed size, random weights, its default DDIM steps; `_b8`: eight "
            "windows per call, divided by 8. Torch eager at batch 8 runs only where it is estimated to "
            f"take at most {TORCH_B8_BUDGET_S:.0f} s (`note` says so otherwise). `gemm_share`: ONNX "
            "Runtime's GFLOP/s over the GEMM limit measured in this run.\n",
            _md_table(t["model_zoo"], TABLE_COLUMNS),
        ]
    if t.get("attention_memory"):
        parts += [
            "## Saliency-UNet attention peak memory (attention alone, batch 1)\n",
            _md_table(t["attention_memory"]),
        ]
    node = t.get("node_profile")
    if node:
        parts.append(f"## Where the time goes: ONNX Runtime per-node profile ({node['profile']} profile)\n")
        for name, prof in node["components"].items():
            parts.append(f"### {name} ({prof['kernel_ms']:.1f} ms of kernels per run)\n")
            parts.append(_md_table(prof["ops"][:10]))
    path.write_text("\n".join(parts))


def write_plots(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """latency_vs_batch.png, fps_vs_streams.png, breakdown.png (those with data)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = report["tables"]
    written = []
    if t.get("batch"):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for profile in PROFILE_ORDER:
            rows = [r for r in t["batch"] if r["profile"] == profile]
            if rows:
                ax.plot(
                    [r["batch"] for r in rows],
                    [r["ms_per_frame"] for r in rows],
                    "o-",
                    label=f"{profile} ms/frame",
                )
        ax.set(xlabel="batch (windows per call)", ylabel="ms per output frame", xscale="log", yscale="log",
               title="ONNX Runtime, DDIM-4 window")  # fmt: skip
        ax.legend()
        written.append(_save(fig, out_dir / "latency_vs_batch.png"))
    if t.get("streams"):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))

        def curve(r: dict[str, Any]) -> tuple[str, int, str]:
            return (r["profile"], r["stride"], r.get("layout") or "1x0")

        for key in sorted({curve(r) for r in t["streams"]}):
            rows = [r for r in t["streams"] if curve(r) == key]
            ax.plot(
                [r["streams"] for r in rows],
                [r["aggregate_fps"] for r in rows],
                "o-",
                label=f"{key[0]}, stride {key[1]}, {key[2]}",
            )
        ax.axhline(25, color="grey", ls="--", lw=1, label="25 frames/s")
        ax.set(xlabel="concurrent streams", ylabel="aggregate frames/s", title="avsal_stream through Triton")
        ax.legend()
        written.append(_save(fig, out_dir / "fps_vs_streams.png"))
    if t.get("breakdown"):
        fig, ax = plt.subplots(figsize=(6, 2.6))
        left = 0.0
        for name, sec in t["breakdown"].items():
            ax.barh([0], [sec], left=left, label=f"{name} {sec * 1e3:.0f} ms")
            left += sec
        ax.set(
            yticks=[], xlabel="seconds", title=f"DDIM-4 window, {report.get('profile')} profile, ONNX Runtime"
        )
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=3)
        written.append(_save(fig, out_dir / "breakdown.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def merge_raw(raw_jsons: Sequence[Path]) -> dict[str, Any]:
    """Several pytest-benchmark JSONs as one: a case measured again in a later file (same full
    name) replaces the earlier one, so one suite can be rerun without the others."""
    merged: dict[str, dict[str, Any]] = {}
    head: dict[str, Any] = {}
    for path in raw_jsons:
        data = json.loads(Path(path).read_text())
        head = {k: v for k, v in data.items() if k != "benchmarks"}
        for b in data.get("benchmarks", []):
            merged[b.get("fullname") or b.get("name")] = b
    return {**head, "benchmarks": list(merged.values()), "sources": [str(p) for p in raw_jsons]}


def build_report(
    raw_json: Path | Sequence[Path], out_dir: Path, node_profiles: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Derive and write report.json, report.md and the plots from pytest-benchmark JSON(s)."""
    paths = [Path(raw_json)] if isinstance(raw_json, (str, Path)) else [Path(p) for p in raw_json]
    raw = merge_raw(paths)
    report = derive(raw, node_profiles)
    out_dir.mkdir(parents=True, exist_ok=True)
    report["plots"] = [p.name for p in write_plots(report, out_dir)]
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    write_markdown(report, out_dir / "report.md")
    from avsal_deploy.bench.zoo import costs_from_report

    costs = costs_from_report(report)
    if costs is not None:
        (out_dir / "model_zoo_costs.json").write_text(json.dumps(costs, indent=2) + "\n")
    return report
