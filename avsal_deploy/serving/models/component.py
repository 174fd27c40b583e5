"""``avsal_<component>``: one exported component (ONNX graph in the version directory) on ONNX Runtime."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from avsal_deploy.serving.contract import ComponentCallError, error_response


def _model_shapes(entries: list[dict[str, Any]]) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """(name, shape the network sees, dims on the wire) per config input/output, batch excluded."""
    out = []
    for e in entries:
        dims = tuple(int(d) for d in e["dims"])
        reshape = e.get("reshape")
        model = tuple(int(d) for d in reshape.get("shape", ())) if reshape is not None else dims
        out.append((str(e["name"]), model, dims))
    return out


class ComponentModel:
    """One exported component (ONNX graph in the version directory) run by onnxruntime on CPU.

    Requests gathered by Triton's dynamic batcher are concatenated along the batch axis, run as
    one onnxruntime call and split back, so concurrent windows share one graph execution. The
    intra-op thread pool does not spin between calls: several stubs share the machine's cores
    and a spinning pool would steal them from the model that is running.
    """

    def initialize(self, args: dict[str, str]) -> None:
        import onnxruntime as ort

        from avsal_deploy.engine.ort import session_options

        config = json.loads(args["model_config"])
        self.name = str(config["name"])
        self.inputs = _model_shapes(config["input"])
        self.outputs = _model_shapes(config["output"])
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        opts = session_options(ort)
        self.session: Any = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def _batch(self, pb_utils: Any, requests: list[Any]) -> tuple[dict[str, np.ndarray], list[int]]:
        """The requests' inputs concatenated along the batch axis, and each request's batch."""
        sizes: list[int] = []
        columns: dict[str, list[np.ndarray]] = {name: [] for name, _, _ in self.inputs}
        for request in requests:
            for name, shape, _ in self.inputs:
                array = pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                columns[name].append(array.reshape(array.shape[0], *shape))
            sizes.append(columns[self.inputs[0][0]][-1].shape[0])
        return {n: np.concatenate(c) if len(c) > 1 else c[0] for n, c in columns.items()}, sizes

    def _split(self, pb_utils: Any, results: list[np.ndarray], sizes: list[int]) -> list[Any]:
        """One response per request: its rows of every output, in the config's wire dims."""
        responses = []
        bounds = np.cumsum([0, *sizes])
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(out[lo:hi].reshape(hi - lo, *dims)))
                for (name, _, dims), out in zip(self.outputs, results, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        feeds, sizes = self._batch(pb_utils, requests)
        try:
            results = self.session.run([name for name, _, _ in self.outputs], feeds)
        except Exception as exc:  # onnxruntime raises its own exception types; answer every request
            failed = ComponentCallError(f"{self.name}: onnxruntime failed: {exc}")
            return [error_response(pb_utils, failed) for _ in requests]
        return self._split(pb_utils, results, sizes)

    def finalize(self) -> None:
        """Release the ONNX Runtime session."""
        self.session = None
