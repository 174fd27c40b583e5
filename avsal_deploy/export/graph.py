"""Exact rewrites of exported graphs that let ONNX Runtime's CPU kernels reach the GEMM rate.

ONNX Runtime's CPU provider runs 2-D convolutions through MLAS's blocked (NCHWc) direct kernels,
but a 3-D convolution through im2col + GEMM: the input is first expanded ``kt*kh*kw`` times in
memory, which makes the factorised convolutions of S3D (a ``(1, k, k)`` spatial conv followed by a
``(k, 1, 1)`` temporal one) memory-bound. Both are 2-D convolutions in disguise:

- ``(1, kh, kw)`` (stride, padding and dilation 1/0/1 in time): fold time into the batch,
  ``[B, C, T, H, W] -> Transpose -> [B*T, C, H, W] -> Conv2d -> [B*T, C', H', W'] -> back``;
- ``(kt, 1, 1)`` (unit stride/dilation and no padding in space): merge the spatial axes,
  ``[B, C, T, H, W] -> [B, C, T, H*W] -> Conv2d (kt, 1) -> [B, C', T', H*W] -> [B, C', T', H, W]``
  (no data movement: a reshape).

The weights are the same numbers (a view without the unit axis), so the result equals the 3-D
convolution up to float summation order; the network, its parameters and its checkpoints do not
change. Full 3-D kernels (``(3, 3, 3)`` in the fusion decoder and the UNet) are left alone.
TensorRT has native 3-D convolutions; the rewrite is applied to the ONNX Runtime graphs only
(:func:`avsal_deploy.export.onnx.export_model`'s ``fold_conv3d``, recorded in the manifest).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _ints(node, name: str, default: Sequence[int]) -> list[int]:
    for a in node.attribute:
        if a.name == name:
            return list(a.ints)
    return list(default)


def _int(node, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _static_shapes(model) -> dict[str, list[int | None]]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    out: dict[str, list[int | None]] = {}
    for t in [*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info]:
        dims = t.type.tensor_type.shape.dim
        out[t.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return out


#: Element-wise activations that commute with the reshapes/transposes of a fold and are taken
#: inside it, so ONNX Runtime fuses them into the 2-D convolution (``FusedConv``).
ACTIVATIONS = ("Relu",)


def fold_conv3d(model, kinds: Sequence[str] = ("spatial", "temporal")) -> tuple[object, int]:
    """A copy of ``model`` with its factorised 3-D convolutions as 2-D ones; returns (model, count).

    ``kinds`` chooses which of the ``(1, k, k)`` (``spatial``) and ``(k, 1, 1)`` (``temporal``)
    forms are folded."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    shapes = _static_shapes(model)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    graph_outputs = {o.name for o in graph.output}
    new_nodes = []
    new_inits = []
    absorbed: set[int] = set()
    count = 0
    for node in graph.node:
        if id(node) in absorbed:
            continue
        rewritten = None
        if node.op_type == "Conv" and node.domain in ("", "ai.onnx") and node.input[1] in inits:
            users = consumers.get(node.output[0], [])
            act = None
            if len(users) == 1 and users[0].op_type in ACTIVATIONS and node.output[0] not in graph_outputs:
                act = users[0]
            rewritten = _fold(node, inits, shapes, count, helper, numpy_helper, kinds, act)
            if rewritten is not None and act is not None:
                absorbed.add(id(act))
        if rewritten is None:
            new_nodes.append(node)
            continue
        nodes, tensors = rewritten
        new_nodes.extend(nodes)
        new_inits.extend(tensors)
        count += 1
    if count:
        del graph.node[:]
        graph.node.extend(new_nodes)
        used = {i for n in graph.node for i in n.input}
        keep = [i for i in graph.initializer if i.name in used]
        del graph.initializer[:]
        graph.initializer.extend(keep + new_inits)
        del graph.value_info[:]
        onnx.checker.check_model(model)
    return model, count


