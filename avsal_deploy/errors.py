"""Typed errors for users. The CLI turns any :class:`AvsalError` into a one-line message and exit 2.

Every message names the file (or setting) concerned and the problem, e.g.
``clip.mp4: not a video (no video stream)``.
"""

from __future__ import annotations


class AvsalError(Exception):
    """Base class of errors caused by the user's input, not by a bug."""


class ConfigError(AvsalError, ValueError):
    """An invalid profile, config file or override."""


class MediaError(AvsalError):
    """A video/audio file that cannot be read or has no usable content."""


class DatasetError(AvsalError):
    """A data set layout with missing or malformed files."""


class WeightsError(AvsalError):
    """A checkpoint that does not match the model (layout, keys, shapes, profile)."""


class BackendUnavailableError(AvsalError):
    """An optional backend (GPU, TensorRT, DALI, Triton) is missing on this machine."""
