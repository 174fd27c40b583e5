"""Figures of the audio-relevance experiment (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from avsal_deploy.training.plots import pyplot


def plot_experiment(results: dict[str, Any], out_path: str | Path) -> Path:
    """Bar chart of the audio-relevance results: CC and NSS per condition and model, mean +- std."""
    plt = pyplot()
    conditions = list(results["conditions"])
    models = list(results["models"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.8 / max(len(models), 1)
    for ax, metric in zip(axes, ("cc", "nss"), strict=True):
        for j, model in enumerate(models):
            means = [results["conditions"][c][model][metric]["mean"] for c in conditions]
            stds = [results["conditions"][c][model][metric]["std"] for c in conditions]
            xs = [i + (j - (len(models) - 1) / 2) * width for i in range(len(conditions))]
            ax.bar(xs, means, width, yerr=stds, capsize=3, label=results["models"][model])
        ax.set_xticks(range(len(conditions)), conditions)
        ax.set_ylabel(metric.upper())
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    out = Path(out_path)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
