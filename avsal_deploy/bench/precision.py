"""Reduced precision and its accuracy cost: an INT8 (Q/DQ) copy of an export, and how far its maps
are from the fp32 engine's on whole clips.

Accuracy is reported as the mean per-frame CC of the two engines' maps (MIT benchmark CC) over
every frame of each clip, and the worst frame; clips used for calibration are never scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from avsal_deploy import engine as engines
from avsal_deploy.export.quantize import calibration_feeds, quantize_export
from avsal_deploy.metrics import cc_batch
from avsal_deploy.pipeline import PredictOptions, Predictor


def synthetic_clips(directory: str | Path, seeds: Sequence[int], seconds: float = 2.0) -> list[Path]:
    """Generated H.264 + AAC clips (one ``relevant`` scene each), made once per seed."""
    from avsal_deploy.data.synthetic import make_sample_clip

    out = []
    for seed in seeds:
        path = Path(directory) / f"clip_{seed}.mp4"
        if not path.exists():
            make_sample_clip(path, seconds=seconds, seed=seed)
        out.append(path)
    return out


def int8_export(
    export_dir: str | Path, out_dir: str | Path, calib_clips: Sequence[Path], max_windows: int = 16
) -> Path:
    """The static INT8 copy of ``export_dir`` (made once), calibrated on ``calib_clips``."""
    out = Path(out_dir)
    if (out / "manifest.json").exists():
        return out
    with engines.open(Path(export_dir), "onnxruntime") as ort:
        feeds = calibration_feeds(ort, calib_clips, max_windows=max_windows)
    return quantize_export(export_dir, out, "int8", feeds)


def map_agreement(
    reference: engines.Engine,
    candidate: engines.Engine,
    clips: Sequence[Path],
    steps: int | None = None,
    stride: int | None = None,
) -> dict[str, float]:
    """Per-frame CC between the two engines' maps over every frame of ``clips`` (same x_T);
    ``stride`` computes every K-th frame's window (the paper profile's windows take seconds)."""
    ccs = []
    for clip in clips:
        options = PredictOptions(steps=steps, stride=stride)
        a = Predictor(reference, options).predict(clip).frame_maps
        b = Predictor(candidate, options).predict(clip).frame_maps
        ccs.append(cc_batch(b, a))
    values = np.concatenate(ccs)
    values = values[np.isfinite(values)]
    return {
        "cc_mean": round(float(values.mean()), 5),
        "cc_min": round(float(values.min()), 5),
        "frames": int(values.size),
    }
