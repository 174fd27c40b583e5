"""ROI video coding: saliency maps drive the encoder's quantisation.

- :mod:`~avsal_deploy.roi.mapping`: maps -> per-16x16-block QP offsets (:func:`qp_offsets`,
  stateless; :class:`OffsetSmoother`, per stream with temporal smoothing; :class:`RoiParams`).
- :mod:`~avsal_deploy.roi.exporters`: NVENC QP-delta / emphasis maps, SVT-AV1 ``--roi-map-file``,
  Kvazaar ``--roi``, FFmpeg ``AVRegionOfInterest`` lists, each with a parser.
- :mod:`~avsal_deploy.roi.encode`: in-process libx264 / libx265 encodes with per-frame ROI side data;
  CRF bisection to a bitrate.
- :mod:`~avsal_deploy.roi.quality`: PSNR, SSIM, EWPSNR, BD-rate.
- :mod:`~avsal_deploy.roi.compare`: ROI vs uniform at equal bitrate (``avsal roi``).

Offsets are float32 [ceil(H/16), ceil(W/16)] in QP, raster order, negative = more bits.
"""

from avsal_deploy.roi.mapping import (
    OffsetSmoother,
    RoiParams,
    block_grid,
    naive_offsets,
    offsets_for_maps,
    qp_offsets,
)

__all__ = ["OffsetSmoother", "RoiParams", "block_grid", "naive_offsets", "offsets_for_maps", "qp_offsets"]
