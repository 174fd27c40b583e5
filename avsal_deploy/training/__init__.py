"""Training and evaluation.

- :mod:`~avsal_deploy.training.recipe`: typed TOML recipes (``training/*.toml``).
- :mod:`~avsal_deploy.training.data`: windows of a data set as model inputs, with augmentation.
- :mod:`~avsal_deploy.training.trainer`: the loop (stages, epochs, validation, checkpoints, resumption),
  driving :mod:`~avsal_deploy.training.distributed` (torchrun / DDP),
  :mod:`~avsal_deploy.training.precision` (autocast, gradient scaler) and
  :mod:`~avsal_deploy.training.objective` (the losses per variant).
- :mod:`~avsal_deploy.training.evaluate`: MIT metrics per video / condition / data set.
- :mod:`~avsal_deploy.training.checkpoints`: :func:`load_trained_model` and the trainer's state.
- :mod:`~avsal_deploy.training.plots`: training curves (matplotlib).

The research experiments built on them live in :mod:`avsal_deploy.research` (not in the wheel).

Names are resolved lazily so that ``import avsal_deploy.training`` stays cheap.
"""

from __future__ import annotations

from avsal_deploy._lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "avsal_deploy.training.recipe",
    "load_recipe": "avsal_deploy.training.recipe",
    "Trainer": "avsal_deploy.training.trainer",
    "TrainResult": "avsal_deploy.training.trainer",
    "WindowDataset": "avsal_deploy.training.data",
    "VideoInputs": "avsal_deploy.training.data",
    "evaluate_checkpoint": "avsal_deploy.training.evaluate",
    "load_trained_model": "avsal_deploy.training.checkpoints",
    "shipped_checkpoint": "avsal_deploy.training.checkpoints",
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
