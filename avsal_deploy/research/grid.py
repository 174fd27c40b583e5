"""The audio-relevance experiment over a grid of task variants (``training/grids/audio-binding.toml``).

A grid file (TOML) lists cells; each cell is a variant of the synthetic task
(:class:`~avsal_deploy.data.synthetic.SceneOptions` plus the data-set size) on which
:func:`~avsal_deploy.research.experiment.run_audio_relevance` runs with its seeds::

    [defaults]                  # every cell starts from these (all keys optional)
    seeds = 3
    data_seed = 11              # the generator's seed
    frames = 48                 # video length
    train_per_condition = 16
    test_per_condition = 8
    audio_rate = 22050
    stride = 2                  # score every 2nd test frame
    control = false             # skip the mismatched-soundtrack control
    [defaults.overrides]        # recipe overrides (dotted keys, as --set)
    "train.max_steps" = 300

    [[cell]]
    name = "default"            # the generator's defaults
    [[cell]]
    name = "lagged-pulses"
    objects = [2, 4]            # SceneOptions fields: objects, audio_lag_ms, rhythm_grid_hz,
    audio_lag_ms = [0, 60]      # rhythm_jitter_hz, shapes, hues

For each cell, ``OUT/<name>/data`` holds its generated set (re-generated only when its
``generator.json`` differs) and ``OUT/<name>/results.json`` the experiment's results (runs are
resumable). ``OUT/summary.json``, ``OUT/summary.md`` and ``OUT/summary.png`` (AV - V per cell and
condition, per seed) evaluate the criteria on every cell (:data:`CRITERIA`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tomllib

from avsal_deploy.data.synthetic import SET_NAME, SceneOptions, generate
from avsal_deploy.errors import BackendUnavailableError, ConfigError, DatasetError

#: The criteria the binding must meet, evaluated per cell (CC).
CRITERIA: dict[str, float] = {
    "relevant_margin": 0.10,  # AV - V with relevant sound, in every seed
    "no_worse": 0.02,  # AV no worse than V by more than this with music and with silence (mean)
    "relevant_av": 0.80,  # AV CC with relevant sound (mean)
}
_DATA_KEYS = ("seeds", "data_seed", "frames", "train_per_condition", "test_per_condition", "audio_rate")
_RUN_KEYS = ("stride", "control", "overrides")
_SCENE_KEYS = tuple(SceneOptions.__dataclass_fields__)
DEFAULTS: dict[str, Any] = {
    "seeds": 3,
    "data_seed": 11,
    "frames": 48,
    "train_per_condition": 16,
    "test_per_condition": 8,
    "audio_rate": 22050,
    "stride": 2,
    "control": False,
    "overrides": {},
}

GridProgress = Callable[[str], None]


def load_grid(path: str | Path) -> list[dict[str, Any]]:
    """The cells of a grid file, each with every key resolved (defaults applied); checked."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read grid: {exc}") from exc
    defaults = {**DEFAULTS, **data.get("defaults", {})}
    cells = data.get("cell", [])
    if not cells:
        raise ConfigError(f"{p}: no [[cell]] tables")
    out = []
    names: set[str] = set()
    known = {"name", *_DATA_KEYS, *_RUN_KEYS, *_SCENE_KEYS}
    for i, raw in enumerate(cells):
        unknown = sorted(set(raw) - known) + sorted(set(data.get("defaults", {})) - known)
        if unknown:
            raise ConfigError(f"{p}: cell {i}: unknown key(s) {', '.join(unknown)}")
        name = str(raw.get("name", ""))
        if not name or "/" in name or name in names:
            raise ConfigError(f"{p}: cell {i}: needs a unique name without '/' (got {name!r})")
        names.add(name)
        cell = {**defaults, **raw}
        cell["overrides"] = {**defaults.get("overrides", {}), **raw.get("overrides", {})}
        scene = {k: cell.pop(k) for k in _SCENE_KEYS if k in cell}
        try:
            cell["scene"] = SceneOptions.from_json(scene)
        except ConfigError as exc:
            raise ConfigError(f"{p}: cell {name!r}: {exc}") from exc
        if int(cell["seeds"]) < 1:
            raise ConfigError(f"{p}: cell {name!r}: seeds must be >= 1")
        out.append(cell)
    return out


