"""Reading official checkpoints, and mapping them strictly onto our stage keys.

:func:`read_official_state` reads the file an official training script writes
(``torch.save(model.state_dict())``), with ``torch.load(weights_only=True)`` only: a top-level
``state_dict`` wrapper is unwrapped and DataParallel's ``module.`` prefixes are removed (TASED-Net's
``run_train.py`` saves a DataParallel model). Every way a file can be unusable is one
:class:`~avsal_deploy.errors.WeightsError` line that names the file.

:func:`map_state` renames an official state dict onto the keys of our stages and checks it
against their state dict: unknown keys (no rule maps them), missing keys and misshapen tensors are
one error naming the first few of each and their counts. BatchNorm ``num_batches_tracked``
counters are optional (PyTorch before 0.4.1 wrote none; inference never reads them): a missing one
is filled with 0.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor

from avsal_deploy.errors import WeightsError

#: Keys named per category in an error message.
MAX_NAMED = 5
_DATA_PARALLEL = "module."


def name_keys(keys: Iterable[str]) -> str:
    """``"a, b, c (+N more)"``: the first :data:`MAX_NAMED` keys and how many more there are."""
    keys = list(keys)
    shown = ", ".join(keys[:MAX_NAMED])
    return shown + (f" (+{len(keys) - MAX_NAMED} more)" if len(keys) > MAX_NAMED else "")


def _reason(exc: BaseException) -> str:
    """Why ``torch.load`` failed, in a few words."""
    text = " ".join(str(exc).split())
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return f"it pickles a {refused.group(1)}, which weights_only loading refuses"
    if "Weights only load failed" in text:
        return "it pickles objects that weights_only loading refuses"
    if "central directory" in text or "EOF" in text or isinstance(exc, EOFError):
        return "the file is truncated or corrupt"
    if isinstance(exc, KeyError | pickle.UnpicklingError) or "invalid load key" in text:
        return "neither a zip archive nor a pickle: not written by torch.save"
    short = re.sub(r"\x1b\[[0-9;]*m", "", text)[:120]
    return f"{type(exc).__name__}: {short}" if short else type(exc).__name__


def read_official_state(path: str | Path) -> dict[str, Tensor]:
    """The state dict in the official checkpoint file ``path`` (``module.`` prefixes removed).

    Raises :class:`WeightsError` (one line naming the file) for a missing file, a file that is not
    a PyTorch checkpoint or is truncated, one that needs arbitrary pickled code
    (``weights_only=True`` refuses it), and one that does not hold a dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such checkpoint file")
    try:
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # every reader fails with its own type: zip, pickle, EOF, ...
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({_reason(exc)})") from exc
    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping):
        raise WeightsError(f"{path}: not a state dict (the file holds {type(raw).__name__}, not a dict)")
    if not raw:
        raise WeightsError(f"{path}: empty state dict")
    out: dict[str, Tensor] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise WeightsError(
                f"{path}: not a state dict of tensors (entry {key!r} is {type(value).__name__}, not a tensor)"
            )
        name = key[len(_DATA_PARALLEL) :] if key.startswith(_DATA_PARALLEL) else key
        if name in out:
            raise WeightsError(f"{path}: key {name!r} appears both with and without 'module.'")
        out[name] = value
    return out


def strip_data_parallel(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with DataParallel's ``module.`` prefixes removed (already done by
    :func:`read_official_state`; for state dicts that come from elsewhere)."""
    return {k[len(_DATA_PARALLEL) :] if k.startswith(_DATA_PARALLEL) else k: v for k, v in state.items()}


def map_state(
    state: Mapping[str, Tensor],
    rename: Callable[[str], str | None],
    expected: Mapping[str, Tensor],
    label: str,
    official: Callable[[str], str] = lambda k: k,
) -> dict[str, Tensor]:
    """``state`` (official keys) renamed by ``rename`` onto ``expected``'s keys, checked strictly.

    ``rename(key)`` gives our key, or None for a key no rule covers (unknown). ``expected`` is our
    stages' state dict (tensors on any device, "meta" included; only names, shapes and dtypes are
    read). Floating tensors are returned as float32, integer ones as int64. ``label`` starts the
    error message (e.g. ``"TASED-Net checkpoint"``); ``official(our_key)`` names a missing key
    as the official code does.
    """
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    misshapen: list[str] = []
    seen: set[str] = set()
    for raw_key, value in state.items():
        key = raw_key[len(_DATA_PARALLEL) :] if raw_key.startswith(_DATA_PARALLEL) else raw_key
        ours = rename(key)
        if ours is None or ours not in expected or ours in seen:  # (seen: "x" and "module.x")
            unknown.append(raw_key)
            continue
        seen.add(ours)
        want = expected[ours]
        if tuple(value.shape) != tuple(want.shape):
            misshapen.append(f"{key} {list(value.shape)} (expected {list(want.shape)})")
            continue
        if value.is_floating_point() != want.is_floating_point():
            misshapen.append(f"{key} {value.dtype} (expected {want.dtype})")
            continue
        out[ours] = value.detach().to("cpu", torch.float32 if want.is_floating_point() else torch.int64)
    missing = [official(k) for k in expected if k not in seen and not k.endswith("num_batches_tracked")]
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} unknown key(s): {name_keys(unknown)}")
    if missing:
        problems.append(f"{len(missing)} missing key(s): {name_keys(missing)}")
    if misshapen:
        problems.append(f"{len(misshapen)} misshapen key(s): {name_keys(misshapen)}")
    if problems:
        raise WeightsError(f"{label}: " + "; ".join(problems))
    for k, want in expected.items():  # optional BatchNorm step counters
        if k not in out:
            out[k] = torch.zeros(tuple(want.shape), dtype=torch.int64)
    return {k: out[k] for k in expected}