def _fold(node, inits, shapes, k: int, helper, numpy_helper, kinds: Sequence[str], act=None):
    w = numpy_helper.to_array(inits[node.input[1]])
    if w.ndim != 5:
        return None
    x_shape = shapes.get(node.input[0])
    if not x_shape or len(x_shape) != 5 or any(d is None for d in x_shape[1:]):
        return None
    if any(a.name == "auto_pad" and a.s not in (b"", b"NOTSET") for a in node.attribute):
        return None
    kt, kh, kw = w.shape[2:]
    strides = _ints(node, "strides", [1, 1, 1])
    pads = _ints(node, "pads", [0] * 6)
    dil = _ints(node, "dilations", [1, 1, 1])
    group = _int(node, "group", 1)
    _, c, t, h, wd = x_shape
    # The output size from the input and the attributes (not from declared value infos).
    t2, h2, w2 = (
        (n + pads[i] + pads[i + 3] - dil[i] * (kernel - 1) - 1) // strides[i] + 1
        for i, (n, kernel) in enumerate(zip((t, h, wd), (kt, kh, kw), strict=True))
    )
    c2 = int(w.shape[0])
    name = node.name or f"conv3d_{k}"
    p = f"{name}/fold2d"
    bias = list(node.input[2:3])
    out_name = act.output[0] if act is not None else node.output[0]
    conv_out = f"{p}/y0" if act is not None else f"{p}/y"
    tail = (
        [helper.make_node(act.op_type, [conv_out], [f"{p}/y"], name=f"{p}/{act.op_type.lower()}")]
        if act
        else []
    )
    temporal = (
        "temporal" in kinds
        and kh == kw == 1
        and strides[1:] == [1, 1]
        and dil[1:] == [1, 1]
        and pads[1] == pads[2] == pads[4] == pads[5] == 0
    )
    spatial = "spatial" in kinds and kt == 1 and strides[0] == 1 and dil[0] == 1 and pads[0] == pads[3] == 0
    if temporal:
        w2d = numpy_helper.from_array(np.ascontiguousarray(w[:, :, :, :, 0]), f"{p}/w")  # [C', C/g, kt, 1]
        s_in = numpy_helper.from_array(np.array([0, c, t, h * wd], np.int64), f"{p}/shape_in")
        s_out = numpy_helper.from_array(np.array([0, c2, t2, h2, w2], np.int64), f"{p}/shape_out")
        conv = dict(kernel_shape=[kt, 1], strides=[strides[0], 1], pads=[pads[0], 0, pads[3], 0])
        conv.update(dilations=[dil[0], 1], group=group)
        head = [helper.make_node("Reshape", [node.input[0], s_in.name], [f"{p}/x"], name=f"{p}/reshape_in")]
        back = [helper.make_node("Reshape", [f"{p}/y", s_out.name], [out_name], name=f"{p}/reshape_out")]
    elif spatial:
        w2d = numpy_helper.from_array(np.ascontiguousarray(w[:, :, 0]), f"{p}/w")  # [C', C/g, kh, kw]
        s_in = numpy_helper.from_array(np.array([-1, c, h, wd], np.int64), f"{p}/shape_in")
        s_out = numpy_helper.from_array(np.array([-1, t, c2, h2, w2], np.int64), f"{p}/shape_out")
        conv = dict(kernel_shape=[kh, kw], strides=strides[1:], pads=[pads[1], pads[2], pads[4], pads[5]])
        conv.update(dilations=dil[1:], group=group)
        perm = [0, 2, 1, 3, 4]  # [B, C, T, H, W] <-> [B, T, C, H, W]
        head = [
            helper.make_node("Transpose", [node.input[0]], [f"{p}/xt"], perm=perm, name=f"{p}/t_in"),
            helper.make_node("Reshape", [f"{p}/xt", s_in.name], [f"{p}/x"], name=f"{p}/reshape_in"),
        ]
        back = [
            helper.make_node("Reshape", [f"{p}/y", s_out.name], [f"{p}/yt"], name=f"{p}/reshape_out"),
            helper.make_node("Transpose", [f"{p}/yt"], [out_name], perm=perm, name=f"{p}/t_out"),
        ]
    else:
        return None
    body = [helper.make_node("Conv", [f"{p}/x", w2d.name, *bias], [conv_out], name=f"{p}/conv", **conv)]
    return [*head, *body, *tail, *back], [w2d, s_in, s_out]
