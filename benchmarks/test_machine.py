"""The machine's limit in the same run as the engines: fp32 GEMM GFLOP/s (ONNX Runtime MLAS and
NumPy BLAS, the higher is the limit). The report divides each engine's achieved GFLOP/s by it."""

from __future__ import annotations

from avsal_deploy.bench.machine import gemm_peak, library_versions


def test_gemm_peak(benchmark) -> None:
    peak = benchmark.pedantic(gemm_peak, kwargs={"size": 2048, "repeats": 5}, rounds=1, iterations=1)
    benchmark.group = "machine: fp32 GEMM 2048^3"
    benchmark.extra_info.update(metric="gemm", **peak.to_dict(), **library_versions())
    assert peak.gflops == max(peak.per_backend.values()) > 0
