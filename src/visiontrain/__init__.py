"""visiontrain: configuration-driven image-recognition experiments (Hydra + PyTorch Lightning)."""

__version__ = "0.1.0"
