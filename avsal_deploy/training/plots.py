"""Figures of training runs (matplotlib, Agg backend).

matplotlib is imported inside the functions (it is an optional dependency, ``avsal-deploy[train]``),
with the non-interactive Agg backend so that plots render on servers without a display.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from avsal_deploy.errors import BackendUnavailableError

_VAL_METRICS = ("cc", "nss", "sim", "kld")


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or a clear error where matplotlib is missing."""
    try:
        import matplotlib
    except ImportError as exc:
        raise BackendUnavailableError(
            "matplotlib is not installed: pip install 'avsal-deploy[train]' to draw training plots"
        ) from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def read_metrics_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file (empty lines skipped)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_metrics(log_path: str | Path, out_path: str | Path) -> Path | None:
    """Training loss (per log interval) and validation metrics (per epoch) as one PNG.

    Returns the PNG's path, or None when the log has no training record yet.
    """
    records = read_metrics_log(log_path) if Path(log_path).is_file() else []
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    if not train:
        return None
    plt = pyplot()
    shown = [k for k in _VAL_METRICS if val and k in val[0]]
    fig, axes = plt.subplots(1, 1 + len(shown), figsize=(4.2 * (1 + len(shown)), 3.4), squeeze=False)
    ax = axes[0][0]
    steps = [r["step"] for r in train]
    for key, style in (("loss", "-"), ("oneshot", "--"), ("diffusion", ":")):
        values = [r.get(key) for r in train]
        if any(v not in (None, 0.0) for v in values):
            ax.plot(steps, [float("nan") if v is None else v for v in values], style, label=key)
    ax.set_xlabel("step")
    ax.set_title("training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    vsteps = [r["step"] for r in val]
    for ax, key in zip(axes[0][1:], shown, strict=True):  # one panel per metric: scales differ
        ax.plot(vsteps, [r.get(key, float("nan")) for r in val], "o-")
        ax.set_xlabel("step")
        ax.set_title(f"validation {key.upper()}")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out_path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