def make_cell_data(cell: dict[str, Any], root: Path, profile: str = "tiny") -> Path:
    """Generate the cell's data set under ``root`` unless the same one is already there."""
    wanted = {
        "seed": int(cell["data_seed"]),
        "n_frames": int(cell["frames"]),
        "audio_rate": int(cell["audio_rate"]),
        "scene": cell["scene"].to_json(),
        "per_condition": {"train": int(cell["train_per_condition"]), "test": int(cell["test_per_condition"])},
    }
    info_path = root / "annotations" / SET_NAME / "generator.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        have = {k: info.get(k) for k in wanted}
        have["scene"] = info.get("scene", SceneOptions().to_json())
        if have == wanted and (root / "conditions.json").is_file():
            return root
    return generate(
        root,
        0,
        profile=profile,
        seed=wanted["seed"],
        n_frames=wanted["n_frames"],
        audio_rate=wanted["audio_rate"],
        options=cell["scene"],
        train_per_condition=wanted["per_condition"]["train"],
        test_per_condition=wanted["per_condition"]["test"],
    )


def cell_criteria(results: dict[str, Any]) -> dict[str, Any]:
    """The criteria (:data:`CRITERIA`) on one experiment's ``results.json`` content, with their margins."""
    cond = results["conditions"]

    def seeds(c: str, k: str) -> np.ndarray:
        return np.asarray(cond[c][k]["cc"]["per_seed"], np.float64)

    out: dict[str, Any] = {}
    if "relevant" in cond:
        diff = seeds("relevant", "av") - seeds("relevant", "v")
        out["relevant_margin"] = {
            "holds": bool(np.all(diff >= CRITERIA["relevant_margin"])),
            "min_difference": float(diff.min()),
            "per_seed": [float(d) for d in diff],
            "text": f"relevant: AV - V >= {CRITERIA['relevant_margin']} CC in every seed",
        }
        av = float(cond["relevant"]["av"]["cc"]["mean"])
        out["relevant_av"] = {
            "holds": av >= CRITERIA["relevant_av"],
            "value": av,
            "text": f"relevant: AV CC >= {CRITERIA['relevant_av']} (mean)",
        }
    for c in ("music", "silent"):
        if c in cond:
            diff = seeds(c, "av") - seeds(c, "v")
            out[f"{c}_no_worse"] = {
                "holds": bool(diff.mean() >= -CRITERIA["no_worse"]),
                "mean_difference": float(diff.mean()),
                "per_seed": [float(d) for d in diff],
                "text": f"{c}: AV - V >= -{CRITERIA['no_worse']} CC (mean)",
            }
    beats = {}
    for c, by_model in cond.items():
        for k in ("av", "v"):
            beats[f"{c}/{k}"] = all(
                by_model[k][m]["mean"] > by_model["center"][m]["mean"] for m in ("cc", "nss")
            )
    out["beat_centre"] = {
        "holds": all(beats.values()),
        "failing": sorted(k for k, v in beats.items() if not v),
        "text": "AV and V beat the centre bias on CC and NSS in every condition (means)",
    }
    out["all"] = all(v["holds"] for v in out.values())
    return out


