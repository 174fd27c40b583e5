"""Every model family at its deployed size: seconds per output frame through ONNX Runtime and
torch eager, batch 1 and 8, side by side in one run (``avsal models``' measured cost).

One case = one window per output frame (stride 1: ``predict_window`` at the family's default
DDIM steps), ours at the profiles of ``AVSAL_BENCH_PROFILES``, the official families at their
input mode (224 x 384); ``AVSAL_BENCH_FAMILIES`` (comma-separated) runs only some families and
``AVSAL_BENCH_BATCHES`` (e.g. ``1``) only some batches.
Weights are random (seed 0; an official family's own init): the cost is the architecture's. Each
family is exported once (:func:`avsal_deploy.bench.exports.family_export`, cached on disk) and
both engines run that export's graphs and weights. A window takes seconds at these sizes on a
small CPU, so each case is ``WARMUP`` + ``ROUNDS`` calls (:mod:`avsal_deploy.bench.zoo`), and
torch eager at batch 8 runs only where it is estimated (from its batch-1 time) to fit
``TORCH_B8_BUDGET_S``; the batch-1 case records that estimate, so the report says why.

Quick (``AVSAL_BENCH_QUICK=1``, ``avsal bench --quick``): batch 1 only, the official families at
64 x 96 ("reduced"; AViNet, 224 x 384 only, left out). ``avsal bench --out DIR`` derives the table and
``DIR/model_zoo_costs.json`` (:mod:`avsal_deploy.bench.report`).
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from avsal_deploy import engine as engines
from avsal_deploy.bench.exports import bench_profiles, family_export, quick
from avsal_deploy.bench.flops import count_flops
from avsal_deploy.bench.machine import library_versions
from avsal_deploy.bench.zoo import (
    ROUNDS,
    TORCH_B8_BUDGET_S,
    WARMUP,
    ZooEntry,
    bench_batches,
    bench_families,
    torch_b8_estimate,
    zoo_entries,
)
from avsal_deploy.specs import sample_window

QUICK = quick()
ENTRIES = zoo_entries(bench_profiles(), QUICK, bench_families())
BACKENDS = ("onnxruntime", "torch")
# per family: ONNX Runtime and torch at batch 1, then at batch 8 (torch b8 reads torch b1's time)
CASES = [(e, b, n) for e in ENTRIES for n in ((1,) if QUICK else bench_batches()) for b in BACKENDS]
_TORCH_B1: dict[str, float] = {}  # entry id -> seconds of a batch-1 torch window
_GFLOP: dict[str, float] = {}  # entry id -> GEMM-class GFLOP of one window


class _Engines:
    """The engines of one entry at a time (paper-size families hold GBs of weights and arenas)."""

    def __init__(self) -> None:
        self.key: str | None = None
        self.open: dict[str, engines.Engine] = {}

    def get(self, entry: ZooEntry) -> dict[str, engines.Engine]:
        if self.key != entry.id:
            self.close()
            export = family_export(entry.config, entry.family)
            self.open = {b: engines.open(export, b) for b in BACKENDS}
            self.key = entry.id
        return self.open

    def close(self) -> None:
        for eng in self.open.values():
            eng.close()
        self.open, self.key = {}, None
        gc.collect()


@pytest.fixture(scope="module")
def zoo_engines():
    held = _Engines()
    yield held.get
    held.close()


def window_gflop(entry: ZooEntry, eng: engines.Engine) -> float:
    """GEMM-class GFLOP of one window: the encoders and decoder once, ``steps`` UNet steps."""
    if entry.id not in _GFLOP:
        directory = Path(eng.directory)  # the ONNX Runtime engine's export
        steps = entry.info()["steps"]
        total = 0.0
        for name, spec in eng.specs.items():
            gflop = count_flops(directory / spec.onnx_file, 1).gflop
            total += steps * gflop if name == "unet_step" else gflop
        _GFLOP[entry.id] = total
    return _GFLOP[entry.id]


def _window(eng: engines.Engine, batch: int, times: list[float]):
    w = sample_window(eng.specs, batch=batch, seed=0)
    audio = w.get("audio", np.zeros((batch, 0), np.float32))
    noise = eng.make_noise(batch, 0)

    def run() -> np.ndarray:
        t0 = time.perf_counter()
        out = eng.predict_window(w["frames"], audio, None, noise, envelope=w.get("envelope"))
        times.append(time.perf_counter() - t0)
        return out

    return run


def _torch_b1_seconds(entry: ZooEntry, eng: engines.Engine) -> float:
    """The batch-1 torch window time of this run, or (that case not run) one timed window."""
    if entry.id not in _TORCH_B1:
        times: list[float] = []
        run = _window(eng, 1, times)
        run(), run()  # the first call pays one-time allocations
        _TORCH_B1[entry.id] = times[-1]
    return _TORCH_B1[entry.id]


@pytest.mark.parametrize(("entry", "backend", "batch"), CASES, ids=[f"{e.id}-{b}-b{n}" for e, b, n in CASES])
def test_zoo_window(benchmark, zoo_engines, entry: ZooEntry, backend: str, batch: int) -> None:
    held = zoo_engines(entry)
    eng = held[backend]
    if backend == "torch" and batch > 1:
        estimate = torch_b8_estimate(_torch_b1_seconds(entry, eng))
        if estimate > TORCH_B8_BUDGET_S:
            pytest.skip(
                f"{entry.id}: torch eager at batch {batch} would take about {estimate:.0f} s "
                f"(over {TORCH_B8_BUDGET_S:.0f} s); ONNX Runtime only"
            )
    gflop = window_gflop(entry, held["onnxruntime"])
    threads = {"torch_threads": torch.get_num_threads()} if backend == "torch" else {}
    c = entry.config
    benchmark.group = f"model zoo: {entry.id}, batch {batch} (one window per frame)"
    benchmark.extra_info.update(
        metric="zoo",
        **entry.info(),
        backend=backend,
        batch=batch,
        gflop_per_window=gflop,
        gflop=gflop * batch,
        quick=QUICK,
        cpus=len(os.sched_getaffinity(0)),
        **threads,
        rounds=ROUNDS,
        warmup_rounds=WARMUP,
        **library_versions(),
    )
    times: list[float] = []
    out = benchmark.pedantic(_window(eng, batch, times), rounds=ROUNDS, warmup_rounds=WARMUP, iterations=1)
    assert out.shape == (batch, 1, c.video.height, c.video.width)
    if backend == "torch" and batch == 1:
        _TORCH_B1[entry.id] = statistics.median(times[-ROUNDS:])
    if backend == "torch" and batch == 1 and not QUICK:  # the report says why torch b8 did not run
        benchmark.extra_info["torch_b8_estimate_s"] = round(torch_b8_estimate(_TORCH_B1[entry.id]), 1)
