"""Trained checkpoints: loading a model from its own metadata, and the trainer's resumable state.

A trained model is one ``.safetensors`` file written by
:func:`~avsal_deploy.models.weights.save_checkpoint`: the weights plus the config (JSON), its
architecture fingerprint and the variant. :func:`load_trained_model` rebuilds the model from that
metadata alone, so a predictor needs nothing but the file, whatever profile or overrides it was
trained with.

Resumable training keeps, beside the weights, a ``<name>.state.pt`` file of plain containers
(dicts, lists, numbers, strings and tensors: optimiser, LR scheduler and grad-scaler state dicts,
step/epoch/stage counters, RNG states, early-stopping bookkeeping) that
``torch.load(weights_only=True)`` reads without executing code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from avsal_deploy.config import Config
from avsal_deploy.errors import WeightsError
from avsal_deploy.models.build import AVSaliencyModel, load_trained
from avsal_deploy.models.weights import save_checkpoint

#: The small hybrid model shipped with the package (trained on SYNTHETIC data only, see its README).
SHIPPED_CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "hybrid-synthetic.safetensors"
STATE_SUFFIX = ".state.pt"


def shipped_checkpoint() -> Path:
    """Path of the bundled ``hybrid-synthetic.safetensors`` (raises WeightsError if it is missing)."""
    if not SHIPPED_CHECKPOINT.is_file():
        raise WeightsError(f"{SHIPPED_CHECKPOINT}: the bundled checkpoint is missing from this installation")
    return SHIPPED_CHECKPOINT


def load_trained_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[AVSaliencyModel, Config, str, dict[str, Any]]:
    """Rebuild the model a checkpoint was trained as and load its weights
    (:func:`~avsal_deploy.models.build.load_trained`).

    Returns ``(model, config, variant, metadata)``; the model is in eval mode on ``device``.
    ``metadata`` holds the checkpoint's user entries (e.g. ``audio``, ``step``, ``metrics``).
    """
    model, meta = load_trained(path)
    return model.to(device), model.config, model.variant, meta


def state_path(weights_path: str | Path) -> Path:
    """The training-state file that accompanies ``weights_path`` (``x.safetensors`` -> ``x.state.pt``)."""
    p = Path(weights_path)
    return p.with_name(p.name.removesuffix(".safetensors") + STATE_SUFFIX)


def save_weights(
    model: torch.nn.Module, path: str | Path, config: Config, variant: str, metadata: dict[str, Any]
) -> Path:
    """:func:`save_checkpoint` through a temporary file and an atomic rename (no torn files)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_checkpoint(model, tmp, config, variant, metadata)
    os.chmod(tmp, 0o644)  # safetensors writes 0600; checkpoints are shared artefacts
    os.replace(tmp, path)
    return path


def save_training_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Write the resumable state (plain containers only) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a state written by :func:`save_training_state` with ``torch.load(weights_only=True)``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no training state to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file or non-plain content: torch raises several types
        raise WeightsError(f"{path}: cannot read training state ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or "step" not in state:
        raise WeightsError(f"{path}: not an avsal training state")
    return state