def run_grid(
    grid: str | Path,
    out: str | Path,
    *,
    recipe_path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    jobs: int = 1,
    device: str | None = None,
    cells: list[str] | None = None,
    progress: GridProgress | None = None,
    experiment_progress: Any = None,
) -> dict[str, Any]:
    """Run every cell of ``grid`` (or the named ``cells``) and write the summary; return it."""
    from avsal_deploy.research.experiment import run_audio_relevance

    say = progress or (lambda _m: None)
    all_cells = load_grid(grid)
    if cells:
        missing = sorted(set(cells) - {c["name"] for c in all_cells})
        if missing:
            raise ConfigError(f"{grid}: no cell(s) named {', '.join(missing)}")
        all_cells = [c for c in all_cells if c["name"] in cells]
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_cells = []
    for cell in all_cells:
        name = cell["name"]
        t0 = time.monotonic()
        say(f"cell {name}: data")
        data = make_cell_data(cell, out_dir / name / "data")
        say(f"cell {name}: {cell['seeds']} seed(s)")
        results = run_audio_relevance(
            data,
            out_dir / name,
            seeds=int(cell["seeds"]),
            recipe_path=recipe_path,
            overrides={**cell["overrides"], **(overrides or {})},
            device=device,
            jobs=jobs,
            stride=int(cell["stride"]),
            control=bool(cell["control"]),
            progress=experiment_progress,
        )
        entry = _cell_entry(cell, results)
        entry["seconds"] = round(time.monotonic() - t0, 1)
        summary_cells.append(entry)
        say(f"cell {name}: {'all criteria hold' if entry['criteria']['all'] else 'criteria fail'}")
        _write_summary(out_dir, str(grid), summary_cells)
    return _write_summary(out_dir, str(grid), summary_cells)


