"""Measured per-frame cost of each model family: the results file the model-zoo benchmark writes.

``avsal bench`` runs ``benchmarks/test_model_zoo.py`` and writes ``DIR/model_zoo_costs.json``
(:func:`avsal_deploy.bench.zoo.costs_from_report`); ``python -m avsal_deploy.bench.zoo install
DIR/model_zoo_costs.json`` copies it into the package as :data:`COSTS_FILE`, which ``avsal
models`` and :func:`avsal_deploy.model_zoo` read. No figure is typed by hand.

One file holds one run: where and when it was measured (``measured``: date, commit, machine,
library versions) and one row per family and size with its seconds per output frame (one window
per frame, stride 1, the family's default DDIM steps) through ONNX Runtime and torch eager at
batch 1 and 8. A row applies to a zoo entry only when what fixes the cost is the same: the
architecture fingerprint, the frame and audio input shapes and the DDIM steps (:func:`cost_key`);
after a change to any of them the zoo shows ``-`` until the family is measured again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from avsal_deploy.config import Config, resolve_steps
from avsal_deploy.errors import AvsalError

#: The packaged results file (absent until a measurement is installed).
COSTS_FILE = Path(__file__).resolve().parents[1] / "assets" / "model_zoo_costs.json"
FORMAT = 1
#: The engine and batch of the zoo's column.
ZOO_ENGINE, ZOO_BATCH = "onnxruntime", 1
#: Keys of a row's ``s_per_frame``: engine and batch.
SPEEDS = ("onnxruntime_b1", "onnxruntime_b8", "torch_b1", "torch_b8")


def cost_key(config: Config, family: str) -> dict[str, Any]:
    """What fixes a family's cost per window: architecture, input shapes and DDIM steps."""
    return {
        "fingerprint": config.architecture_fingerprint(),
        "frames": list(config.frames_shape(family)),
        "audio": list(config.audio_input_shape(family)),
        "steps": resolve_steps(config, family, None),
    }


def read_costs(path: str | Path | None = None) -> dict[str, Any] | None:
    """The results file at ``path`` (default :data:`COSTS_FILE`), or None where there is none."""
    path = Path(path) if path is not None else COSTS_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AvsalError(f"{path}: cannot read the model-zoo costs: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("rows"), list):
        raise AvsalError(f"{path}: not a model-zoo costs file (format {FORMAT} with rows)")
    return data


def find_row(costs: dict[str, Any] | None, family: str, key: dict[str, Any]) -> dict[str, Any] | None:
    """The measured row of ``family`` whose :func:`cost_key` fields equal ``key``, else None."""
    if not costs:
        return None
    for row in costs["rows"]:
        if row.get("family") == family and all(row.get(k) == v for k, v in key.items()):
            return row
    return None


def seconds_per_frame(row: dict[str, Any] | None, speed: str = f"{ZOO_ENGINE}_b{ZOO_BATCH}") -> float | None:
    """A row's seconds per output frame for ``speed`` (engine_bBATCH), None where not measured."""
    if row is None:
        return None
    value = (row.get("s_per_frame") or {}).get(speed)
    return None if value is None else float(value)


def measured_on(costs: dict[str, Any] | None) -> str | None:
    """One line: when, on what and at which commit the costs were measured."""
    if not costs:
        return None
    m = costs.get("measured") or {}
    date = str(m.get("datetime") or "date unknown")[:10]
    commit = m.get("commit") or "commit unknown"
    if m.get("dirty"):
        commit += " with uncommitted changes"
    libs = ", ".join(f"{k} {m[k]}" for k in ("onnxruntime", "torch") if m.get(k))
    return f"{date}, {machine_line(m)}, {libs or 'library versions unknown'}, commit {commit}"


def machine_line(measured: dict[str, Any]) -> str:
    """The machine a run was measured on, in words: CPU, count and vector extensions."""
    cpu = measured.get("cpu") or "CPU unknown"
    cpus = measured.get("cpus")
    simd = measured.get("simd") or []
    text = f"{cpu}" + (f" x {cpus} CPUs" if cpus else "")
    return text + (f" ({' '.join(_short_simd(simd))})" if simd else "")


def _short_simd(flags: list[str]) -> list[str]:
    """The widest vector extensions of ``flags``: AVX-512 and AMX summarised, else AVX2/AVX."""
    out = []
    if any(f.startswith("amx") for f in flags):
        out.append("AMX")
    if "avx512f" in flags:
        out.append("AVX-512" + (" VNNI" if {"avx512_vnni", "avx512vnni"} & set(flags) else ""))
    elif "avx2" in flags:
        out.append("AVX2")
    elif "avx" in flags:
        out.append("AVX")
    if "fma" in flags and out and out[-1].startswith("AVX2"):
        out[-1] += "+FMA"
    return out or ["no AVX"]
