"""Compute of an exported ONNX graph, counted from its shapes: the FLOPs behind "share of peak".

Only the GEMM-class operators are counted (``Conv``, ``ConvTranspose``, ``MatMul``, ``Gemm``, and
their Q/DQ-free integer forms), at 2 FLOPs per multiply-add: the work a GEMM-bound engine can do at
the machine's GEMM rate. Element-wise operators, normalisations, softmax and resizes are real time
but are not counted as FLOPs (they are memory-bound, which is exactly what a low share of peak
exposes). Shapes come from ONNX shape inference with the batch axes fixed to ``batch``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

FUSED = {"FusedConv": "Conv", "FusedMatMul": "MatMul", "FusedGemm": "Gemm"}  # ONNX Runtime fused forms
GEMM_OPS = (
    "Conv",
    "ConvTranspose",
    "MatMul",
    "Gemm",
    "ConvInteger",
    "MatMulInteger",
    "QLinearConv",
    "QLinearMatMul",
)


@dataclass
class GraphFlops:
    """FLOPs (2 per multiply-add) of one graph at one batch size."""

    total: int = 0
    by_op: dict[str, int] = field(default_factory=dict)
    by_node: dict[str, int] = field(default_factory=dict)
    uncounted: list[str] = field(default_factory=list)  # GEMM-class nodes whose shapes were unknown

    @property
    def gflop(self) -> float:
        return self.total / 1e9


def _fixed_batch(model, batch: int):
    """A copy of ``model`` whose symbolic input dims are ``batch`` (export specs name only batch axes)."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    initializers = {i.name for i in model.graph.initializer}
    for tensor in [*model.graph.input, *model.graph.output]:
        if tensor.name in initializers:
            continue
        for dim in tensor.type.tensor_type.shape.dim:
            if dim.dim_param or not dim.HasField("dim_value"):
                dim.ClearField("dim_param")
                dim.dim_value = batch
    del model.graph.value_info[:]  # re-inferred from the fixed inputs
    return onnx.shape_inference.infer_shapes(model, data_prop=True)


def _shapes(model) -> dict[str, tuple[int, ...] | None]:
    out: dict[str, tuple[int, ...] | None] = {}
    for tensor in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        dims = tensor.type.tensor_type.shape.dim
        vals = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
        out[tensor.name] = None if not dims or any(v <= 0 for v in vals) else vals
    for init in model.graph.initializer:
        out[init.name] = tuple(init.dims)
    return out


def _attr(node, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _node_flops(node, shapes: dict[str, tuple[int, ...] | None]) -> int | None:
    def shape(i: int, outputs: bool = False) -> tuple[int, ...] | None:
        names = node.output if outputs else node.input
        return shapes.get(names[i]) if i < len(names) and names[i] else None

    op = FUSED.get(node.op_type, node.op_type)
    if op in ("Conv", "ConvInteger"):
        w, y = shape(1), shape(0, outputs=True)
        if w is None or y is None:
            return None
        return 2 * math.prod(y) * math.prod(w[1:])  # per output: Cin/g * prod(K) multiply-adds
    if op == "QLinearConv":
        w, y = shape(3), shape(0, outputs=True)
        return None if w is None or y is None else 2 * math.prod(y) * math.prod(w[1:])
    if op == "ConvTranspose":
        x, w = shape(0), shape(1)
        if x is None or w is None:
            return None
        return 2 * math.prod(x) * math.prod(w[1:])  # weight [Cin, Cout/g, *K]: per input element
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul"):
        a = shape(0)
        y = shape(0, outputs=True)
        if a is None or y is None:
            return None
        return 2 * math.prod(y) * a[-1]
    if op == "Gemm":
        a, y = shape(0), shape(0, outputs=True)
        if a is None or y is None:
            return None
        k = a[0] if _attr(node, "transA", 0) else a[-1]
        return 2 * math.prod(y) * k
    return 0


def executed_graph(onnx_file: str | Path, out_file: str | Path) -> Path:
    """The work ONNX Runtime executes: ``onnx_file`` after its basic graph optimisations
    (constant folding, common-subexpression elimination, redundant nodes), which keep standard
    operators (the later fusions change no arithmetic and their contrib operators have no shape
    inference). In an unrolled DDIM graph, CSE computes the condition-only branches of the UNet
    (the audio projections, the conditions' own paths) once instead of once per step."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(out_file)
    ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
    return Path(out_file)


def count_flops(onnx_file: str | Path, batch: int = 1, executed: bool = False) -> GraphFlops:
    """GEMM-class FLOPs of ``onnx_file`` at ``batch`` (see the module docstring); ``executed``:
    of the graph ONNX Runtime runs after its optimisations (:func:`executed_graph`)."""
    import tempfile

    import onnx

    if executed:
        with tempfile.TemporaryDirectory() as tmp:
            return count_flops(executed_graph(onnx_file, Path(tmp) / "executed.onnx"), batch)
    model = _fixed_batch(onnx.load(str(onnx_file), load_external_data=False), batch)
    shapes = _shapes(model)
    result = GraphFlops()
    for node in model.graph.node:
        flops = _node_flops(node, shapes)
        if flops is None:
            result.uncounted.append(node.name or node.op_type)
            continue
        if flops:
            result.total += flops
            result.by_op[node.op_type] = result.by_op.get(node.op_type, 0) + flops
            result.by_node[node.name] = flops
    return result
