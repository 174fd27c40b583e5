"""Peak memory of the Saliency-UNet's cross-attention alone (DiffSal Table 4's memory figure).

DiffSal's Table 4 reports the memory footprint of the WHOLE model (MViTv2-S + VGGish + Saliency-UNet,
76.57 M parameters) with ECA (1.20 GB) and with standard cross-attention (5.32 GB), "evaluated based
on input audio of size 1x9x112x192 and video of size 3x16x224x384" (batch 1); the paper does not
say whether that is training or inference, nor how it was measured. What this module measures is
narrower and says so: the attention blocks alone.

What runs. Only the 4 :class:`~avsal_deploy.models.unet.SpatioTemporalCrossAttention` blocks of the
MAM stages, built from a config (widths, heads, kernels, attention mode), each run once (torch,
``no_grad``, float32, batch 1, 1 thread) on random ``[f_v, f_s]`` and ``f_avs`` inputs of its
scale's shape ``[1, C_i, T_i + 1, H_i, W_i]`` for the variant's window, in a FRESH child process
(:func:`measure_attention_peak`). A stage's peak is the memory the forward needs on top of what was
allocated before it (the weights and its two inputs are not counted; its output is); the
attention's peak is the largest stage peak (the stages run one after another, as in the UNet).

How it is measured (two independent counters, both reported):

- ``rss``: the child's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs`` before
  each stage) minus its resident set just before the stage. The child runs with glibc's mmap
  threshold fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_``), so every tensor buffer above it is its own
  mapping, returned to the system when freed, and the resident set follows the live buffers page
  for page (including workspace a kernel allocates outside torch's allocator). A warm-up pass runs
  first, so one-time library buffers (oneDNN / BLAS) are not charged to the attention. Buffers
  under 64 KiB come from the heap and may reuse freed memory, so this counter under-counts on
  tiny profiles (sub-MB peaks); at ``small`` and ``paper`` both counters agree within 1%.
- ``torch``: the peak of live bytes in torch's own CPU allocator events
  (``torch.profiler.profile(profile_memory=True)``: every allocation and free, in order).

Validation (:func:`validate_method`, run in the tests): for one ``[n, 64] @ [64, n]`` MatMul both
counters report the ``4 n^2`` bytes of its output within 10%. ``tracemalloc`` would see nothing
(torch does not allocate through Python).

:func:`eca_memory_report` runs ``eca``, ``standard`` and ``eca3d`` at a profile (default: the
``paper`` profile, ``diffsal`` window = Table 4's 16 x 224 x 384 input) and returns the peaks in
GB, ``eca_memory_ratio = peak(eca) / peak(standard)`` and the paper's figures beside them.
Command line: ``python -m avsal_deploy.models.attention_memory [--profile P] [--variant V]
[--modes eca,standard,eca3d] [--set unet.heads=2] [--validate]`` (prints the report as JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from typing import Any

from avsal_deploy.config import ATTENTION_MODES, Config, load_config, parse_overrides
from avsal_deploy.errors import ConfigError

PAPER_TABLE4_GB = {"eca": 1.20, "standard": 5.32}  # whole model, DiffSal Table 4 (#Mem)
METHOD = (
    "peak resident set (VmHWM reset via /proc/self/clear_refs, glibc mmap threshold 64 KiB) minus the "
    "resident set before each stage, in a fresh child process after a warm-up pass; cross-checked "
    "with torch.profiler CPU allocator events (profile_memory=True)"
)
_CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
_GB = 1e9


# ---------------------------------------------------------------------- parent side
def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def estimated_peak_bytes(config: Config, variant: str, mode: str) -> int:
    """A generous upper estimate of one stage's peak: the score tensor twice (scores + softmax) plus
    ten token-sized buffers, at the largest stage. Used to refuse runs that cannot fit."""
    from avsal_deploy.models.unet import attention_score_shapes

    worst = 0
    for s, c, shape in zip(
        config.video_scales(variant),
        config.unet_channels(variant),
        attention_score_shapes(config, variant, mode),
        strict=True,
    ):
        tokens = (s.frames + 1) * s.height * s.width * c * 4
        worst = max(worst, 2 * math.prod(shape) * 4 + 10 * tokens)
    return worst


def _run_child(payload: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    env = {**os.environ, **_CHILD_ENV}
    proc = subprocess.run(
        [sys.executable, "-m", "avsal_deploy.models.attention_memory", "--child"],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"attention memory child ({payload.get('task')}, {payload.get('mode')}) failed with "
            f"exit code {proc.returncode}: {proc.stderr.strip()[-2000:]}"
        )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"attention memory child printed no result: {proc.stdout[-500:]!r}")
    return json.loads(lines[-1])


def measure_attention_peak(
    config: Config | str = "paper", variant: str = "diffsal", mode: str = "eca", *, check_fit: bool = True
) -> dict[str, Any]:
    """Peak memory of the 4 MAM attention blocks alone, run in a fresh process (module docstring).

    Returns ``peak_bytes`` (resident-set counter, the headline), ``torch_peak_bytes`` (torch
    allocator counter), ``peak_gb``, per-stage figures (``stages``: scale, input shape, both
    counters, the analytic score-tensor bytes), ``score_bytes`` (analytic, one batch item) and the
    set-up (profile, variant, mode, batch 1, threads 1, method). Raises :class:`MemoryError` before
    starting when the estimated need exceeds 80% of the machine's available memory.
    """
    from avsal_deploy.models.unet import UNET_VARIANTS, attention_memory_bytes

    cfg = load_config(config) if isinstance(config, str) else config
    if mode not in ATTENTION_MODES:
        raise ConfigError(f"attention mode {mode!r}: choose one of {', '.join(ATTENTION_MODES)}")
    if variant not in UNET_VARIANTS:
        raise ConfigError(f"variant {variant!r} has no Saliency-UNet (choose {', '.join(UNET_VARIANTS)})")
    need, available = estimated_peak_bytes(cfg, variant, mode), _mem_available()
    if check_fit and available is not None and need > 0.8 * available:
        raise MemoryError(
            f"attention memory ({cfg.profile}, {variant}, {mode}): a stage needs up to {need / _GB:.2f} GB, "
            f"the machine has {available / _GB:.2f} GB available; measure a smaller profile"
        )
    result = _run_child({"task": "attention", "config": cfg.to_dict(), "variant": variant, "mode": mode})
    result.update(
        profile=cfg.profile,
        variant=variant,
        mode=mode,
        batch=1,
        threads=1,
        score_bytes=attention_memory_bytes(cfg, variant, mode),
        peak_gb=result["peak_bytes"] / _GB,
        method=METHOD,
    )
    return result


def validate_method(n: int = 4096) -> dict[str, Any]:
    """Both counters on one ``[n, 64] @ [64, n]`` float32 MatMul in a fresh process: their peaks and
    the output's exact size ``4 n^2`` (they should agree within a few percent)."""
    result = _run_child({"task": "matmul", "n": n})
    result["expected_bytes"] = 4 * n * n
    return result


