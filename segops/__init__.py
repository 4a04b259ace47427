"""segops: raw Cityscapes-style images to trained segmentation models and relabelled archives."""

__version__ = "0.1.0"
