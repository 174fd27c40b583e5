"""The networks of both papers and the builder that composes them into the three variants.

``build_model(config, variant)`` gives an :class:`~avsal_deploy.models.build.AVSaliencyModel`:

- ``avrsp``: S3D + ASPP/LIP, SoundNet-8, MS + RAVF + MRG fusion decoder -> one-shot map.
- ``diffsal``: MViTv2-S (paper profile; ``video.diffsal_backbone``, or S3D), VGGish + temporal
  transformer, Saliency-UNet sampled with DDIM.
- ``hybrid`` (deploy default): the AVRSP encoders and fusion decoder condition the Saliency-UNet;
  ``steps=0`` returns the one-shot AVRSP map.

Names are resolved lazily so that importing one submodule does not build the whole tree.
"""

from __future__ import annotations

from avsal_deploy._lazy import lazy_exports

_EXPORTS = {
    "AVSaliencyModel": "avsal_deploy.models.build",
    "build_model": "avsal_deploy.models.build",
    "count_flops": "avsal_deploy.models.build",
    "count_parameters": "avsal_deploy.models.build",
    "load_backbone_weights": "avsal_deploy.models.weights",
    "load_checkpoint": "avsal_deploy.models.weights",
    "save_checkpoint": "avsal_deploy.models.weights",
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
