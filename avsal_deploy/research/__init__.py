"""Research code: the experiments behind the model's design, run from a source checkout.

- :mod:`~avsal_deploy.research.experiment`: the audio-relevance experiment (AV model vs its
  visual-only twin vs centre bias, per audio condition).
- :mod:`~avsal_deploy.research.grid`: that experiment over a grid of task variants
  (``training/grids/*.toml``).
- :mod:`~avsal_deploy.research.probes`: cheap probes of whether a model binds the sound to its object.
- :mod:`~avsal_deploy.research.cli`: ``avsal experiment``.

This package is not in the wheel (``pyproject.toml`` excludes it): it is importable in a source
checkout and an editable install (``pip install -e .``), where ``avsal experiment`` runs; from a
wheel, ``avsal experiment`` says that it needs a source checkout.
"""
