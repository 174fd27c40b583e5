"""Batch scoring of many videos: ``avsal score`` and :func:`score` (see :mod:`.core` for the rules)."""

from avsal_deploy.scoring.core import GT_METRICS, GroundTruth, VideoResult, score, write_summary
from avsal_deploy.scoring.inputs import VideoItem, collect_inputs, dataset_items

__all__ = [
    "GT_METRICS",
    "GroundTruth",
    "VideoItem",
    "VideoResult",
    "collect_inputs",
    "dataset_items",
    "score",
    "write_summary",
]
