"""segops: raw Cityscapes-style images to trained segmentation models and relabelled archives."""

from segops.core.runtime import prefer_onednn

__version__ = "0.1.0"

prefer_onednn()  # before anything imports TensorFlow (segops.core.runtime says why)
