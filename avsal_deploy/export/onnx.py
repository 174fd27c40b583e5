"""ONNX export of the components, graph clean-up, the TensorRT op audit and the manifest.

``export_model`` writes into one directory: an ONNX file per component (dynamic batch, opset
chosen for TensorRT 10), ``weights.safetensors`` (the weights the graphs were made from, for the
torch backend and for provenance) and ``manifest.json``, which :func:`avsal_deploy.engine.open`,
``avsal build-engines`` and the Triton repository read.
"""

from __future__ import annotations

import inspect
import json
import logging
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import onnx
import torch

from avsal_deploy._version import __version__
from avsal_deploy.errors import AvsalError
from avsal_deploy.export.components import component_module, component_specs
from avsal_deploy.export.graph import fold_conv3d as fold_2d
from avsal_deploy.models.build import SaliencyModel
from avsal_deploy.models.weights import save_checkpoint
from avsal_deploy.specs import ComponentSpec, sha256_file

# TensorRT 10's ONNX parser handles opsets 9-20; 18 is the dynamo exporter's native opset.
OPSET = 18
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"

# ONNX operators supported by TensorRT 10's ONNX parser (onnx-tensorrt docs/operators.md), the
# subset a saliency model can plausibly emit. The audit fails on anything else, so a new op is a
# decision someone makes, not a surprise on the GPU machine.
TENSORRT_OPS = frozenset(
    """
    Abs Add And ArgMax ArgMin AveragePool BatchNormalization Cast Ceil Clip Concat Constant
    ConstantOfShape Conv ConvTranspose Cos CumSum DepthToSpace Div Dropout Einsum Elu Equal Erf Exp
    Expand Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalMaxPool
    Greater GreaterOrEqual GroupNormalization HardSigmoid Identity InstanceNormalization
    LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax MatMul Max MaxPool Mean Min Mod Mul
    Neg Not Or Pad Pow PRelu Range Reciprocal ReduceL2 ReduceMax ReduceMean ReduceMin ReduceProd
    ReduceSum ReduceSumSquare Relu Reshape Resize Round ScatterElements ScatterND Selu Shape Sigmoid
    Sign Sin Slice Softmax Softplus Split Sqrt Squeeze Sub Sum Tanh Tile TopK Transpose Trilu
    Unsqueeze Where Xor
    """.split()
)


def graph_ops(model: onnx.ModelProto) -> set[str]:
    """Every op type in the graph, its subgraphs and its local functions."""
    ops: set[str] = set()

    def visit(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            ops.add(node.op_type)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                for g in attr.graphs:
                    visit(g)

    visit(model.graph)
    for fn in model.functions:
        ops.update(n.op_type for n in fn.node)
    return ops


def audit_tensorrt_ops(model: onnx.ModelProto) -> set[str]:
    """Ops in ``model`` that TensorRT's ONNX parser does not support (empty = all supported)."""
    return graph_ops(model) - TENSORRT_OPS


def _name_batch_axes(model: onnx.ModelProto) -> None:
    """Give the dynamic leading axis of every graph input and output the name ``batch``."""
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"


def export_component(
    model: SaliencyModel, spec: ComponentSpec, path: Path, opset: int = OPSET, fold_conv3d: bool = True
) -> onnx.ModelProto:
    """Export one component with a dynamic batch axis; the example batch is 2 (see below).

    ``fold_conv3d`` rewrites the factorised 3-D convolutions as 2-D ones (exactly; see
    :mod:`avsal_deploy.export.graph`), which ONNX Runtime's CPU kernels run at a higher rate."""
    module = component_module(model, spec).eval()
    # The dynamo exporter specialises the batch to the example's size when it is 1: export at 2.
    args = tuple(torch.from_numpy(x) for x in spec.sample_inputs(batch=2).values())
    batch = torch.export.Dim("batch", min=1, max=max(2, spec.batch_profile[2]))
    dynamic = _batch_axes(module, len(args), batch)
    exporter_log = logging.getLogger("torch.onnx")  # "torchvision is not installed" notices
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = _export(module, args, spec, dynamic, opset)
    finally:
        exporter_log.setLevel(level)
    proto = program.model_proto
    _name_batch_axes(proto)
    if fold_conv3d:
        proto, _ = fold_2d(proto)
    onnx.checker.check_model(proto)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(path))
    return proto


def _batch_axes(module: torch.nn.Module, n_inputs: int, batch: Any) -> tuple[Any, ...]:
    """``dynamic_shapes`` for ``module``'s forward, by position (the spec names the inputs): axis 0
    of every input is the batch. torch.export wants the inputs a ``*args`` parameter gathers as
    one tuple in its place."""
    params = list(inspect.signature(module.forward).parameters.values())
    named = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    axes: list[Any] = [{0: batch} for _ in named[:n_inputs]]
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        axes.append(tuple({0: batch} for _ in range(n_inputs - len(axes))))
    return tuple(axes)


def _export(module: torch.nn.Module, args: tuple, spec: ComponentSpec, dynamic: tuple, opset: int) -> Any:
    return torch.onnx.export(
        module,
        args,
        dynamo=True,
        input_names=spec.input_names,
        output_names=spec.output_names,
        dynamic_shapes=dynamic,
        opset_version=opset,
        optimize=True,
        verbose=False,
    )


def export_model(
    model: SaliencyModel,
    out_dir: str | Path,
    checkpoint: str | Path | None = None,
    max_batch: int = 8,
    ddim_steps: int | None = None,
    components: Iterable[str] | None = None,
    opset: int = OPSET,
    fold_conv3d: bool = True,
) -> dict[str, Any]:
    """Export every component of ``model`` into ``out_dir`` and write the manifest.

    ``checkpoint`` (the file the weights came from) is recorded with its checksum; the weights
    themselves are always written beside the graphs as ``weights.safetensors``. Raises
    :class:`AvsalError` when a graph contains an op TensorRT cannot parse.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config, variant = model.config, model.variant
    specs = component_specs(config, variant, max_batch=max_batch, ddim_steps=ddim_steps)
    if components is not None:
        wanted = set(components)
        unknown = wanted - set(specs)
        if unknown:
            raise AvsalError(f"unknown component(s) {sorted(unknown)}: {variant} has {list(specs)}")
        specs = {k: v for k, v in specs.items() if k in wanted}
    model = model.eval()
    entries: dict[str, Any] = {}
    for name, spec in specs.items():
        path = out / spec.onnx_file
        proto = export_component(model, spec, path, opset, fold_conv3d)
        bad = audit_tensorrt_ops(proto)
        if bad:
            raise AvsalError(f"{path}: ops not supported by TensorRT: {', '.join(sorted(bad))}")
        entries[name] = {**spec.to_manifest(), "sha256": sha256_file(path), "ops": sorted(graph_ops(proto))}
    weights = out / WEIGHTS
    save_checkpoint(model, weights, config, variant)
    manifest = {
        "format": 1,
        "avsal_version": __version__,
        "profile": config.profile,
        "variant": variant,
        "opset": opset,
        "rewrites": ["fold_conv3d"] if fold_conv3d else [],
        "config": config.to_dict(),
        "architecture_fingerprint": config.architecture_fingerprint(),
        "weights": {"file": WEIGHTS, "sha256": sha256_file(weights)},
        "checkpoint": (
            {"path": str(Path(checkpoint).resolve()), "sha256": sha256_file(Path(checkpoint))}
            if checkpoint
            else None
        ),
        "components": entries,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest
