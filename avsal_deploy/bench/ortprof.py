"""Where an ONNX Runtime session spends its time, per node and per operator type.

Runs a component with ONNX Runtime's built-in profiler (``SessionOptions.enable_profiling``),
reads the Chrome-trace JSON it writes, and sums each node's kernel time over the profiled runs.
ONNX Runtime fuses and renames nodes (``FusedConv``, ``NchwcConv``, ``FusedMatMul``, ...), so the
graph's GEMM-class FLOPs (:mod:`avsal_deploy.bench.flops`) are joined per operator FAMILY (conv,
matmul) rather than per node; each family gets its achieved GFLOP/s: compute-bound kernels sit near the machine's GEMM rate, memory-bound ones
(depthwise convolutions, element-wise weightings, normalisations, resizes) near zero.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avsal_deploy.bench.flops import count_flops

FAMILIES = {
    "conv": ("Conv", "FusedConv", "NchwcConv", "ConvTranspose", "ConvInteger", "QLinearConv"),
    "matmul": (
        "MatMul",
        "FusedMatMul",
        "Gemm",
        "FusedGemm",
        "MatMulInteger",
        "QLinearMatMul",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "MatMulNBits",
    ),
}


def family(op: str) -> str:
    """The operator family of an ONNX or ONNX Runtime-fused operator type (else the type itself)."""
    for name, members in FAMILIES.items():
        if op in members:
            return name
    return op


@dataclass
class OpTime:
    op: str  # an operator family (conv, matmul) or another operator type
    ms: float  # mean per run
    share: float  # of the summed kernel time
    nodes: int
    gflop: float  # per run
    gflops: float | None  # achieved rate (None for uncounted operator types)


@dataclass
class NodeProfile:
    component: str
    runs: int
    kernel_ms: float  # summed node kernel time per run
    ops: list[OpTime] = field(default_factory=list)
    top_nodes: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "component": self.component,
            "runs": self.runs,
            "kernel_ms": round(self.kernel_ms, 3),
            "ops": [vars(o) for o in self.ops],
            "top_nodes": self.top_nodes,
        }


def _kernel_times(trace_file: Path) -> dict[str, tuple[str, float]]:
    """node name -> (op type, summed kernel microseconds) from an ONNX Runtime profile."""
    events = json.loads(trace_file.read_text())
    out: dict[str, tuple[str, float]] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        name = e["name"][: -len("_kernel_time")]
        op = e.get("args", {}).get("op_name", "?")
        prev = out.get(name, (op, 0.0))[1]
        out[name] = (op, prev + float(e.get("dur", 0)))
    return out


def profile_component(
    onnx_file: str | Path,
    feeds: Mapping[str, np.ndarray],
    component: str = "",
    runs: int = 3,
    threads: int | None = None,
    top: int = 15,
) -> NodeProfile:
    """Per-operator-type and top-node kernel times of ``runs`` runs (after one warm-up run)."""
    import onnxruntime as ort

    batch = int(next(iter(feeds.values())).shape[0])
    flops = count_flops(onnx_file, batch=batch)
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads or len(os.sched_getaffinity(0))
        opts.inter_op_num_threads = 1
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "prof")
        session = ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        inputs = {n: np.ascontiguousarray(feeds[n], np.float32) for n in names}
        for _ in range(runs + 1):
            session.run(None, inputs)
        trace = Path(session.end_profiling())
        times = _kernel_times(trace)
    # The first run is the warm-up: ONNX Runtime profiles it too, so scale sums to `runs` runs.
    scale = 1.0 / (runs + 1)
    total_us = sum(us for _, us in times.values()) * scale
    per_op: dict[str, list[float]] = {}
    for op, (us, n) in _sum_by_family(times, scale).items():
        per_op[op] = [us, n, 0.0]
    for op, flop in flops.by_op.items():
        per_op.setdefault(family(op), [0.0, 0, 0.0])[2] += flop
    ops = []
    for op, (us, n, flop) in sorted(per_op.items(), key=lambda kv: -kv[1][0]):
        rate = flop / (us * 1e-6) / 1e9 if flop and us else None
        share = us / total_us if total_us else 0.0
        ops.append(
            OpTime(
                op, round(us / 1e3, 3), round(share, 4), int(n), round(flop / 1e9, 3), rate and round(rate, 1)
            )
        )
    top_nodes = [
        {"node": name, "op": op, "ms": round(us * scale / 1e3, 3)}
        for name, (op, us) in sorted(times.items(), key=lambda kv: -kv[1][1])[:top]
    ]
    return NodeProfile(component, runs, total_us / 1e3, ops, top_nodes)


def _sum_by_family(times: Mapping[str, tuple[str, float]], scale: float) -> dict[str, tuple[float, int]]:
    out: dict[str, tuple[float, int]] = {}
    for op, us in times.values():
        key = family(op)
        prev_us, prev_n = out.get(key, (0.0, 0))
        out[key] = (prev_us + us * scale, prev_n + 1)
    return out