def summarise_grid(grid: str | Path, out: str | Path) -> dict[str, Any]:
    """Write the summary from the cells of ``grid`` that have an ``OUT/<cell>/results.json``
    (a partial grid: the cells not run are left out and listed under ``missing``)."""
    out_dir = Path(out)
    cells = load_grid(grid)
    if not out_dir.is_dir():
        raise DatasetError(f"{out_dir}: no such directory (run the grid into it first)")
    entries, missing = [], []
    for cell in cells:
        path = out_dir / cell["name"] / "results.json"
        if not path.is_file():
            missing.append(cell["name"])
            continue
        try:
            results = json.loads(path.read_text())
            entry = _cell_entry(cell, results)
            entry["seeds"] = len(results["seeds"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DatasetError(f"{path}: not an audio-relevance results.json ({exc!r})") from exc
        entries.append(entry)
    if not entries:
        raise DatasetError(f"{out_dir}: no cell of {grid} has a results.json there, nothing to summarise")
    summary = _write_summary(out_dir, str(grid), entries, missing)
    return summary


def _binding(results: dict[str, Any]) -> bool:
    """Whether the experiment's models had the binding map (``fusion.binding``)."""
    from avsal_deploy.training.recipe import from_dict

    return bool(from_dict(results["recipe"]).model_config().fusion.binding)


def _cell_entry(cell: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    cc = {
        c: {
            k: {"mean": v[k]["cc"]["mean"], "std": v[k]["cc"]["std"], "per_seed": v[k]["cc"]["per_seed"]}
            for k in v
        }
        for c, v in results["conditions"].items()
    }
    refs = {
        r: {c: results["references"][r][c]["cc"] for c in results["conditions"]}
        for r in ("visual_ceiling", "oracle")
        if r in results.get("references", {})
    }
    return {
        "name": cell["name"],
        "data": {k: cell[k] for k in _DATA_KEYS if k != "seeds"},
        "scene": cell["scene"].to_json(),
        "seeds": int(cell["seeds"]),
        "stride": int(cell["stride"]),
        "overrides": cell["overrides"],
        "cc": cc,
        "references_cc": refs,
        "criteria": cell_criteria(results),
        "recipe_max_steps": results["recipe"]["train"]["max_steps"],
        "profile": results.get("profile"),
        "binding": _binding(results),
    }


def _mark(criteria: dict[str, Any], key: str) -> str:
    return "-" if key not in criteria else ("yes" if criteria[key]["holds"] else "**no**")


def _fmt(entry: dict[str, Any], c: str, k: str) -> str:
    v = entry["cc"].get(c, {}).get(k)
    return "-" if v is None else f"{v['mean']:.3f} ± {v['std']:.3f}"


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as a markdown table (one row per cell) and the criteria legend."""
    head = (
        "| cell | variant | seeds | relevant AV | relevant V | AV - V (min seed) | music AV - V | "
        "silent AV - V | centre CC (rel.) | margin >= 0.10 | AV >= 0.80 | music | silent | > centre |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for e in summary["cells"]:
        steps = f", {e['recipe_max_steps']} steps" if "recipe_max_steps" in e else ""
        binding = "" if e.get("binding", True) else ", no binding map"
        cr = e["criteria"]
        s = e["scene"]
        variant = (
            f"{s['objects'][0]}-{s['objects'][1]} obj, lag {s['audio_lag_ms'][0]:g}-{s['audio_lag_ms'][1]:g} ms, "
            f"{e['data']['frames']} fr, {e['data']['train_per_condition']} train/cond{steps}{binding}"
        )
        rel = cr.get("relevant_margin", {})
        diff_rel = f"{np.mean(rel['per_seed']):+.3f} ({rel['min_difference']:+.3f})" if rel else "-"
        centre = e["cc"].get("relevant", {}).get("center", {}).get("mean")
        rows.append(
            f"| {e['name']} | {variant} | {e['seeds']} | {_fmt(e, 'relevant', 'av')} | {_fmt(e, 'relevant', 'v')} | "
            f"{diff_rel} | {cr.get('music_no_worse', {}).get('mean_difference', float('nan')):+.3f} | "
            f"{cr.get('silent_no_worse', {}).get('mean_difference', float('nan')):+.3f} | "
            f"{'-' if centre is None else f'{centre:.3f}'} | {_mark(cr, 'relevant_margin')} | {_mark(cr, 'relevant_av')} | "
            f"{_mark(cr, 'music_no_worse')} | {_mark(cr, 'silent_no_worse')} | {_mark(cr, 'beat_centre')} |"
        )
    legend = (
        "\nCriteria (CC): AV - V >= 0.10 with relevant sound in every seed; AV relevant >= 0.80 (mean); "
        "AV - V >= -0.02 with music and with silence (mean over seeds); AV and V above the centre bias "
        "on CC and NSS in every condition. Means ± sample std over seeds.\n"
    )
    missing = summary.get("missing") or []
    if missing:
        legend += f"\nNot run (no results.json): {', '.join(missing)}.\n"
    return head + "\n".join(rows) + "\n" + legend


def _write_summary(
    out_dir: Path, grid: str, cells: list[dict[str, Any]], missing: list[str] | None = None
) -> dict[str, Any]:
    summary = {
        "experiment": "audio-relevance grid",
        "grid": grid,
        "criteria": CRITERIA,
        "cells": cells,
        "missing": missing or [],
        "all_hold": bool(cells) and not missing and all(c["criteria"]["all"] for c in cells),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out_dir / "summary.md").write_text(summary_markdown(summary))
    try:
        plot_grid(summary, out_dir / "summary.png")
    except BackendUnavailableError:
        pass
    return summary


def plot_grid(summary: dict[str, Any], path: str | Path) -> Path:
    """AV - V CC per cell and condition: bars for the mean, dots for the seeds, the criteria lines."""
    from avsal_deploy.training.plots import pyplot

    plt = pyplot()
    cells = summary["cells"]
    conditions = ("relevant", "music", "silent")
    colours = {"relevant": "tab:red", "music": "tab:blue", "silent": "tab:grey"}
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(cells) + 2.0), 3.6))
    width = 0.25
    for j, c in enumerate(conditions):
        xs, means = [], []
        for i, e in enumerate(cells):
            if c not in e["cc"]:
                continue
            diff = np.asarray(e["cc"][c]["av"]["per_seed"]) - np.asarray(e["cc"][c]["v"]["per_seed"])
            x = i + (j - 1) * width
            xs.append(x)
            means.append(float(diff.mean()))
            ax.plot([x] * len(diff), diff, "k.", ms=4, zorder=3)
        ax.bar(xs, means, width, color=colours[c], label=c, alpha=0.8)
    ax.axhline(CRITERIA["relevant_margin"], color="tab:red", ls="--", lw=0.8)
    ax.axhline(-CRITERIA["no_worse"], color="tab:blue", ls=":", lw=0.8)
    ax.axhline(0.0, color="k", lw=0.5)
    ax.set_xticks(range(len(cells)), [e["name"] for e in cells], rotation=20, ha="right")
    ax.set_ylabel("CC, AV - V")
    ax.set_title("AV - V per cell (dots: seeds)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
