"""Models dcvit ships: small Fashion-MNIST classifiers registered in timm (see fmnist.py)."""

from .fmnist import FMNIST_MEAN, FMNIST_STD, FmnistCNN, weights_path

__all__ = ["FMNIST_MEAN", "FMNIST_STD", "FmnistCNN", "weights_path"]
