"""The machine's limit, measured in the same run as the engines: fp32 GEMM FLOP/s.

The rate of one large square fp32 matrix product stands for what a compute-bound network can
reach on this CPU; every engine's achieved FLOP/s (:mod:`avsal_deploy.bench.flops` over its
measured time) is reported as a share of it. Measured three ways, ONNX Runtime's MatMul (MLAS, the
kernels the CPU engine runs), NumPy's BLAS and torch's sgemm where installed, each at the given
thread count; the highest rate is the limit. It is a measured GEMM rate, not the FMA units'
theoretical peak: ONNX Runtime's direct (NCHWc) convolution kernels can exceed it, so a share
above 1 means the network ran faster than one large sgemm call does here.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class GemmPeak:
    gflops: float  # the limit: max over the backends
    backend: str
    size: int
    threads: int
    per_backend: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


def _best_rate(fn, flop: float, repeats: int) -> float:
    fn()  # warm-up (thread pools, page faults)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return flop / best / 1e9


def _ort_matmul(size: int, threads: int):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "gemm",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [size, size]),
        ],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    onnx.checker.check_model(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {n: rng.standard_normal((size, size), dtype=np.float32) for n in ("a", "b")}
    return lambda: session.run(None, feeds)


def library_versions() -> dict[str, str | None]:
    """The versions of the libraries the engines run on (None where not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for lib, dists in (
        ("onnxruntime", ("onnxruntime", "onnxruntime-gpu")),
        ("torch", ("torch",)),
        ("numpy", ("numpy",)),
    ):
        out[lib] = None
        for dist in dists:
            try:
                out[lib] = version(dist)
                break
            except PackageNotFoundError:
                continue
    return out


def gemm_peak(size: int = 2048, threads: int | None = None, repeats: int = 5) -> GemmPeak:
    """fp32 GEMM GFLOP/s of a ``size`` x ``size`` product (best of ``repeats``), the machine's limit."""
    threads = threads or len(os.sched_getaffinity(0))
    flop = 2.0 * size**3
    rates: dict[str, float] = {}
    try:
        rates["onnxruntime"] = _best_rate(_ort_matmul(size, threads), flop, repeats)
    except ImportError:  # onnx is in the export / bench extras
        pass
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    rates["numpy"] = _best_rate(lambda: a @ b, flop, repeats)
    try:  # torch's sgemm (oneDNN / MKL), where torch is installed
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        rates["torch"] = _best_rate(lambda: torch.mm(ta, tb), flop, repeats)
        torch.set_num_threads(previous)
    except ImportError:
        pass
    backend = max(rates, key=rates.__getitem__)
    return GemmPeak(
        round(rates[backend], 2), backend, size, threads, {k: round(v, 2) for k, v in rates.items()}
    )
