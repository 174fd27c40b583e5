"""Random weights in an official checkpoint's layout, reproducible from (layout, seed).

The golden files of the official-architecture parity tests store no weights (the official networks
have fixed widths: tens of MB each); they store the official key layout and a seed. The same
function rebuilds the state dict on any machine, with NumPy alone:

- the generator script (outside this repository, beside the official code) calls
  :func:`random_state`, loads the result into the official module, runs it on the stored inputs and
  saves the outputs;
- the parity test calls :func:`random_state` with the same layout and seed, converts the result
  with ``avsal convert``'s converter and compares our stages' outputs with the stored ones.

Every tensor is random (nothing left at its initial value), by name and rank:

==========================================  ==============================================
tensor                                      values
==========================================  ==============================================
``*num_batches_tracked`` (integer)          integers in [0, 1000)
``*running_var``                            uniform(0.5, 1.5)
``*running_mean``                           normal(0, 0.1)
norm scales (1-D ``*.weight`` of a norm)    uniform(0.5, 1.5)
1-D tensors otherwise (biases, shifts)      normal(0, 0.1)
embeddings and positions (name has          normal(0, 0.02)
``pos``, ``embed``, ``token``, ``rel_``)
weights of rank >= 2                        normal(0, 1) * sqrt(gain / fan_in)
==========================================  ==============================================

``fan_in`` is ``prod(shape[1:])`` (convolutions, linear layers), or ``shape[0] * prod(shape[2:])``
for names listed in ``transposed`` (ConvTranspose weights are [in, out, k...]); ``gain`` is 2
(He initialisation, for ReLU networks), so activations keep their scale through deep stacks.
A 1-D ``*.weight`` is a norm scale unless its name is listed in ``not_norm``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import numpy as np

Layout = Sequence[tuple[str, Sequence[int], str]]

_EMBEDDING_MARKS = ("pos", "embed", "token", "rel_")


def _is_embedding(name: str) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return any(m in leaf for m in _EMBEDDING_MARKS)


def random_state(
    layout: Layout,
    seed: int,
    *,
    transposed: Iterable[str] = (),
    not_norm: Iterable[str] = (),
    gain: float = 2.0,
) -> dict[str, np.ndarray]:
    """A state dict with ``layout``'s keys, shapes and dtypes, random as the module docstring says."""
    rng = np.random.default_rng(seed)
    transposed, not_norm = set(transposed), set(not_norm)
    out: dict[str, np.ndarray] = {}
    for name, shape, dtype in layout:
        shape = tuple(int(s) for s in shape)
        if np.issubdtype(np.dtype(dtype), np.integer):
            out[name] = rng.integers(0, 1000, shape).astype(dtype)
            continue
        if name.endswith("running_var"):
            x = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("running_mean"):
            x = rng.normal(0.0, 0.1, shape)
        elif _is_embedding(name):
            x = rng.normal(0.0, 0.02, shape)
        elif len(shape) <= 1:
            norm_scale = name.endswith(".weight") and name not in not_norm
            x = rng.uniform(0.5, 1.5, shape) if norm_scale else rng.normal(0.0, 0.1, shape)
        else:
            fan_in = shape[0] * int(np.prod(shape[2:])) if name in transposed else int(np.prod(shape[1:]))
            x = rng.normal(0.0, 1.0, shape) * np.sqrt(gain / max(fan_in, 1))
        out[name] = np.asarray(x, dtype=dtype)
    return out


def layout_json(state: dict[str, object]) -> str:
    """The layout of a state dict (name, shape, dtype; in order) as the JSON string golden files store."""
    rows = []
    for name, tensor in state.items():
        shape = [int(s) for s in getattr(tensor, "shape", ())]
        dtype = str(getattr(tensor, "dtype", "float32")).replace("torch.", "")
        rows.append([name, shape, dtype])
    return json.dumps(rows)


def read_layout(text: str) -> list[tuple[str, tuple[int, ...], str]]:
    """Inverse of :func:`layout_json`."""
    return [(str(n), tuple(int(s) for s in shape), str(d)) for n, shape, d in json.loads(text)]
