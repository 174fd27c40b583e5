"""avsal-deploy: audio-visual video saliency prediction (AVRSP + DiffSal) for production serving."""

__version__ = "0.1.0"
