"""The exact 2-D rewrites of factorised 3-D convolutions (avsal_deploy.export.graph):
same outputs as the 3-D graph at two batch sizes, only the foldable kernels folded, activations
taken inside the fold."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from avsal_deploy.export.graph import fold_conv3d


def _conv(name, x, y, w, **attrs):
    return helper.make_node("Conv", [x, w], [y], name=name, **attrs)


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)

    def weight(name, shape):
        return numpy_helper.from_array((0.2 * rng.standard_normal(shape)).astype(np.float32), name)

    inits = [
        weight("ws", (6, 4, 1, 3, 3)),  # spatial, stride 2 in space, padded
        weight("wt", (6, 3, 3, 1, 1)),  # temporal, grouped (2), stride 2 in time, padded
        weight("wp", (5, 6, 1, 1, 1)),  # pointwise (folded as temporal: a reshape only)
        weight("wf", (5, 5, 3, 3, 3)),  # full 3-D: left alone
        weight("wd", (5, 1, 1, 2, 2)),  # depthwise spatial with stride = kernel (ECA-like)
    ]
    nodes = [
        _conv("spatial", "x", "a", "ws", strides=[1, 2, 2], pads=[0, 1, 1, 0, 1, 1]),
        helper.make_node("Relu", ["a"], ["a_relu"], name="relu_a"),
        _conv("temporal", "a_relu", "b", "wt", strides=[2, 1, 1], pads=[1, 0, 0, 1, 0, 0], group=2),
        _conv("pointwise", "b", "c", "wp"),
        _conv("full", "c", "d", "wf", pads=[1, 1, 1, 1, 1, 1]),
        _conv("depthwise", "d", "e", "wd", strides=[1, 2, 2], group=5),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 6, 10, 12])],
        [
            helper.make_tensor_value_info("e", TensorProto.FLOAT, ["batch", 5, 3, 2, 3]),
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 6, 6, 5, 6]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


@pytest.mark.parametrize("batch", [1, 2])
def test_folded_graph_equals_the_3d_graph(batch: int) -> None:
    model = _model()
    folded, count = fold_conv3d(model)
    assert count == 4  # spatial, temporal, pointwise, depthwise; the (3, 3, 3) stays 3-D
    x = np.random.default_rng(batch).standard_normal((batch, 4, 6, 10, 12)).astype(np.float32)
    for ref, out in zip(_run(model, x), _run(folded, x), strict=True):
        assert out.shape == ref.shape
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_fold_leaves_full_kernels_and_keeps_shared_outputs() -> None:
    folded, _ = fold_conv3d(_model())
    convs = [n for n in folded.graph.node if n.op_type == "Conv"]
    weights = {i.name: tuple(i.dims) for i in folded.graph.initializer}
    ranks = sorted(len(weights[n.input[1]]) for n in convs)
    assert ranks == [4, 4, 4, 4, 5]
    # "a" is a graph output: its Relu is not taken into the fold (the output must stay pre-Relu).
    relus = [n for n in folded.graph.node if n.op_type == "Relu"]
    assert len(relus) == 1 and relus[0].input == ["a"]


def test_fold_takes_a_private_relu_inside() -> None:
    model = _model()
    del model.graph.output[1]  # "a" is now only the Relu's input
    folded, _ = fold_conv3d(model)
    relu = next(n for n in folded.graph.node if n.op_type == "Relu")
    producer = next(n for n in folded.graph.node if relu.input[0] in n.output)
    assert producer.op_type == "Conv" and len(_weight_dims(folded, producer)) == 4
    x = np.random.default_rng(0).standard_normal((2, 4, 6, 10, 12)).astype(np.float32)
    np.testing.assert_allclose(_run(folded, x)[0], _run(model, x)[0], rtol=1e-5, atol=1e-5)


def _weight_dims(model: onnx.ModelProto, node: onnx.NodeProto) -> tuple[int, ...]:
    return next(tuple(i.dims) for i in model.graph.initializer if i.name == node.input[1])
