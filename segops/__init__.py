"""segops: raw Cityscapes-style images to trained segmentation models and relabelled archives."""

import sys

from segops.core.runtime import prefer_onednn

__version__ = "0.1.0"

prefer_onednn()  # before anything imports TensorFlow (segops.core.runtime says why)

if "apache_beam" in sys.modules:
    # a Beam worker unpickling segops code: its S3 sinks may write empty objects, which Beam's
    # own writer cannot (segops.core.storage); the launcher installs this when it configures
    from segops.core.storage import install_s3_empty_object_fix

    install_s3_empty_object_fix()
