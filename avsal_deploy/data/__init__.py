"""Media in: decoding, audio features, data sets and the synthetic audio-visual benchmark."""

from avsal_deploy.data.datasets import open_dataset
from avsal_deploy.data.decode import VideoData, read_video

__all__ = ["VideoData", "open_dataset", "read_video"]
