"""The model zoo: every model family with its size, cost, inputs, origin and weights licence.

The measured seconds per frame come from the packaged results file of the model-zoo benchmark
(:mod:`avsal_deploy.models.costs`); a family it does not cover shows None (``-``)."""

from __future__ import annotations

from typing import Any

from avsal_deploy.config import FAMILIES, PROFILES, family_config, load_config
from avsal_deploy.models.build import build_model, count_flops, count_parameters
from avsal_deploy.models.costs import cost_key, find_row, measured_on, read_costs, seconds_per_frame


def model_zoo() -> list[dict[str, Any]]:
    """Every model family (ours at each profile, the official ones at their input mode): parameters,
    GFLOPs per window (2 FLOPs per multiply-add, the default DDIM steps), audio, input mode,
    where it comes from and the licence of its released weights; ``s_per_frame_ort_b1``: the
    measured seconds per output frame through ONNX Runtime at batch 1 (one window per frame,
    stride 1), with ``cost_measured`` saying when and on what machine (both None where the
    results file has no measurement of this family at this size)."""
    import torch

    costs = read_costs()
    when = measured_on(costs)
    rows = []
    for name, fam in FAMILIES.items():
        configs = [load_config(p) for p in PROFILES] if fam.origin == "avsal" else [family_config(name)]
        for config in configs:
            with torch.device("meta"):
                model = build_model(config, name)
            flops = count_flops(model, config)
            v = config.video
            audio = {
                "soundnet": f"SoundNet waveform, {config.soundnet_samples()} samples at {config.audio.soundnet_rate} Hz",
                "vggish": f"{config.audio.vggish_slices} log-mel slices at {config.audio.vggish_rate} Hz",
                "diffsal": f"{config.audio.vggish_slices} log-mel examples at the file's rate",
                "none": "none",
            }[fam.audio]
            target = "centre frame" if config.window.mode == "centre" else "last frame"
            s_per_frame = seconds_per_frame(find_row(costs, name, cost_key(config, name)))
            rows.append(
                {
                    "family": name,
                    "origin": fam.origin,
                    "profile": config.profile if fam.origin == "avsal" else None,
                    "params": count_parameters(model)["total"],
                    "gflops_per_window": round(flops["per_window"] / 1e9, 2),
                    "steps": flops["steps"],
                    "s_per_frame_ort_b1": s_per_frame,
                    "cost_measured": when if s_per_frame is not None else None,
                    "audio": fam.has_audio,
                    "input_mode": f"{config.clip_len(name)}x{v.height}x{v.width} ({v.resize} resize), "
                    f"map of the {target}; audio: {audio}",
                    "summary": fam.summary,
                    "source": fam.source,
                    "weights_licence": fam.weights_licence,
                }
            )
    return rows