def eca_memory_report(
    profile: str | Config = "paper", variant: str = "diffsal", modes: tuple[str, ...] = ATTENTION_MODES
) -> dict[str, Any]:
    """Measured attention peaks for ``modes`` at ``profile`` and the ratio the bench report needs.

    Keys: ``eca_memory_ratio`` = peak(eca) / peak(standard) (resident-set counter),
    ``eca_memory_ratio_torch`` (torch allocator counter), ``{mode}_peak_gb``, ``{mode}_peak_bytes``,
    ``{mode}_torch_peak_bytes``, ``{mode}_score_bytes`` (analytic), ``runs`` (the full results),
    ``paper_table4_gb`` / ``paper_ratio`` (the WHOLE model's figures: not the same quantity) and
    ``scope`` saying so.
    """
    cfg = load_config(profile) if isinstance(profile, str) else profile
    runs = {mode: measure_attention_peak(cfg, variant, mode) for mode in modes}
    out: dict[str, Any] = {"profile": cfg.profile, "variant": variant, "batch": 1, "method": METHOD}
    out["unet"] = cfg.to_dict()["unet"]  # widths, heads, mode: what the figures depend on
    for mode, r in runs.items():
        out[f"{mode}_peak_bytes"] = r["peak_bytes"]
        out[f"{mode}_peak_gb"] = r["peak_gb"]
        out[f"{mode}_torch_peak_bytes"] = r["torch_peak_bytes"]
        out[f"{mode}_score_bytes"] = r["score_bytes"]
    if "eca" in runs and "standard" in runs:
        out["eca_memory_ratio"] = runs["eca"]["peak_bytes"] / runs["standard"]["peak_bytes"]
        out["eca_memory_ratio_torch"] = runs["eca"]["torch_peak_bytes"] / runs["standard"]["torch_peak_bytes"]
    out["paper_table4_gb"] = dict(PAPER_TABLE4_GB)
    out["paper_ratio"] = PAPER_TABLE4_GB["eca"] / PAPER_TABLE4_GB["standard"]
    out["scope"] = (
        "ours: the 4 MAM cross-attention blocks alone, inference (no_grad), batch 1, float32; "
        "paper Table 4: the whole DiffSal model's memory footprint at batch 1 (mode not stated)"
    )
    out["runs"] = runs
    return out


