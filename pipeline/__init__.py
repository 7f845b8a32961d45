"""mmpipe: a distributed multimodal (image, text, audio) data-and-training pipeline on Ray."""

__version__ = "0.1.0"