# ---------------------------------------------------------------------- child side
def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set (Linux >= 4.0)


def _measure(fn: Any) -> tuple[int, int]:
    """(resident-set peak, torch allocator peak) of ``fn()`` above the state before it."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm-up: one-time library buffers
    _reset_peak()
    before = _status_bytes("VmRSS:")
    fn()
    rss_peak = _status_bytes("VmHWM:") - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return rss_peak, peak


def _child_attention(payload: dict[str, Any]) -> dict[str, Any]:
    import torch

    from avsal_deploy.models.unet import SpatioTemporalCrossAttention, eca_kernels

    cfg = Config.from_dict(payload["config"])
    variant, mode = payload["variant"], payload["mode"]
    torch.manual_seed(0)
    stages = []
    for i, (s, c, kernel) in enumerate(
        zip(cfg.video_scales(variant), cfg.unet_channels(variant), eca_kernels(cfg, mode), strict=True)
    ):
        block = SpatioTemporalCrossAttention(c, cfg.unet.heads, kernel, mode).eval()
        shape = (1, c, s.frames + 1, s.height, s.width)
        x, f_avs = torch.randn(shape), torch.randn(shape)

        def run(block: Any = block, x: Any = x, f_avs: Any = f_avs) -> None:
            with torch.no_grad():
                out = block(x, f_avs)
            del out

        rss_peak, torch_peak = _measure(run)
        stages.append(
            {
                "scale": i,
                "input_shape": list(shape),
                "rss_peak_bytes": rss_peak,
                "torch_peak_bytes": torch_peak,
            }
        )
        del block, x, f_avs
    return {
        "peak_bytes": max(st["rss_peak_bytes"] for st in stages),
        "torch_peak_bytes": max(st["torch_peak_bytes"] for st in stages),
        "stages": stages,
    }


def _child_matmul(payload: dict[str, Any]) -> dict[str, Any]:
    import torch

    n = int(payload["n"])
    a, b = torch.randn(n, 64), torch.randn(64, n)

    def run() -> None:
        out = a @ b
        del out

    rss_peak, torch_peak = _measure(run)
    return {"peak_bytes": rss_peak, "torch_peak_bytes": torch_peak}


def _child_main() -> None:
    import torch

    torch.set_num_threads(1)
    payload = json.loads(sys.stdin.read())
    task = payload["task"]
    result = _child_attention(payload) if task == "attention" else _child_matmul(payload)
    print(json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--variant", default="diffsal")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--modes", default=",".join(ATTENTION_MODES), help="comma-separated modes")
    parser.add_argument("--validate", action="store_true", help="also run the one-MatMul validation")
    args = parser.parse_args(argv)
    if args.child:
        _child_main()
        return 0
    report: dict[str, Any] = {}
    if args.validate:
        report["validation"] = validate_method()
    config = load_config(args.profile, parse_overrides(args.set))
    report.update(eca_memory_report(config, args.variant, tuple(args.modes.split(","))))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
